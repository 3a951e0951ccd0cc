"""A child process's progress, shown while it runs: the lines of its log that say where it is.

Why it exists: the serving notebook's engine, server and load generator, and mistral_tp's ranks,
run as child processes whose output goes to logs in the run folder. On a GPU their loading and
warm-up alone (compiling, capturing graphs, tuning) take minutes, and a cell that shows nothing for
that long reads as stuck. A :class:`Follow` reads what a child appended to its log since the last
look and hands each progress line to a callback: a line that starts with a bracketed tag, such as
``[direct] warm-up: batch 4 ready in 52.1 s``, ``[2/5] rate 8: 24/24 ok in 9.3 s`` or a rank's
``[rank 1 +  40.2 s] loaded ...``. In the notebooks the callback is
:func:`workbook.console.relay`; the runner echoes relayed lines under the cell's line in the
terminal and moves them out of the report into the run's log, like progress bars.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from workbook.console import resolve_cr

# a tag of words ("direct", "serve", "rank 1 +  12.3 s") or a count ("2/5"), then a space
PROGRESS = re.compile(r"^\[(?:[a-z][\w .+-]*|\d+/\d+)\] ")
LINE_CHARS = 300  # a relayed line is cut here: a child can print one line of megabytes


class Follow:
    """New progress lines of ``path`` since it was made (or since the start, ``from_start``),
    handed to ``on_line`` at each :meth:`poll`; a partial last line waits for its end."""

    def __init__(self, path: Path, on_line: Callable[[str], None], *,
                 pattern: re.Pattern = PROGRESS, from_start: bool = False):
        self.path, self.on_line, self.pattern = Path(path), on_line, pattern
        try:
            self.pos = 0 if from_start else self.path.stat().st_size
        except OSError:  # not written yet: everything it will hold is new
            self.pos = 0
        self._part = b""

    def poll(self) -> int:
        """Relay the complete lines written since the last poll; how many were progress."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return 0
        self.pos += len(data)
        *lines, self._part = (self._part + data).split(b"\n")
        n = 0
        for raw in lines:
            line = resolve_cr(raw.decode(errors="replace")).rstrip()
            if self.pattern.match(line):
                self.on_line(line[:LINE_CHARS])
                n += 1
        return n
