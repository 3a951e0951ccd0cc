"""``workbook report NOTEBOOK.ipynb``: the report of a run made by plain papermill or in JupyterLab.

Why it exists: the runner renders ``report.html`` when its run ends; plain papermill and JupyterLab
have no such moment, so their runs (``outputs/<notebook>/adhoc-*/``) had results but no report.
Given the executed notebook, this finds the run folder from the marker ``record.start()`` left among
its outputs (:data:`workbook.adhoc.MARKER`), keeps the notebook there as ``notebook.ipynb``, settles
``run.json``'s status from what the notebook shows (ok, failed with the error of the cell it stopped
on, interrupted, or still running), renders ``report.html`` the way the runner does and rewrites
``outputs/index.html``.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import nbformat

from workbook.adhoc import MARKER
from workbook.errors import WorkbookError, cell_error
from workbook.paths import repo_root, shown

EXPECTED = ("an executed notebook: the output .ipynb that papermill wrote, or one saved from "
            "JupyterLab")
STOPPED = ("the notebook stopped before rec.finish() with no error in it (its kernel was stopped "
           "or died, or not every cell was run)")


def read_notebook(arg: str):
    """The notebook at ``arg``; a missing file or anything but a notebook is one sentence."""
    p = Path(arg)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise WorkbookError(f"NOTEBOOK {arg!r} {what}; expected {EXPECTED}.")
    try:
        text = p.read_text(encoding="utf-8")
        why = "not JSON"
        json.loads(text)
        why = "not in nbformat 4"
        nb = nbformat.reads(text, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("no cells")
    except Exception as e:  # noqa: BLE001 - JSON, encoding and schema errors alike: one sentence
        why = "not text" if isinstance(e, UnicodeDecodeError) else why
        raise WorkbookError(f"NOTEBOOK {arg!r} is not a Jupyter notebook ({why}); expected "
                            f"{EXPECTED}.") from None
    return p, nb


def find_marker(nb) -> dict | None:
    """The run folder ``record.start()`` named among the outputs (the latest, if it ran twice)."""
    found = None
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            mark = (out.get("metadata") or {}).get(MARKER)
            if isinstance(mark, dict) and mark.get("run_dir"):
                found = dict(mark)
    return found


def run_folder(arg: str, mark: dict) -> Path:
    d = Path(mark["run_dir"])
    d = d if d.is_absolute() else repo_root() / d
    if not (d / "run.json").is_file():
        what = "does not exist here" if not d.exists() else "has no run.json"
        raise WorkbookError(f"NOTEBOOK {arg!r} names the run folder {mark['run_dir']!r}, which "
                            f"{what}; expected the notebook to be reported on the machine, and "
                            "with the outputs folder, that ran it.")
    return d


def notebook_error(nb) -> tuple[str, bool] | None:
    """The error the notebook stopped on, in the runner's words, and whether papermill marked its
    cell as the one it stopped on; else (a notebook saved from JupyterLab) the error of the cell run
    last."""
    latest = None
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        marked = bool((cell.get("metadata") or {}).get("papermill", {}).get("exception"))
        if not errors and not marked:
            continue
        e = errors[-1] if errors else {}
        text = cell_error(e.get("ename", "Error"), e.get("evalue", ""), cell.get("execution_count"))
        if marked:
            return text, True
        if latest is None or (cell.get("execution_count") or 0) >= latest[0]:
            latest = (cell.get("execution_count") or 0, text)
    return (latest[1], False) if latest else None


def settle(run: dict, results: dict | None, nb) -> dict:
    """What run.json must say after the notebook as it was executed: ``{"status": ..., "error":
    ...}``, or {} to keep what the kernel recorded. A cell papermill stopped on makes the run failed
    even after ``finish()``, as under the runner; otherwise complete results make it ok."""
    from workbook.liveness import KILLED, alive

    err = notebook_error(nb)
    complete = (results or {}).get("status") == "complete"
    if err and (err[1] or not complete):
        return {"status": "interrupted" if err[0].startswith("KeyboardInterrupt") else "failed",
                "error": err[0]}
    if complete:
        return {"status": "ok", "error": None}
    if run.get("status") in ("failed", "interrupted", KILLED) and run.get("error"):
        return {}
    if run.get("status") == "running" and alive(run):
        # e.g. a JupyterLab kernel still working through the cells
        return {"status": "running", "error": None}
    return {"status": "interrupted", "error": STOPPED}


def _parse_time(text) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # papermill writes UTC without a zone


def _ended(run: dict, results_path: Path, nb) -> dict:
    """When a run that never reached ``finish()`` ended: papermill's end, else the last write."""
    end = _parse_time((nb.metadata.get("papermill") or {}).get("end_time") or "")
    if end is None and results_path.exists():
        end = datetime.fromtimestamp(results_path.stat().st_mtime, timezone.utc)
    if end is None:
        return {}
    end = end.astimezone()
    start = _parse_time(run.get("started_at") or "")
    return {"ended_at": end.isoformat(timespec="seconds"),
            "duration_s": round((end - start).total_seconds(), 2) if start else None}


