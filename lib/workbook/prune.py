"""``workbook rm`` and ``workbook gc``: remove run folders, and nothing but run folders.

Why it exists: failed, interrupted and killed attempts pile up under ``outputs/`` and crowd
`workbook list` and the index; removing them by hand with ``rm -rf`` risks the committed references
under ``outputs/reference/``, a run still in progress, or a mistyped path. Here a folder is removed
only when it is ``outputs/<notebook>/<run-id>`` with a ``run.json``; ``gc`` never touches a run that
finished ok, and never one whose process is still alive or that runs on another host.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from workbook import liveness, runner
from workbook.errors import WorkbookError
from workbook.paths import shown


def remove(refs: list[str], *, log=print) -> list[Path]:
    """Remove the run folders ``refs`` name (as `workbook compare` finds them); all or none: every
    one is checked before anything is removed."""
    dirs: list[Path] = []
    for ref in refs:
        d = runner.find_run(ref)
        if not runner.is_run_folder(d):
            raise WorkbookError(f"{ref!r} is not a run folder under outputs/ ({shown(d)}): rm "
                                "removes only outputs/<notebook>/<run-id> folders, never "
                                "outputs/reference/.")
        run = runner.read_run(d) or {}
        if run.get("status") == "running" and liveness.alive(run):  # (another host's: named, taken)
            raise WorkbookError(f"Run {d.parent.name}/{d.name} is still running (pid "
                                f"{run.get('pid')}): stop it before removing it.")
        if d not in dirs:
            dirs.append(d)
    for d in dirs:
        status = (runner.read_run(d) or {}).get("status", "?")
        shutil.rmtree(d)
        log(f"removed {shown(d)} ({status})")
    log(f"index: {shown(runner.write_index())}")
    return dirs


def gc(*, failed: bool = False, interrupted: bool = False, dry_run: bool = False,
       log=print) -> list[Path]:
    """Remove failed runs (``failed``) and/or interrupted ones (``interrupted``: also runs killed
    outright, whose process is gone). Runs that finished ok, runs still alive, runs said to be
    running on another host and anything under outputs/reference/ are kept."""
    if not (failed or interrupted):
        raise WorkbookError("gc needs --failed and/or --interrupted: it removes only runs that "
                            "failed or were interrupted, never ones that finished ok.")
    wanted = {"failed"} if failed else set()
    if interrupted:
        wanted |= {"interrupted", liveness.KILLED}
    gone: list[Path] = []
    kept: Counter = Counter()
    for r in runner.list_runs():  # each status settled: a run whose process is gone reads as killed
        d = Path(r["path"])
        status = r.get("status")
        if status == "running":
            where = liveness.elsewhere(r)
            log(f"skipped {shown(d)}: " + (f"recorded as running {where}" if where
                                           else f"still running (pid {r.get('pid')})"))
            continue
        if status not in wanted or not runner.is_run_folder(d):
            kept[status] += 1
            continue
        if not dry_run:
            shutil.rmtree(d)
        log(f"{'would remove' if dry_run else 'removed'} {shown(d)} ({status})")
        gone.append(d)
    what = " and ".join(sorted(wanted - {liveness.KILLED}))  # killed: interrupted from outside
    left = (", ".join(f"{n} {s}" for s, n in sorted(kept.items(), key=lambda kv: str(kv[0])))
            or "none")
    verb = "would remove" if dry_run else "removed"
    log(f"gc: {verb} {len(gone)} {what} run{'s' if len(gone) != 1 else ''}; kept {left}"
        + (" (--dry-run: nothing removed)" if dry_run else ""))
    if gone and not dry_run:
        log(f"index: {shown(runner.write_index())}")
    return gone
