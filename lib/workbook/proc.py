"""Child processes that cannot outlive their caller: the Neuron compile worker, torchrun, export
attempts.

Each child runs in its own process group (so a compiler's sub-processes go with it), under a
timeout, with Linux's parent-death signal set so that a SIGKILLed caller does not leave it running.
When the wait ends for any reason (exit, timeout, Ctrl-C) the whole group is killed: SIGTERM first
with a grace period where asked, then SIGKILL. The last lines of its log are at hand for the error
message. Processes that leave the group (torchrun's ranks start sessions of their own) are found by
a mark in their environment: :func:`reaper` kills them when a block ends or its caller dies, however
it dies.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbook.follow import Follow

TAIL_LINES = 20
TAIL_CHARS = 400  # per line: a compiler can print one line of megabytes
POLL_S = 0.5  # how often a relayed child's log is looked at


@dataclass
class Result:
    returncode: int | None  # None when the timeout stopped it
    timed_out: bool
    seconds: float


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or taskset
    narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


PR_SET_PDEATHSIG = 1


def set_parent_death_signal() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere nothing). For a
    process started by a launcher that does not set it, such as torchrun's ranks."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def die_with_parent():
    """preexec_fn: SIGKILL the child when the process that started it dies (PR_SET_PDEATHSIG)."""
    parent = os.getpid()
    libc = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:  # pragma: no cover - no libc to call
            libc = None

    def pre():
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return pre


def kill_group(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """Stop ``proc``'s whole process group (the group outlives its leader while any member lives):
    SIGTERM and up to ``grace_s`` seconds to finish, then SIGKILL."""
    signals = ((signal.SIGTERM, grace_s),) if grace_s > 0 else ()
    for sig, wait in (*signals, (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if wait is not None:
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()


def run(argv: list[str], *, log: Path | None = None, stderr_log: Path | None = None,
        timeout_s: float | None, cwd=None, env: dict | None = None, grace_s: float = 0.0,
        relay: Callable[[str], None] | None = None) -> Result:
    """Run ``argv`` to its end or its timeout, output to ``log`` (stderr to ``stderr_log`` when
    given, else into ``log``). With ``relay``, each progress line the child writes to ``log``
    (:mod:`workbook.follow`) is handed to it while the child runs. The child's group is killed
    whatever ends the wait; KeyboardInterrupt is re-raised."""
    if timeout_s is not None and timeout_s <= 0:
        return Result(None, True, 0.0)
    follow = Follow(log, relay) if relay and log else None
    out = open(log, "ab") if log else subprocess.DEVNULL
    err = (open(stderr_log, "ab") if stderr_log
           else (subprocess.STDOUT if log else subprocess.DEVNULL))
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                                env=env, start_new_session=True, preexec_fn=die_with_parent())
        try:
            rc, timed_out = _wait(proc, timeout_s, follow), False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        finally:  # exit, timeout, or Ctrl-C: nothing of the group is left behind
            kill_group(proc, grace_s)
            if follow is not None:
                follow.poll()
    finally:
        for f in (out, err):
            if hasattr(f, "close"):
                f.close()
    return Result(rc, timed_out, time.perf_counter() - t0)


def _wait(proc: subprocess.Popen, timeout_s: float | None, follow: Follow | None) -> int:
    """``proc.wait(timeout_s)``, looking at the child's log every POLL_S while it runs."""
    if follow is None:
        return proc.wait(timeout=timeout_s)
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
        try:
            return proc.wait(timeout=POLL_S if left is None else min(POLL_S, left))
        except subprocess.TimeoutExpired:
            follow.poll()


def find_env(name: str, value: str) -> list[int]:
    """Live processes (other than this one) whose environment holds ``name=value`` (Linux
    ``/proc``): how to find what a child started in sessions of its own, which no group kill
    reaches."""
    needle, found = f"{name}={value}".encode(), []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if int(d.name) == os.getpid():
                continue
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # not a zombie
                found.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_env(name: str, value: str) -> list[int]:
    """SIGKILL every process :func:`find_env` finds, until none is left (one may fork while the
    others die); returns their pids."""
    killed: list[int] = []
    for _ in range(20):
        pids = [p for p in find_env(name, value) if p not in killed]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    return killed


@contextlib.contextmanager
def reaper(name: str, value: str):
    """While the block runs, a watchdog in a session of its own waits on a pipe from this process.
    When the block ends, or this process dies however it dies (SIGKILL included, which no handler
    sees), the pipe closes and the watchdog kills every process whose environment holds
    ``name=value``, also those in sessions of their own, which the parent-death signal of
    :func:`run` (set on the direct child only) does not reach. Put ``name=value`` in the children's
    environment, not in this process's."""
    r, w = os.pipe()  # both ends non-inheritable: only the watchdog holds r (as its stdin)
    try:
        dog = subprocess.Popen([sys.executable, "-m", "workbook.proc", "reap", name, value],
                               stdin=r, stdout=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(r)
    try:
        yield dog
    finally:
        os.close(w)
        with contextlib.suppress(subprocess.TimeoutExpired):
            dog.wait(timeout=10)


def _reap(name: str, value: str) -> None:
    while sys.stdin.buffer.read(1):  # nothing is written: read returns b"" once the caller is gone
        pass
    kill_env(name, value)


def tail(*paths: Path, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` lines of the first of ``paths`` that has any, each cut to TAIL_CHARS."""
    for p in paths:
        try:
            lines = Path(p).read_text(errors="replace").rstrip().splitlines()
        except OSError:
            continue
        if lines:
            return [ln[:TAIL_CHARS] for ln in lines[-n:]]
    return []


def tail_text(*paths: Path, n: int = TAIL_LINES, indent: str = "    ") -> str:
    lines = tail(*paths, n=n)
    return "\n".join(indent + ln for ln in lines) if lines else indent + "(no output)"


if __name__ == "__main__" and sys.argv[1:2] == ["reap"] and len(sys.argv) == 4:
    _reap(sys.argv[2], sys.argv[3])
