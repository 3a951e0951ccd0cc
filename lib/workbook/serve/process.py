"""``workbook serve`` as a child process of a notebook: started, waited for, drained, never left.

The notebook kernel must not be the server (a model in the kernel would sit beside the load
generator's processes and outlive a failed cell), so :class:`ServerProcess` starts ``python -m
workbook.cli serve ... --port 0 --ready-file F`` in a process group of its own, with its output in
the run folder's log, waits for the URL it writes once warmed up, and on exit sends SIGTERM (the
server drains and exits 0), killing the group if it does not. A server that dies while starting
raises one sentence with the last lines of its log.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from workbook import proc
from workbook.errors import WorkbookError
from workbook.follow import Follow


class ServerProcess:
    def __init__(self, options: list[str], log_file: Path, *, start_timeout_s: float = 900,
                 stop_timeout_s: float = 60, relay: Callable[[str], None] | None = None):
        """``relay`` gets the server's progress lines while it starts (loading, warm-up per
        batch size: minutes on a GPU; :mod:`workbook.follow`)."""
        self.options, self.log_file = options, Path(log_file)
        self.relay = relay
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.url = ""
        self.p: subprocess.Popen | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> ServerProcess:
        ready = self.log_file.with_suffix(".url")
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "workbook.cli", "serve", "--port", "0",
                "--ready-file", str(ready), *self.options]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        follow = Follow(self.log_file, self.relay) if self.relay else None
        log = open(self.log_file, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True, env=dict(os.environ),
                                  preexec_fn=proc.die_with_parent())
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while not ready.exists():
                if follow is not None:
                    follow.poll()
                if self.p.poll() is not None:
                    raise WorkbookError(
                        f"The server stopped while starting (exit code {self.p.returncode}); "
                        f"last lines of {self.log_file.name}:\n{proc.tail_text(self.log_file)}")
                if time.monotonic() > deadline:
                    raise WorkbookError(
                        f"The server was not up after {self.start_timeout_s:.0f} s; last lines "
                        f"of {self.log_file.name}:\n{proc.tail_text(self.log_file)}")
                time.sleep(0.2)
            self.url = ready.read_text().strip()
            if follow is not None:
                follow.poll()
        except BaseException:
            self._stop()
            raise
        return self

    def _stop(self) -> None:
        if self.p is None or self.p.poll() is not None:
            self.exit_code = self.p.returncode if self.p else None
            return
        self.p.send_signal(signal.SIGTERM)  # drain: requests in flight finish
        try:
            self.exit_code = self.p.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.exit_code = None
        finally:
            proc.kill_group(self.p)

    def __exit__(self, *exc) -> None:
        self._stop()
