"""Progress of a run, one line per cell: which cell of how many, its heading, time so far and an
estimate.

Why it exists: papermill either prints nothing while a long notebook runs or echoes every output
line; a reader of the terminal (or of a report of a run that stopped) wants to know where the run
is, or where it got to. The runner executes notebooks through :class:`WorkbookEngine`, papermill's
own nbclient engine with two hooks: at each code cell's start one line is printed (``cell 4 of 14 ·
Precision against fp64 · 1 min 05 s so far · about 3 min left``), and at its end the cell's chatter
is moved to the run's log (:mod:`workbook.console`) and its time kept. Lines a cell relays from a
child process while it runs (:func:`workbook.console.relay`) are echoed under its line at once. The
estimate comes from the last finished run of the same notebook and profile. ``run.json`` keeps the
cells' times, so the report can say how far an interrupted run got.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from papermill.engines import NBClientEngine, papermill_engines

from workbook import console

ENGINE = "workbook"


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def headings(nb) -> dict[int, str]:
    """Each code cell's heading (the last markdown heading, or first line, above it), parameter
    cells left out."""
    out, current = {}, "set-up"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            lines = [ln.strip() for ln in cell.source.splitlines() if ln.strip()]
            heads = [ln.lstrip("#").strip() for ln in lines if ln.startswith("#")]
            if heads or lines:
                current = (heads[-1] if heads else lines[0])[:80]
        elif cell.cell_type == "code":
            tags = set(cell.get("metadata", {}).get("tags", []))
            if not {"parameters", "injected-parameters"} & tags:
                out[i] = current  # the parameter cells only assign values: not counted as work
    return out


class Tracker:
    """Follows a notebook's run: prints progress lines, cleans each cell, keeps their times."""

    def __init__(self, log_path: Path, *, log=print, prior: list[float] | None = None,
                 prior_id: str = ""):
        self.heads: dict[int, str] = {}
        self.code: list[int] = []
        self.log_path = Path(log_path)
        self.log = log
        self.prior, self.prior_id = prior, prior_id
        self.t0 = time.time()
        self.started: dict[int, float] = {}
        # {cell, of, heading, seconds, status} for each code cell that ran
        self.cells: list[dict] = []
        self.moved = 0
        self.echo = RelayEcho(lambda line: self.log(f"    {line}"))

    def bind(self, nb) -> None:
        """The notebook as it executes (papermill's injected-parameters cell included)."""
        self.heads = headings(nb)
        self.code = sorted(self.heads)

    def _estimate(self, n: int) -> str:
        """Time left before code cell ``n`` (1-based) starts, from the prior run's cell times."""
        if not self.prior or len(self.prior) != len(self.code):
            return ""
        left = sum(self.prior[n - 1:])
        return f" · about {duration(left)} left (from run {self.prior_id})"

    def start(self, index: int) -> None:
        if index not in self.heads:
            return
        n = self.code.index(index) + 1
        self.started[index] = time.time()
        self.log(f"  cell {n} of {len(self.code)} · {self.heads[index]} · "
                 f"{duration(time.time() - self.t0)} so far"
                 + self._estimate(n))

    def complete(self, cell, index: int) -> None:
        if index not in self.started:
            return
        n = self.code.index(index) + 1
        status = ("failed" if cell.get("metadata", {}).get("papermill", {}).get("exception")
                  else "ok")
        self.cells.append({"cell": n, "of": len(self.code), "heading": self.heads[index],
                           "seconds": round(time.time() - self.started.pop(index), 2),
                           "status": status})
        moved, kept = console.clean_cell(cell)
        if moved:
            self.moved += len(moved)
            console.append_log(self.log_path, f"cell {n} of {len(self.code)} · {self.heads[index]}",
                               moved)
        for line in kept[:20]:  # real warnings and errors stay in sight, in the terminal too
            self.log(f"    {line}")
        if len(kept) > 20:
            self.log(f"    ... {len(kept) - 20} more lines in the report")

    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM: a cell whose end was seen as the interrupt unwound did not finish."""
        if self.cells and self.cells[-1]["status"] == "ok":
            self.cells[-1]["status"] = "interrupted"

    def record(self) -> dict:
        """What run.json keeps: the cells' times and how many chatter lines went to the log."""
        log = console.LOG_NAME if self.moved or self.log_path.exists() else None
        return {"cells": self.cells, "cells_total": len(self.code), "log": log,
                "log_lines_moved": self.moved}


class RelayEcho:
    """A file-like sink for the cells' stderr as it streams (papermill's ``stderr_file``): the
    lines relayed from child processes (:func:`workbook.console.relay`) go to ``show`` without
    their mark, at once; the rest is ignored (a cell's real warnings are shown at its end)."""

    def __init__(self, show):
        self.show, self._part = show, ""

    def write(self, text: str) -> None:
        *lines, self._part = (self._part + text).split("\n")
        for raw in lines:
            line = console.resolve_cr(raw)
            if line.startswith(console.RELAY):
                self.show(line[len(console.RELAY):])

    def flush(self) -> None:
        pass


