"""The results recorder: how a notebook writes ``results.json``.

Results are flat JSON: named tables of rows (one row per measured configuration, units in key names
such as ``latency_ms_p50``), a few headline figures, and the notes a reader must see first —
fallbacks that happened, things that were not measured and why. The file is rewritten atomically
after every change, so whatever finished survives a later failure. Under the runner the file lands
in the run folder (``WORKBOOK_RUN_DIR``); under plain papermill or JupyterLab in
``outputs/<notebook>/adhoc-*``.

Resume: long sections record their work in *groups* (:meth:`Recorder.add_group`: one configuration's
rows, written together and marked complete). When the runner resumes an unfinished run with the same
notebook source, parameters, lib, hardware and torch (``WORKBOOK_RESUME_FROM``),
:meth:`Recorder.done_group` hands back that run's completed groups instead of measuring them again;
the rows carry ``resumed_from`` and the report says at its top how many groups came from which run.
Groups of times (``timed=True``) are handed back only when the unfinished run measured on this very
machine (:func:`workbook.provenance.machine_id`): the runner resumes on any machine of the same
kind, and a speed-up whose two rows came from two H200s would carry the spread between machines (see
outputs/reference/nvidia-h200/README.md). Such groups are measured again and the report says so.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

from workbook import provenance
from workbook.paths import outputs_dir

RUN_DIR_ENV = "WORKBOOK_RUN_DIR"
# set by the runner: an unfinished run of the same key whose groups are reused
RESUME_ENV = "WORKBOOK_RESUME_FROM"


def _jsonable(x):
    """Plain JSON types: NaN/inf become None (JSON has no NaN), tensors and numpy values numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    # torch tensors, numpy arrays/scalars
    if hasattr(x, "tolist") and callable(x.tolist) and hasattr(x, "ndim"):
        x = x.tolist()
        if isinstance(x, list):
            return _jsonable(x[0] if len(x) == 1 and not isinstance(x[0], list) else x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def write_json_atomic(path: Path, data) -> None:
    """Write JSON so that ``path`` always holds a complete file, even if the process is killed
    meanwhile: temp file in the same folder, fsync, rename, fsync of the folder (a state file a
    search resumes from)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(data), f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def run_record(notebook: str, run_id: str, *, params: dict, param_sources: dict, command: str,
               provenance: dict, profile: str | None = None, param_file: str | None = None,
               key: str | None = None, notebook_hash: str | None = None,
               lib_fingerprint: str | None = None, resumed_from: str | None = None,
               started_at: str | None = None) -> dict:
    """``run.json`` as it starts, for the runner and for a run made without it
    (:mod:`workbook.adhoc`) alike."""
    from workbook import __version__, liveness
    # (the ``provenance`` argument is the record's, not the module)
    from workbook.provenance import now_iso

    return {
        "notebook": notebook, "run_id": run_id, "status": "running", "error": None,
        "params": params, "param_sources": param_sources, "profile": profile,
        "param_file": param_file, "key": key, "notebook_hash": notebook_hash,
        "lib_fingerprint": lib_fingerprint, "workbook_version": __version__,
        "started_at": started_at or now_iso(), "ended_at": None, "duration_s": None,
        "command": command, "provenance": provenance, **liveness.identity(),
        "resumed_from": resumed_from,
    }


def run_dir_for(notebook: str) -> Path:
    env = os.environ.get(RUN_DIR_ENV)
    if env:
        return Path(env)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return outputs_dir() / notebook / f"adhoc-{stamp}-{os.getpid()}"


class Recorder:
    """Collects a notebook's results and keeps ``results.json`` up to date."""

    def __init__(self, notebook: str, params: dict, run_dir: Path | None = None):
        self.t0 = time.time()
        self.run_dir = Path(run_dir) if run_dir else run_dir_for(notebook)
        self.path = self.run_dir / "results.json"
        prov = provenance.collect()
        self.data = {
            "notebook": notebook,
            "status": "running",
            "started_at": provenance.now_iso(),
            "params": dict(params),
            "headline": {},
            "fallbacks": [],
            "notes": [],
            "not_measured": [],
            "tables": {},
            "hardware": prov["hardware"],
            "versions": {"python": prov["python"], **prov["torch"], "packages": prov["packages"]},
            "git": prov["git"],
        }
        self._prior, self._prior_id = self._load_prior(dict(params))
        self._machine = provenance.machine_id(prov["hardware"])
        self._save()
        # no runner around this run (plain papermill, JupyterLab, nbmake): it writes its own
        # run.json
        self.adhoc = run_dir is None and not os.environ.get(RUN_DIR_ENV)
        if self.adhoc:
            from workbook import adhoc

            adhoc.begin(self, prov)

    def _load_prior(self, params: dict):
        """The unfinished run named by the runner, if its recorded parameters are this run's."""
        src = os.environ.get(RESUME_ENV)
        if not src or Path(src).resolve() == self.run_dir.resolve():
            return None, None
        try:
            prior = json.loads((Path(src) / "results.json").read_text())
        except (OSError, ValueError):
            return None, None
        if prior.get("params") != _jsonable(params):
            self.data["notes"].append(f"not resumed from {Path(src).name}: its recorded parameters "
                                      "differ")
            return None, None
        return prior, Path(src).name

    @staticmethod
    def _group_key(key: dict) -> dict:
        return _jsonable(dict(sorted(key.items())))

    def _prior_same_machine(self) -> bool:
        theirs = provenance.machine_id(self._prior.get("hardware") or {})
        return theirs is not None and theirs == self._machine

    def done_group(self, table: str, *, timed: bool = False, **key) -> list[dict] | None:
        """The rows of group ``key`` of ``table`` that the resumed run completed, recorded into this
        run (marked ``resumed_from``); None when it must be measured here.

        ``timed``: the rows hold times (or anything else the machine sets), so they are taken only
        from a run on this same machine; from another machine they are measured again, counted under
        ``resumed.remeasured``.
        """
        if self._prior is None:
            return None
        want = self._group_key(key)
        done = [g for g in self._prior.get("groups", {}).get(table, []) if g.get("key") == want]
        if not done:
            return None
        if timed and not self._prior_same_machine():
            res = self.data.setdefault("resumed", {"from": self._prior_id, "groups": {}})
            again = res.setdefault("remeasured", {})
            again[table] = again.get(table, 0) + 1
            self._save()
            return None
        start, end = done[-1]["rows"]
        # the run that measured it
        rows = [{**r, "resumed_from": r.get("resumed_from") or self._prior_id}
                for r in self._prior.get("tables", {}).get(table, [])[start:end]]
        res = self.data.setdefault("resumed", {"from": self._prior_id, "groups": {}})
        res["groups"][table] = res["groups"].get(table, 0) + 1
        self.add_group(table, rows, **key)
        return rows

    def add_group(self, table: str, rows: list[dict], **key) -> None:
        """Append one configuration's rows in a single write and mark the group complete (what a
        resumed run may reuse). A group killed half-way is never marked, so it is measured again."""
        t = self.data["tables"].setdefault(table, [])
        start = len(t)
        t.extend(dict(r) for r in rows)
        self.data.setdefault("groups", {}).setdefault(table, []).append(
            {"key": self._group_key(key), "rows": [start, len(t)]})
        self._save()

    def _save(self) -> None:
        write_json_atomic(self.path, self.data)

    def set(self, **context) -> None:
        """Top-level facts about the run (e.g. ``device``, ``device_reason``, ``model``)."""
        self.data.update(context)
        self._save()

    def add(self, table: str, row: dict) -> None:
        """Append one row to a named table."""
        self.data["tables"].setdefault(table, []).append(dict(row))
        self._save()

    def keys(self, table: str, columns: list[str]) -> None:
        """The columns that identify a row of ``table`` when two runs are compared (default: every
        text or integer field). Declaring fewer lines up runs that differ in the rest, e.g. two
        backends."""
        self.data.setdefault("keys", {})[table] = list(columns)
        self._save()

    def headline(self, **figures) -> None:
        """The few figures that `workbook list` and the index show for this run."""
        self.data["headline"].update(figures)
        self._save()

    def fallback(self, text: str) -> None:
        """Something ran other than what was asked: shown at the top of the report."""
        self.data["fallbacks"].append(text)
        self._save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self._save()

    def not_measured(self, what: str, why: str) -> None:
        self.data["not_measured"].append({"what": what, "why": why})
        self._save()

    def table(self, name: str) -> list[dict]:
        return self.data["tables"].get(name, [])

    def finish(self) -> None:
        """Mark the results complete (an adhoc run's run.json says ok) and say, as the notebook's
        last output, where they went and how the report comes about."""
        from workbook import adhoc

        self.data["status"] = "complete"
        self.data["finished_at"] = provenance.now_iso()
        self._save()
        if self.adhoc:
            adhoc.finished(self)
        adhoc.say_where(self)


def start(notebook: str, params: dict) -> Recorder:
    """Create the recorder for this notebook run and say where its results go (in a notebook, as an
    output whose metadata names the run folder, which `workbook report` reads back)."""
    from workbook import adhoc, console

    rec = Recorder(notebook, params)
    console.quiet_libraries(rec.run_dir / console.LOG_NAME)  # autotuning chatter to the run's log
    adhoc.announce(rec, notebook)
    return rec


def load(path) -> dict:
    return json.loads(Path(path).read_text())
