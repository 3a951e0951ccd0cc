"""Runs made without the runner (plain papermill, JupyterLab, nbmake): the record the runner writes.

Why it exists: ``workbook run`` writes ``run.json`` and renders ``report.html`` around a run, but
plain papermill and JupyterLab only execute the notebook, whose recorder writes ``results.json``
into ``outputs/<notebook>/adhoc-*/``. Such a run used to have no ``run.json`` (so neither ``workbook
list`` nor the index showed it) and no report, and nobody said where it went. Here, in the
notebook's kernel, the recorder writes ``run.json`` (``running``; ``ok`` at ``finish()``; ``failed``
or ``interrupted`` with the error of the cell that stopped it), leaves a marker naming the run
folder among the executed notebook's outputs, and says as the notebook's last output where the
results went. ``workbook report NOTEBOOK.ipynb`` (:mod:`workbook.adhoc_report`) reads that marker
back.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbook.errors import cell_error
from workbook.paths import repo_root, shown

# key of the output metadata that names the run folder: {"run_dir": ..., "notebook": ...}
MARKER = "workbook"

# papermill's options that take values (`papermill --help`), skipped when looking for its two paths
_TWO_VALUES = {"-p", "--parameters", "-r", "--parameters_raw"}
_ONE_VALUE = {"-f", "--parameters_file", "-y", "--parameters_yaml", "-b", "--parameters_base64",
              "--engine", "--autosave-cell-every", "-k", "--kernel", "-l", "--language", "--cwd",
              "--stdout-file", "--stderr-file", "--log-level", "--start-timeout", "--start_timeout",
              "--execution-timeout"}


@dataclass
class Launcher:
    """What started this kernel: ``command`` ("papermill", "jupyter-lab", "pytest", ...), the
    notebook a report can be made from as the user would type it (papermill's output path; the open
    notebook in JupyterLab), and the folder the command was typed in."""
    command: str
    notebook: str | None = None
    cwd: str | None = None


def papermill_output(args: list[str]) -> str | None:
    """The output notebook among papermill's arguments (its second path); None for stdout."""
    paths, i = [], 0
    while i < len(args):
        a = args[i]
        if a in _TWO_VALUES:
            i += 3
            continue
        i += 2 if a in _ONE_VALUE else 1
        if a == "-" or not a.startswith("-"):
            paths.append(a)
    return paths[1] if len(paths) > 1 and paths[1] != "-" else None


def launcher() -> Launcher:
    """Who started this kernel, from its parent (papermill and JupyterLab start it directly)."""
    try:
        import psutil

        parent = psutil.Process().parent()
        cmd, cwd = parent.cmdline(), parent.cwd()
    except Exception:  # noqa: BLE001 - no parent, no permission, no psutil: nothing to tell
        return Launcher("unknown")
    for i, tok in enumerate(cmd):
        if Path(tok).name == "papermill":
            return Launcher("papermill", papermill_output(cmd[i + 1:]), cwd)
    names = [Path(t).name for t in cmd[:3]
             if t and not t.startswith("-") and not Path(t).name.startswith("python")]
    saved = os.environ.get("JPY_SESSION_NAME")  # JupyterLab's kernels get the notebook's path
    return Launcher(names[0] if names else "python", shown(saved) if saved else None, cwd)


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _update(run_dir: Path, **changes) -> None:
    from workbook.record import load, write_json_atomic

    path = Path(run_dir) / "run.json"
    try:
        run = load(path)
    except (OSError, ValueError):
        return  # removed meanwhile (gc, clean-runs): nothing to keep up to date
    run.update(changes)
    write_json_atomic(path, run)


def begin(rec, prov: dict) -> None:
    """Write ``run.json`` for a recorder that made its own adhoc folder, as the runner writes it."""
    from workbook.checks import injected_names
    from workbook.record import run_record, write_json_atomic

    rec.launcher = launcher()
    injected = set(injected_names() or ())
    params = rec.data["params"]
    write_json_atomic(rec.run_dir / "run.json", run_record(
        rec.data["notebook"], rec.run_dir.name, params=params, command=rec.launcher.command,
        provenance=prov,
        param_sources={k: "papermill" if k in injected else "notebook" for k in params},
        started_at=rec.data["started_at"]))
    _watch_cells(rec)


