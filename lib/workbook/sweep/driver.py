"""Run a sweep: plan its points, skip the finished ones, run the rest, keep sweep.json, the page.

Re-running the same command is how a sweep continues: its id comes from the command, a point whose
run already finished (same run key) is marked ok without running, and the others run again (the
runner resumes an unfinished run folder). One line per event tells points done, running and failed.
"""
from __future__ import annotations

import time

from workbook.sweep import local, plan, report, revisions
from workbook.sweep.state import SweepState, here


def run_sweep(notebook: str, cli: dict, *, profile=None, file=None, max_parallel: int = 0,
              timeout_s: float | None = None, revs: list[str] = (), log=print) -> dict:
    """Run every point of the sweep (at each of ``revs`` when given); its sweep.json as it ends."""
    from workbook import params as P
    from workbook import runner
    from workbook.errors import bad_param

    name = P.notebook_path(notebook).stem
    axes, fixed = plan.split_axes(name, cli, allow_empty=bool(revs))
    resolved = revisions.resolve(list(revs)) if revs else []
    gpus = local.visible_gpus()
    points = plan.points(name, axes, fixed, profile=profile, file=file, visible_gpus=gpus)
    if resolved:
        points = plan.with_revisions(points, resolved)
    for p in points:
        if p.gpus > gpus:
            raise bad_param("point", p.label, f"a point this machine can run: it takes {p.gpus} "
                            f"GPU(s) and torch sees {gpus}")
    if max_parallel < 0:
        raise bad_param("max-parallel", max_parallel, "0 (as the resources allow) or more")
    parallel = max_parallel or local.default_parallel(points, gpus)
    sid = plan.sweep_id(name, axes, fixed, profile, file, resolved)
    state = SweepState(sid, {"notebook": name, "axes": axes, "fixed": fixed, "profile": profile,
                             "file": str(file) if file else None, "executor": "local",
                             "max_parallel": parallel,
                             "revisions": [{"rev": r, "commit": c} for r, c in resolved]},
                       points)
    todo = []
    for p in points:
        done = _finished(name, p, state.point(p.index))
        if done is not None:
            state.update(p.index, status="ok", run_id=done.name, error=None)
        else:
            todo.append(p)
    over = list(axes) + (["revision"] if resolved else [])
    log(f"sweep {sid}: {len(points)} points over {', '.join(over)}; "
        f"{len(points) - len(todo)} done earlier, {len(todo)} to run, {parallel} at a time\n"
        f"  {state.path}")
    logs = state.dir / "points"
    logs.mkdir(parents=True, exist_ok=True)

    def run_one(p, gpu_ids, cpu_ids):
        state.update(p.index, status="running", host=here(), started=time.time(), ended=None,
                     gpu_ids=gpu_ids, cpu_ids=cpu_ids, error=None)
        _progress(state, log, f"point {p.index + 1} ({p.label}) started")
        argv = local.argv_for(name, {**fixed, **p.params}, profile=profile, file=file)
        extra, cwd = {}, None
        if p.sha:
            cwd = revisions.worktree(state.dir, p.sha)
            extra = revisions.env_for(cwd, p.sha)
        r = local.launch(argv, logs / f"{p.index}.log", gpu_ids, cpu_ids, timeout_s=timeout_s,
                         env_extra=extra, cwd=cwd)
        if p.sha:
            folder = revisions.find_run(name, p.sha, {**fixed, **p.params})
            run = runner.read_run(folder) if folder else None
            ok = r.returncode == 0 and bool(run) and run.get("status") == "ok"
        else:
            folder = runner.latest_with_key(name, p.key)
            ok = r.returncode == 0 and runner.find_reusable(name, p.key) is not None
        error = None if ok else (f"timed out after {timeout_s:.0f} s" if r.timed_out else
                                 _run_error(folder) or f"exit code {r.returncode}")
        state.update(p.index, status="ok" if ok else "failed", ended=time.time(),
                     run_id=folder.name if folder else None, error=error)
        _progress(state, log, f"point {p.index + 1} ({p.label}) "
                  + (f"ok: {folder.name}" if ok else f"failed: {error}"))

    try:
        local.run_points(todo, run_one, parallel, gpus)
    finally:
        page = report.write(state.data)
    c = state.counts()
    deltas = report.revision_deltas(state.data)
    if deltas:
        log(report.markdown(state.data, deltas))
    log(f"sweep {sid}: {c['ok']} ok, {c['failed']} failed\n  {page}")
    return state.data


def _finished(name: str, p, prior: dict):
    """The finished run of point ``p``, if there is one: by its key here, or, at a revision, the
    run the sweep recorded for it."""
    from workbook import runner
    from workbook.paths import outputs_dir

    if not p.sha:
        return runner.find_reusable(name, p.key)
    if prior.get("status") == "ok" and prior.get("run_id"):
        d = outputs_dir() / name / prior["run_id"]
        run = runner.read_run(d)
        if run and run.get("status") == "ok":
            return d
    return None


def _run_error(folder) -> str | None:
    from workbook import runner

    run = runner.read_run(folder) if folder else None
    return (run or {}).get("error")


def _progress(state, log, what: str) -> None:
    c = state.counts()
    log(f"[{c['ok'] + c['failed']}/{len(state.data['points'])} done, {c['running']} running, "
        f"{c['failed']} failed] {what}")
