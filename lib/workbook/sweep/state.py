"""``outputs/sweeps/<id>/sweep.json``: the points, their runs, their status and where each ran.

Rewritten atomically after every change, from the driver's thread only, so a driver killed at any
moment leaves a file that reads; the same command later loads it and continues. A point's status
is ``pending``, ``running``, ``ok`` or ``failed``; one that says ``running`` when its driver is gone
is run again (its run folder, if it recorded anything, is resumed by the runner).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from workbook.paths import outputs_dir
from workbook.record import write_json_atomic


def sweeps_dir() -> Path:
    return outputs_dir() / "sweeps"


class SweepState:
    def __init__(self, sweep_id: str, header: dict, points):
        self.dir = sweeps_dir() / sweep_id
        self.path = self.dir / "sweep.json"
        self._lock = threading.Lock()
        prior = self._read()
        old = {p["key"]: p for p in (prior or {}).get("points", [])}
        self.data = {"id": sweep_id, **header, "created": (prior or {}).get("created", time.time()),
                     "runs_of_driver": (prior or {}).get("runs_of_driver", 0) + 1,
                     "points": [{**{"status": "pending", "run_id": None, "host": None,
                                    "started": None, "ended": None, "error": None},
                                 **old.get(p.key, {}),
                                 "index": p.index, "params": p.params, "key": p.key,
                                 "gpus": p.gpus, "rev": p.rev, "commit": p.sha}
                                for p in points]}
        self.save()

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def point(self, index: int) -> dict:
        return self.data["points"][index]

    def update(self, index: int, **fields) -> None:
        with self._lock:
            self.data["points"][index].update(fields)
            self.save()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)

    def counts(self) -> dict:
        out = {"pending": 0, "running": 0, "ok": 0, "failed": 0}
        for p in self.data["points"]:
            out[p["status"]] = out.get(p["status"], 0) + 1
        return out


def here() -> str:
    return socket.gethostname()


def load(sweep_id: str) -> dict:
    """A sweep's sweep.json, by id (or a unique prefix of one)."""
    from workbook.errors import WorkbookError

    base = sweeps_dir()
    found = sorted(p for p in base.glob(f"{sweep_id}*") if (p / "sweep.json").is_file()) \
        if base.is_dir() else []
    if len(found) != 1:
        known = ", ".join(p.name for p in sorted(base.iterdir())) if base.is_dir() else ""
        raise WorkbookError(f"There is {'no' if not found else 'more than one'} sweep "
                            f"{sweep_id!r}; sweeps: {known or '(none)'}.")
    return json.loads((found[0] / "sweep.json").read_text())
