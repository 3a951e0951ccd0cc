"""``workbook rm`` and ``workbook gc``: remove run folders, and nothing but run folders.

Why it exists: failed and interrupted attempts pile up under ``outputs/`` and crowd `workbook list` and the
index; removing them by hand with ``rm -rf`` risks the committed references under ``outputs/reference/``, a
run still in progress, or a mistyped path. Here a folder is removed only when it is ``outputs/<notebook>/<run-id>``
with a ``run.json``; ``gc`` never touches a run that finished ok, and skips one whose process is still alive.
"""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

from workbook import runner
from workbook.errors import WorkbookError
from workbook.paths import outputs_dir, shown


def _is_run_folder(d: Path) -> bool:
    root = outputs_dir().resolve()
    d = Path(d)
    return (not d.is_symlink() and d.resolve().parent.parent == root and d.parent.name != "reference"
            and (d / "run.json").is_file())


def _live(run: dict) -> bool:
    return run.get("status") == "running" and runner._alive(run)


def remove(refs: list[str], *, log=print) -> list[Path]:
    """Remove the run folders ``refs`` name (as `workbook compare` finds them); all or none: every one is
    checked before anything is removed."""
    dirs: list[Path] = []
    for ref in refs:
        d = runner.find_run(ref)
        if not _is_run_folder(d):
            raise WorkbookError(f"{ref!r} is not a run folder under outputs/ ({shown(d)}): rm removes only "
                                "outputs/<notebook>/<run-id> folders, never outputs/reference/.")
        run = runner.read_run(d) or {}
        if _live(run):
            raise WorkbookError(f"Run {d.parent.name}/{d.name} is still running (pid {run.get('pid')}): stop it "
                                "before removing it.")
        if d not in dirs:
            dirs.append(d)
    for d in dirs:
        status = (runner.read_run(d) or {}).get("status", "?")
        shutil.rmtree(d)
        log(f"removed {shown(d)} ({status})")
    log(f"index: {shown(runner.write_index())}")
    return dirs


def gc(*, failed: bool = False, interrupted: bool = False, dry_run: bool = False, log=print) -> list[Path]:
    """Remove failed runs (``failed``) and/or interrupted ones (``interrupted``: also runs recorded as running on
    this host whose process is gone, i.e. killed outright). Runs that finished ok, runs still alive, runs said to
    be running on another host and anything under outputs/reference/ are kept."""
    if not (failed or interrupted):
        raise WorkbookError("gc needs --failed and/or --interrupted: it removes only runs that failed or were "
                            "interrupted, never ones that finished ok.")
    wanted = {"failed"} if failed else set()
    if interrupted:
        wanted.add("interrupted")
    gone: list[Path] = []
    kept: dict[str, int] = {}
    for r in runner.list_runs():
        d = Path(r["path"])
        status = r.get("status")
        if status == "running":
            if runner._alive(r):
                log(f"skipped {shown(d)}: still running (pid {r.get('pid')})")
                continue
            if r.get("host") not in (None, socket.gethostname()):
                log(f"skipped {shown(d)}: recorded as running on host {r['host']!r}, which this machine cannot check")
                continue
            status = "interrupted"  # its process is gone: killed outright
        if status not in wanted or not _is_run_folder(d):
            kept[status] = kept.get(status, 0) + 1
            continue
        if not dry_run:
            shutil.rmtree(d)
        log(f"{'would remove' if dry_run else 'removed'} {shown(d)} ({r.get('status')})")
        gone.append(d)
    what = " and ".join(sorted(wanted))
    left = ", ".join(f"{n} {s}" for s, n in sorted(kept.items(), key=lambda kv: str(kv[0]))) or "none"
    log(f"gc: {'would remove' if dry_run else 'removed'} {len(gone)} {what} run{'s' if len(gone) != 1 else ''}; "
        f"kept {left}" + (" (--dry-run: nothing removed)" if dry_run else ""))
    if gone and not dry_run:
        log(f"index: {shown(runner.write_index())}")
    return gone