_CURRENT: list[Tracker] = []


class WorkbookEngine(NBClientEngine):
    """papermill's nbclient engine, reporting each cell's start and end to the runner's
    :class:`Tracker`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        tracker = _CURRENT[-1] if _CURRENT else None
        if tracker is not None:
            tracker.bind(nb_man.nb)
            start, complete = nb_man.cell_start, nb_man.cell_complete

            def cell_start(cell, cell_index=None, **kw):
                tracker.start(cell_index)
                return start(cell, cell_index, **kw)

            def cell_complete(cell, cell_index=None, **kw):
                tracker.complete(cell, cell_index)
                return complete(cell, cell_index, **kw)

            nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
            if kwargs.get("stderr_file") is None:  # papermill passes None: nothing asked for
                kwargs["stderr_file"] = tracker.echo
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register(ENGINE, WorkbookEngine)


def kernel_manager_logging_to(log_path: Path):
    """A kernel manager whose kernel process writes its own messages (the kernel app's warnings, and
    the socket errors a kernel prints when Ctrl-C shuts it down mid-cell) to ``log_path`` instead of
    the terminal. What the notebook's code prints is unaffected: ipykernel sends it to the
    notebook. The kernel is local, so it talks over Unix sockets in a private folder (IPC
    transport) rather than open TCP ports, which ipykernel warns about as unencrypted."""
    import shutil
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            _sweep_kernel_dirs(Path(tempfile.gettempdir()))
            self._ipc_dir = tempfile.mkdtemp(prefix=f"{KERNEL_DIR_PREFIX}{os.getpid()}-")
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", str(Path(self._ipc_dir) / "kernel"))
            super().__init__(**kw)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart)
            if not restart:
                shutil.rmtree(self._ipc_dir, ignore_errors=True)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            # the child keeps its own copy of the descriptor
            with open(log_path, "a", encoding="utf-8") as f:
                kw.setdefault("stderr", f)
                kw.setdefault("stdout", f)
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


KERNEL_DIR_PREFIX = "workbook-kernel-"  # + the runner's pid: its kernels' sockets


def _sweep_kernel_dirs(tmp: Path) -> None:
    """Remove the socket folders of runners that are gone (a runner killed outright cannot)."""
    import shutil

    for d in tmp.glob(KERNEL_DIR_PREFIX + "*"):
        pid = d.name[len(KERNEL_DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


class tracking:
    """``with tracking(tracker):`` the engine reports to ``tracker`` while a notebook runs."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def __enter__(self):
        _CURRENT.append(self.tracker)
        return self.tracker

    def __exit__(self, *exc):
        _CURRENT.remove(self.tracker)
        return False


def prior_cells(runs: list[dict], notebook: str,
                profile: str | None) -> tuple[list[float] | None, str]:
    """The cell times of the newest finished run of ``notebook`` with ``profile`` (newest first)."""
    for r in runs:
        if (r.get("notebook") == notebook and r.get("profile") == profile
                and r.get("status") == "ok"
                and r.get("cells") and len(r["cells"]) == r.get("cells_total")):
            return [c["seconds"] for c in r["cells"]], r.get("run_id", "")
    return None, ""


def how_far(run: dict) -> str | None:
    """For a run that did not finish: the cell it stopped in and how many finished, one sentence."""
    cells = run.get("cells") or []
    if run.get("status") == "ok" or not cells:
        return None
    done = sum(c["status"] == "ok" for c in cells)
    last = cells[-1]
    where = f"cell {last['cell']} of {last['of']} ({last['heading']})"
    verb = "failed in" if last["status"] == "failed" else "stopped in"
    if last["status"] == "ok":  # killed between cells, or in a cell whose end was never seen
        return (f"The run got through {done} of {last['of']} code cells; the last one finished was "
                f"{where}.")
    return (f"The run {verb} {where} after {duration(last['seconds'])} there; {done} of "
            f"{last['of']} code cells had finished.")


# what the notebook's engine logs while the runner drives it: papermill's (nbclient's) messages,
# asyncio's about its tasks, traitlets' about the kernel manager
ENGINE_LOGGERS = ("papermill", "asyncio", "traitlets")


@contextlib.contextmanager
def engine_messages_to(log_path: Path):
    """Send the engine's log messages to ``log_path`` (the run's log.txt) instead of the terminal.
    A Ctrl-C that lands while the kernel is shut down otherwise puts "Kernel died while waiting
    for execute reply" and an unretrieved task's traceback on the terminal, after the runner's
    one sentence; a kernel that really dies is still said there, by the runner's summary line.
    After an interrupt the messages keep going there: the process is on its way out, and the task
    the interrupt left behind reports only when it is destroyed.
    """
    import gc
    import logging

    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    saved = []
    for name in ENGINE_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.propagate))
        lg.addHandler(handler)
        lg.propagate = False
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (runner.Terminated)
        interrupted = True
        gc.collect()
        raise
    finally:
        if not interrupted:
            for lg, propagate in saved:
                lg.removeHandler(handler)
                lg.propagate = propagate
            handler.close()
