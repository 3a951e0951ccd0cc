"""Whether a run recorded as "running" still is, so a killed run does not read as running forever.

run.json says "running" from a run's start until its process records how it ended, which a process
killed outright (SIGKILL, the out-of-memory killer) never does. So run.json names that process
(:func:`identity`: pid, host, and when the process started, so that a later process given the same
pid is not taken for it), and every reader of a run's status goes through :func:`settle`: a
"running" run whose process is gone on this host is "killed", and its run.json is rewritten to say
so (the process is certainly gone, so nothing else writes it; the record then reads the same from a
copy, another host, or once the pid is reused). A run recorded on another host cannot be checked
from here: it stays "running", and :func:`elsewhere` names the host.
"""
from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path

KILLED = "killed"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _stat(pid: int) -> tuple[str, str] | None:
    """``(state, start)`` of process ``pid`` from /proc: its state letter, and its start time as the
    boot id and clock ticks since boot (what tells it from a later process given the same pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 3
    return fields[0].decode(), f"{boot}:{int(fields[19])}"  # starttime is field 22


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (None where /proc cannot tell)."""
    s = _stat(pid)
    return s[1] if s else None


def identity() -> dict:
    """What run.json records of the process that runs it."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "process_start": process_start(pid)}


def alive(run: dict) -> bool | None:
    """Whether the process that wrote ``run`` still runs: None when it ran on another host."""
    if run.get("host") != socket.gethostname():
        return None
    pid = run.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # recorded before pids were
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    s = _stat(pid)
    if s is None:
        return True  # no /proc to ask: the pid alone
    state, start = s
    if state in ("Z", "X"):
        return False  # a zombie: it has exited, its parent has not yet reaped it
    return run.get("process_start") in (None, start)  # None: recorded before start times were


def elsewhere(run: dict) -> str | None:
    """For a run recorded as running on another host: where, in words; else None."""
    if run.get("status") != "running" or run.get("host") in (None, socket.gethostname()):
        return None
    return f"on host {run['host']!r}, which this machine cannot check"


def _last_write(run_dir: Path) -> float | None:
    try:
        return max(f.stat().st_mtime for f in Path(run_dir).iterdir() if f.is_file())
    except (OSError, ValueError):
        return None


def killed(run: dict, run_dir: Path | None = None) -> dict:
    """``run`` marked killed: the error says so, and the end is the folder's last write."""
    if str(run.get("run_id", "")).startswith("adhoc-"):  # papermill's or JupyterLab's kernel
        error = (f"killed: its kernel (pid {run.get('pid')}) ended before rec.finish() without "
                 "recording an error (shut down, killed or crashed)")
    else:
        then = "; the next identical run resumes it" if run.get("key") else ""
        error = (f"killed: its process (pid {run.get('pid')}) ended without recording how "
                 f"(SIGKILL, out of memory or a crash){then}")
    out = {**run, "status": KILLED, "error": error}
    end = _last_write(run_dir) if run_dir is not None and not run.get("ended_at") else None
    if end is not None:
        out["ended_at"] = datetime.fromtimestamp(end).astimezone().isoformat(timespec="seconds")
        try:
            start = datetime.fromisoformat(run["started_at"]).timestamp()
            out["duration_s"] = round(max(0.0, end - start), 2)
        except (KeyError, TypeError, ValueError):
            pass
    return out


def settle(run: dict, run_dir: Path | None = None) -> dict:
    """``run`` as it stands: "killed" if it says "running" and its process is gone on this host.
    Given its folder, run.json is rewritten to say so (best effort: a read-only copy is left as it
    is)."""
    if run.get("status") != "running" or alive(run) is not False:
        return run
    out = killed(run, run_dir)
    if run_dir is not None:
        from workbook.record import write_json_atomic

        try:
            write_json_atomic(Path(run_dir) / "run.json", out)
        except OSError:
            pass
    return out
