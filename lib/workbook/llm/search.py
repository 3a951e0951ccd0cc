"""Search for the export configurations of a decoder that work: tensor-parallel size x batch x seq.

Whether a decoder exports and loads at a given (tp, batch size, sequence length) is only known by
trying (:mod:`workbook.llm.attempts`), and a search over tens of tries that take minutes each will
be interrupted. So the search:

- writes its state file ``<model>.json`` after every try, atomically, so a search killed at any
  moment resumes where it stopped and never runs a finished try again;
- tries the candidates from the largest down, re-planning after every result, and runs only what
  the pure rules of :mod:`workbook.llm.search_plan` leave "pending";
- gives the same answer however often, and whenever, it was killed: a try is decided only by what
  the try itself showed (its exit status, a timeout, an out-of-memory kill while it ran). A try cut
  short because the search was killed from outside is tried again on resume;
- runs its tries here, one at a time, or through a dispatcher (:mod:`workbook.llm.search_ray`:
  Ray tasks on the NeuronCores or GPUs of several machines), several at a time: the next pending
  candidates start while others run, and each result re-plans the rest. Run one at a time it tries
  exactly what the local search tries; several at a time, a candidate that a result still in
  flight would have settled by rule may be tried as well, so more configurations are "tested",
  with the same verdicts.

A try that has a result is never run again; to retry one (say after raising the timeout), delete
its entry from ``attempts`` in the state file.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

from workbook.errors import WorkbookError, bad_param
from workbook.llm.attempts import (LOG_NAME, Validator, finished_record, kill_leftovers, log_tail,
                                   oom_kills, run_attempt)
from workbook.llm.search_plan import RULES_VERSION, normalize_cands, plan, plan_rows
from workbook.provenance import now_iso
from workbook.record import write_json_atomic

try:  # POSIX only: one search per state file
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


# ---------------------------------------------------------------- the state file

def model_name(model: str) -> str:
    """File-safe name: hub id "org/name" -> "org--name"; a local path -> its folder's name."""
    m = str(model).strip().rstrip("/\\")
    if not m:
        raise bad_param("model", model, "a hub id (org/name) or a local folder")
    p = Path(m).expanduser()
    if p.exists() or m.startswith(("/", ".", "~")) or m.count("/") > 1 or "\\" in m:
        name = p.resolve().name if p.exists() else p.name
    else:
        name = m.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "model"


def state_path(out_dir, model: str) -> Path:
    return Path(out_dir) / f"{model_name(model)}.json"


