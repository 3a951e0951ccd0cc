"""What a run prints, sorted: progress and library chatter go to the run's log, real warnings stay
in sight.

Why it exists: tqdm bars (one line per update), inductor's autotuning tables and rejected
candidates, and the "IProgress not found" warning landed as pink stderr blocks in every report and
screenful in the terminal, so a reader could not tell a real warning from noise. A stderr line is
*chatter* when it matches one of :data:`CHATTER` (progress bars and known library messages); chatter
is moved out of the notebook's outputs into ``log.txt`` in the run folder, which the report links.
Everything else on stderr (Python warnings, errors, what a notebook prints to stderr on purpose)
stays where it was.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

LOG_NAME = "log.txt"

# The margin mark of a child process's progress line (relay): the runner echoes these lines in the
# terminal (workbook.cells) before moving them to the run's log.
RELAY = "│ "
# Each pattern is one kind of noise, matched against a single stderr line (after carriage returns
# are resolved).
CHATTER = [
    # a tqdm bar: "precision:  40%|████      | 6/15 [00:03<00:04, ...]"
    re.compile(r"^\s*[^|]*:?\s*\d{1,3}%\|"),
    re.compile(r"\d+/\d+ \[\d+:\d+(:\d+)?<"),  # a tqdm bar with a custom format
    re.compile(r"IProgress not found"),
    re.compile(r"^\s*from \.autonotebook import tqdm as notebook_tqdm"),
    re.compile(r"^AUTOTUNE \w+\("),  # inductor max-autotune's table of candidates
    re.compile(r"^(strides|dtypes): "),
    re.compile(r"^\s+\S+ \d+(\.\d+)? ms \d+(\.\d+)?%"),
    re.compile(r"^SingleProcess AUTOTUNE benchmarking takes"),
    re.compile(r"^(Sub)?Process AUTOTUNE"),
    re.compile(r"^Autotune Choices Stats"),
    re.compile(r"No valid triton configs"),
    re.compile(r"Ignoring this choice"),
    re.compile(r"^\s*(Runtime|CUDA compilation) error during autotuning"),
    re.compile(r"^\s*\d+ tuning requests:"),
    re.compile("^" + re.escape(RELAY)),  # a child process's progress line, relayed (relay)
]

# Loggers whose records are autotuning chatter: multi-line messages that line patterns would cut
# apart.
CHATTY_LOGGERS = ("torch._inductor.select_algorithm", "torch._inductor.runtime.triton_heuristics",
                  "torch._inductor.autotune_process")


def resolve_cr(line: str) -> str:
    """What a terminal shows of a line a progress bar rewrote with carriage returns: the end."""
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1] if parts else ""


def is_chatter(line: str) -> bool:
    return any(p.search(line) for p in CHATTER)


def split_stderr(text: str) -> tuple[str, list[str]]:
    """``(kept text, chatter lines)``: chatter (and blank lines between chatter) leaves the text."""
    kept, moved = [], []
    for raw in text.split("\n"):
        line = resolve_cr(raw) if "\r" in raw else raw
        if "\r" in raw and not line:
            continue
        if is_chatter(line):
            moved.append(line)
        else:
            kept.append(line)
    out = "\n".join(kept)
    if not out.strip():
        out = ""
    return out, moved


def clean_cell(cell) -> tuple[list[str], list[str]]:
    """Move the chatter out of a code cell's stderr outputs (in place).

    Returns ``(chatter lines, kept stderr lines)``; a stderr output left empty is removed."""
    moved, kept = [], []
    outputs = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
            rest, chat = split_stderr(text)
            moved += chat
            if rest:
                ends = rest.endswith("\n") or not text.endswith("\n")
                out["text"] = rest if ends else rest + "\n"
                kept += [ln for ln in rest.split("\n") if ln.strip()]
                outputs.append(out)
            continue
        outputs.append(out)
    cell["outputs"] = outputs
    return moved, kept


def append_log(log_path: Path, heading: str, lines: list[str]) -> None:
    """Append ``lines`` to the run's log under ``--- heading`` (the cell they came from)."""
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"--- {heading}\n" + "\n".join(lines) + "\n")


def clean_notebook(nb, log_path: Path | None = None) -> int:
    """Move every code cell's chatter into ``log_path`` (appended, under a line naming the cell);
    returns how many lines moved. Used on notebooks that did not run under the runner (plain
    papermill, JupyterLab)."""
    total = 0
    code = [c for c in nb.cells if c.get("cell_type") == "code"]
    for n, cell in enumerate(code, 1):
        moved, _ = clean_cell(cell)
        total += len(moved)
        if moved and log_path is not None:
            append_log(log_path, f"cell {n}", moved)
    return total


def progress(iterable=None, *, total=None, desc: str = "", **kw):
    """A text progress bar on stderr (no ipywidgets needed, no "IProgress not found" warning); the
    runner moves its updates to the run's log, and in JupyterLab it redraws in place."""
    from tqdm.std import tqdm

    return tqdm(iterable, total=total, desc=desc, mininterval=1.0, file=sys.stderr,
                dynamic_ncols=False, ncols=100, **kw)


def relay(line: str) -> None:
    """Show a child process's progress line (:mod:`workbook.follow`) in the notebook while it runs:
    on stderr behind :data:`RELAY`, so the runner echoes it in the terminal and then moves it to the
    run's log with the other progress."""
    print(RELAY + line, file=sys.stderr, flush=True)


def quiet_libraries(log_path: Path) -> None:
    """Send the autotuning loggers' records to ``log_path`` instead of the notebook (kernel side,
    once per run)."""
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    for name in CHATTY_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.addHandler(handler)
        lg.propagate = False