def _move_chatter(copy: Path, run: dict) -> None:
    """Progress bars and library chatter leave the kept notebook for the log, as with the runner."""
    from workbook import console

    nb = nbformat.read(str(copy), as_version=4)
    moved = console.clean_notebook(nb, copy.parent / console.LOG_NAME)
    if moved:
        nbformat.write(nb, str(copy))
        run["log_lines_moved"] = (run.get("log_lines_moved") or 0) + moved
    if (copy.parent / console.LOG_NAME).exists():
        run["log"] = console.LOG_NAME


def make_report(arg: str) -> tuple[Path, dict]:
    """Take the executed notebook ``arg`` into its run folder, settle run.json, render report.html
    there and rewrite the index; returns the report's path and the run."""
    from workbook import report, runner
    from workbook.record import load, write_json_atomic

    src, nb = read_notebook(arg)
    mark = find_marker(nb)
    if mark is None:
        raise WorkbookError(f"NOTEBOOK {arg!r} names no workbook run; expected {EXPECTED}, run at "
                            "least as far as its first cell (whose record.start() names the run "
                            "folder).")
    run_dir = run_folder(arg, mark)
    # a run whose process is gone: killed
    run = runner.read_run(run_dir) or load(run_dir / "run.json")
    copy = run_dir / "notebook.ipynb"
    # the runner's own run: its record stands, only re-render
    if not run["run_id"].startswith("adhoc-"):
        if not (copy.exists() and os.path.samefile(src, copy)):
            raise WorkbookError(f"NOTEBOOK {arg!r} belongs to run {run['run_id']!r} made by "
                                "`workbook run`, which kept its own notebook and report; expected "
                                f"that run's {shown(copy)}.")
    else:
        if not (copy.exists() and os.path.samefile(src, copy)):
            shutil.copyfile(src, copy)
        _move_chatter(copy, run)
        results_path = run_dir / "results.json"
        results = runner._read_results(run_dir)
        change = settle(run, results, nb)
        if change.get("status") not in (None, "ok", "running") and not run.get("ended_at"):
            change.update(_ended(run, results_path, nb))
        run.update(change)
        write_json_atomic(run_dir / "run.json", run)
        if (results and run["status"] not in ("ok", "running")
                and results.get("status") == "running"):
            # as the runner does: say why it stopped
            results.update(status=run["status"], stopped=run["error"])
            write_json_atomic(results_path, results)
    html = report.render(copy, run_dir / "report.html",
                         report.summary_html(run, runner._read_results(run_dir)))
    runner.write_index()
    return html, run


def main(arg: str) -> int:
    """The command: the run's status and its report's path."""
    html, run = make_report(arg)
    print(f"{run['notebook']} {run['run_id']}: {run['status']}"
          + (f" — {run['error']}" if run.get("error") else "")
          + f"\n  {html}")
    return 0