def _ended(rec) -> dict:
    from workbook.provenance import now_iso

    # t0: when the recorder began
    return {"ended_at": now_iso(), "duration_s": round(time.time() - rec.t0, 2)}


def finished(rec) -> None:
    """``finish()`` of an adhoc run: run.json says ok."""
    _update(rec.run_dir, status="ok", error=None, **_ended(rec))


def stopped(rec, err: BaseException, cell) -> None:
    """A cell of an adhoc run raised: run.json (and results.json, as the runner does) say so, with
    the error in the runner's words. In JupyterLab a later cell that runs is taken as the run going
    on (:func:`resumed`)."""
    status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
    error = cell_error(type(err).__name__, err, cell)
    _update(rec.run_dir, status=status, error=error, **_ended(rec))
    if rec.data.get("status") == "running":
        rec.data.update(status=status, stopped=error)
        rec._save()


def resumed(rec) -> None:
    if rec.data.get("status") in ("failed", "interrupted"):
        rec.data["status"] = "running"
        rec.data.pop("stopped", None)
        rec._save()
        _update(rec.run_dir, status="running", error=None, ended_at=None, duration_s=None)


# ---- in the kernel: a hook after every cell keeps run.json's status, prints finish()'s line last
_current = None  # the adhoc recorder whose run.json the hook keeps
_pending: list[str] = []  # lines finish() leaves for the end of its cell
_hooked = False


def _after_cell(result) -> None:
    rec = _current
    err = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    if rec is not None:
        if err is not None:
            stopped(rec, err, getattr(result, "execution_count", None))
        else:
            resumed(rec)
    while _pending:
        print(_pending.pop(0))


def _hook(shell) -> None:
    global _hooked
    if not _hooked:
        shell.events.register("post_run_cell", _after_cell)
        _hooked = True


def _watch_cells(rec) -> None:
    global _current
    _current = rec
    shell = _shell()
    if shell is not None:
        _hook(shell)


def announce(rec, notebook: str) -> None:
    """Say where results go, as an output that also names the run folder for ``workbook report``."""
    text = f"results: {shown(rec.path)}"
    shell = _shell()
    if shell is None:
        print(text)
        return
    from IPython.display import display

    display({"text/plain": text}, raw=True,
            metadata={MARKER: {"run_dir": shown(rec.run_dir), "notebook": notebook}})


def _workbook_command(cwd: str | None) -> str:
    """``workbook`` where it is on PATH, else this environment's script as the user can type it."""
    script = Path(sys.executable).parent / "workbook"
    found = shutil.which("workbook")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "workbook"
    cwd = Path(cwd or os.getcwd())
    root = repo_root()
    if script.resolve().is_relative_to(root) and cwd.resolve().is_relative_to(root):
        # .venv/bin/workbook from the root, ../.venv/bin/workbook from notebooks/
        return os.path.relpath(script, cwd)
    return str(script)


def where(rec) -> str:
    """The line ``finish()`` prints: where the results went and how their report comes about."""
    from workbook.record import RUN_DIR_ENV

    if not getattr(rec, "adhoc", False):
        under_runner = os.environ.get(RUN_DIR_ENV)
        return (f"results: {shown(rec.run_dir)}"
                + (" (report.html written when the run ends)" if under_runner else ""))
    who = getattr(rec, "launcher", None) or Launcher("unknown")
    nb = shlex.quote(who.notebook) if who.notebook else "<your executed notebook>"
    if who.notebook and who.command != "papermill":
        nb += " (once saved)"
    return (f"results: {shown(rec.run_dir)}; render its report with: {_workbook_command(who.cwd)} "
            f"report {nb}")


def say_where(rec) -> None:
    """Print :func:`where` as the notebook's last output: after the cell that called ``finish()``
    (which may show a table after it) when in a kernel, at once elsewhere."""
    shell = _shell()
    if shell is None:
        print(where(rec))
        return
    _hook(shell)
    _pending.append(where(rec))