@contextlib.contextmanager
def _exclusive(path: Path):
    """One search per state file; the lock goes away with the process, however it ends."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkbookError(f"Another search is running on {path}; wait for it to end or stop "
                                "it first.") from None
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # from a search killed mid-write
            stale.unlink(missing_ok=True)
        yield


def read_state(path: Path, validator: Validator) -> dict | None:
    """The state file at ``path`` (None if there is none), refused when its results were made
    another way: a resumed search trusts every result in it, so they must come from the same
    validator with the same settings (``describe()``), or a configuration found valid under a larger
    memory budget would be kept as valid under a smaller one."""
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkbookError(f"The state file {path} is not valid JSON ({e}); this search writes "
                            "it atomically, so something else wrote it. Move it away to start "
                            "over.") from None
    if state.get("validator_name") != validator.name:
        raise bad_param("state_dir", str(path.parent), "a folder without results of another "
                        f"validator: {path.name} holds results of validator "
                        f"{state.get('validator_name')!r}, not {validator.name!r}; use another "
                        "state folder for this validator")
    old, new = state.get("validator"), validator.describe()
    if old is not None and old != new and state.get("attempts"):
        raise bad_param("state_dir", str(path.parent), "a folder without results made with other "
                        f"settings: {path.name} holds results of {old!r}, not {new!r}; use another "
                        "state folder (or move the file away) to search with these settings")
    return state


def _open_state(path: Path, model: str, validator: Validator, cands: dict, timeout_s: float,
                log) -> dict:
    state = read_state(path, validator)
    if state is not None:
        if state.get("candidates") != cands:
            log(f"candidates changed since the last session; the {len(state['attempts'])} results "
                "are kept")
        log(f"resuming {path}: {len(state['attempts'])} tries already done")
    else:
        state = {"model": model, "model_name": model_name(model), "validator_name": validator.name,
                 "attempts": [], "running": [], "interruptions": [], "sessions": [],
                 "seconds_total": 0.0}
    for key, empty in (("attempts", []), ("running", []), ("interruptions", []),
                       ("sessions", [])):
        state.setdefault(key, empty)
    if isinstance(state["running"], dict) or state["running"] is None:  # one try, before lists
        state["running"] = [state["running"]] if state["running"] else []
    state.update(validator=validator.describe(), rules_version=RULES_VERSION, candidates=cands,
                 timeout_s=timeout_s, complete=False)
    state["sessions"].append({"started": now_iso(), "pid": os.getpid()})
    return state


def _workdir_name(tp, batch, seq) -> str:
    return f"tp{tp}-b{batch}-s{seq}"


def _own_evidence(run: dict, workdir: Path) -> dict | None:
    """The outcome of a try whose search was killed, where the try itself left one: the record it
    wrote on finishing, or an out-of-memory kill while it ran. None: it was cut short from outside.
    """
    rec = finished_record(workdir, run["token"])
    before, now = run.get("oom_kills"), oom_kills()
    if rec is not None or before is None or now is None or now <= before:
        return rec
    why = (f"the out-of-memory killer killed {now - before} process(es) while this try ran and "
           "the search died with it; recorded as crashed rather than tried again (delete this "
           "entry from the state file to try again)")
    log_path = workdir / LOG_NAME
    return {"tp": run["tp"], "batch": run["batch"], "seq": run["seq"], "status": "crashed",
            "detail": why, "exit_code": None, "seconds": None, "started": run["started"],
            "finished": now_iso(), "log": str(log_path), "log_tail": log_tail(log_path) + [why]}


def _recover_interrupted(state: dict, workroot: Path, log) -> None:
    """Tries that were running when the search was killed: stop their leftovers; record each one's
    outcome where it left evidence of one, else try it again."""
    for run in state.get("running") or []:
        key = (run["tp"], run["batch"], run["seq"])
        killed = kill_leftovers(run["token"])
        rec = _own_evidence(run, workroot / _workdir_name(*key))
        if any((a["tp"], a["batch"], a["seq"]) == key for a in state["attempts"]):
            rec = None  # already recorded (a state file written by hand)
        if rec is not None:
            state["attempts"].append(rec)
        outcome = f"recorded as {rec['status']}" if rec is not None else "tried again"
        state["interruptions"].append({"tp": key[0], "batch": key[1], "seq": key[2],
                                       "started": run["started"], "noticed": now_iso(),
                                       "leftover_processes_killed": len(killed),
                                       "outcome": outcome})
        log(f"the last session was killed during tp={key[0]} batch={key[1]} seq={key[2]} "
            f"(leftover processes stopped: {len(killed)}); {outcome}")
    state["running"] = []


class HereDispatch:
    """Tries run in this process, one at a time (what :func:`search` does without a dispatcher)."""

    parallel = 1

    def __init__(self):
        self._done: dict[str, dict] = {}

    def submit(self, validator, model, tp, batch, seq, workdir, timeout_s, token):
        self._done[token] = run_attempt(validator, model, tp, batch, seq, workdir, timeout_s,
                                        token)
        return token

    def wait(self, handles):
        return list(handles)  # each ran to its end in submit

    def result(self, handle, workdir):
        return self._done.pop(handle)

    def cancel(self, handles):
        pass


# ---------------------------------------------------------------- the search

def search(model: str, validator: Validator, cands: dict, out_dir, timeout_s: float, log=print,
           dispatch=None, tried=None) -> dict:
    """Try every pending candidate, largest first, re-planning after each result; return the state.

    The state is ``<out_dir>/<model_name>.json``, rewritten after every try; each try's folder (log,
    export) is ``<out_dir>/<model_name>.attempts/tp<T>-b<B>-s<S>``. ``timeout_s``: for one try, all
    its steps. ``dispatch``: where tries run (default here, one at a
    time; :class:`workbook.llm.search_ray.RayDispatch` for a Ray cluster), ``dispatch.parallel``
    at a time. ``tried``: where each try's one-line result goes (default ``log``).
    """
    tried = tried or log
    dispatch = dispatch or HereDispatch()
    cands = normalize_cands(cands)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(out_dir, model)
    workroot = out_dir / f"{model_name(model)}.attempts"
    with _exclusive(path):
        state = _open_state(path, model, validator, cands, timeout_s, log)
        t0, before = time.monotonic(), float(state.get("seconds_total") or 0.0)

        def save():
            state["seconds_total"] = round(before + time.monotonic() - t0, 3)
            state["plan"] = plan_rows(state)
            state["updated"] = now_iso()
            write_json_atomic(path, state)

        _recover_interrupted(state, workroot, log)
        save()
        running: dict = {}  # handle -> (tp, batch, seq), token
        try:
            while True:
                busy = {key for key, _ in running.values()}
                pending = [tuple(r[:3]) for r in plan(cands, state["attempts"])
                           if r[3] == "pending" and tuple(r[:3]) not in busy]
                while pending and len(running) < dispatch.parallel:
                    tp, b, s = pending.pop(0)
                    token = uuid.uuid4().hex
                    state["running"].append({"tp": tp, "batch": b, "seq": s,
                                             "started": now_iso(), "token": token,
                                             "pid": os.getpid(), "oom_kills": oom_kills()})
                    save()
                    h = dispatch.submit(validator, model, tp, b, s,
                                        workroot / _workdir_name(tp, b, s), timeout_s, token)
                    running[h] = ((tp, b, s), token)
                if not running:
                    break
                for h in dispatch.wait(list(running)):
                    (tp, b, s), token = running.pop(h)
                    rec = {"tp": tp, "batch": b, "seq": s,
                           **dispatch.result(h, workroot / _workdir_name(tp, b, s))}
                    state["running"] = [r for r in state["running"] if r["token"] != token]
                    state["attempts"].append(rec)
                    save()
                    left = sum(r["status"] == "pending" for r in state["plan"])
                    tried(f"tp={tp} batch={b} seq={s}: {rec['status']} in {rec['seconds']:.1f} s "
                          f"({rec['detail']}); {left} pending")
        except BaseException:
            # on Ctrl-C or an error the tries in flight are stopped (a re-run tries them again),
            # the state is saved without them and the search stops: it is not complete
            dispatch.cancel(list(running))
            state["running"] = []
            save()
            raise
        state["complete"] = True
        save()
    return state


if __name__ == "__main__":
    from workbook.llm.search_cli import main

    sys.exit(main())
