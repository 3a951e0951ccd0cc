"""Run a sweep: plan its points, skip the finished ones, run the rest, keep sweep.json, write the page.

Re-running the same command is how a sweep continues: its id comes from the command, a point whose
run already finished (same run key) is marked ok without running, and the others run again (the
runner resumes an unfinished run folder). One line per event tells points done, running and failed.
"""
from __future__ import annotations

import time

from workbook.sweep import local, plan, report
from workbook.sweep.state import SweepState, here


def run_sweep(notebook: str, cli: dict, *, profile=None, file=None, max_parallel: int = 0,
              timeout_s: float | None = None, log=print) -> dict:
    """Run every point of the sweep; its sweep.json as it ends."""
    from workbook import params as P
    from workbook import runner
    from workbook.errors import bad_param

    name = P.notebook_path(notebook).stem
    axes, fixed = plan.split_axes(name, cli)
    gpus = local.visible_gpus()
    points = plan.points(name, axes, fixed, profile=profile, file=file, visible_gpus=gpus)
    for p in points:
        if p.gpus > gpus:
            raise bad_param("point", p.label, f"a point this machine can run: it takes {p.gpus} "
                            f"GPU(s) and torch sees {gpus}")
    if max_parallel < 0:
        raise bad_param("max-parallel", max_parallel, "0 (as the resources allow) or more")
    parallel = max_parallel or local.default_parallel(points, gpus)
    sid = plan.sweep_id(name, axes, fixed, profile, file)
    state = SweepState(sid, {"notebook": name, "axes": axes, "fixed": fixed, "profile": profile,
                             "file": str(file) if file else None, "executor": "local",
                             "max_parallel": parallel}, points)
    todo = []
    for p in points:
        done = runner.find_reusable(name, p.key)
        if done is not None:
            state.update(p.index, status="ok", run_id=done.name, error=None)
        else:
            todo.append(p)
    log(f"sweep {sid}: {len(points)} points over {', '.join(axes)}; "
        f"{len(points) - len(todo)} done earlier, {len(todo)} to run, {parallel} at a time\n"
        f"  {state.path}")
    logs = state.dir / "points"
    logs.mkdir(parents=True, exist_ok=True)

    def run_one(p, gpu_ids, cpu_ids):
        state.update(p.index, status="running", host=here(), started=time.time(), ended=None,
                     gpu_ids=gpu_ids, cpu_ids=cpu_ids, error=None)
        _progress(state, log, f"point {p.index + 1} ({p.label}) started")
        argv = local.argv_for(name, {**fixed, **p.params}, profile=profile, file=file)
        r = local.launch(argv, logs / f"{p.index}.log", gpu_ids, cpu_ids, timeout_s=timeout_s)
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
    log(f"sweep {sid}: {c['ok']} ok, {c['failed']} failed\n  {page}")
    return state.data


def _run_error(folder) -> str | None:
    from workbook import runner

    run = runner.read_run(folder) if folder else None
    return (run or {}).get("error")


def _progress(state, log, what: str) -> None:
    c = state.counts()
    log(f"[{c['ok'] + c['failed']}/{len(state.data['points'])} done, {c['running']} running, "
        f"{c['failed']} failed] {what}")
