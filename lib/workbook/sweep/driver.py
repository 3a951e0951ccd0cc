"""Run a sweep: plan its points, skip the finished ones, run the rest, keep sweep.json, the page.

Re-running the same command is how a sweep continues: its id comes from the command, a point whose
run already finished (same run key) is marked ok without running, and the others run again (the
runner resumes an unfinished run folder). One line per event tells points done, running and failed.
"""
from __future__ import annotations

import time

from workbook.sweep import local, plan, ray_exec, report, revisions
from workbook.sweep.state import SweepState, here


EXECUTORS = ("local", "ray")


def run_sweep(notebook: str, cli: dict, *, profile=None, file=None, max_parallel: int = 0,
              timeout_s: float | None = None, revs: list[str] = (), executor: str = "local",
              address: str | None = None, repeat: int = 1, log=print) -> dict:
    """Run every point of the sweep (at each of ``revs`` when given, ``repeat`` times each) with
    ``executor`` (local, or ray at ``address``); its sweep.json as it ends."""
    from workbook import params as P
    from workbook import runner
    from workbook.errors import bad_param

    if executor not in EXECUTORS:
        raise bad_param("executor", executor, " or ".join(EXECUTORS))
    if address and executor != "ray":
        raise bad_param("address", address, "given only with --executor ray")
    if max_parallel < 0:
        raise bad_param("max-parallel", max_parallel, "0 (as the resources allow) or more")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise bad_param("repeat", repeat, "a number of runs of at least 1")
    if repeat > 1 and len(revs) < 2:
        raise bad_param("repeat", repeat, "1 unless two revisions are compared (--rev A --rev B): "
                        "the repeats give the A/B table its noise band")
    name = P.notebook_path(notebook).stem
    axes, fixed = plan.split_axes(name, cli, allow_empty=bool(revs))
    resolved = revisions.resolve(list(revs)) if revs else []
    ray = ray_exec.require() if executor == "ray" else None
    gpus = local.visible_gpus() if ray is None else 0
    points = plan.points(name, axes, fixed, profile=profile, file=file, visible_gpus=gpus)
    if resolved:
        points = plan.with_revisions(points, resolved, repeat)
    if ray is None:
        cores = local.visible_neuron_cores()
        for p in points:
            if p.gpus > gpus or p.neuron_cores > cores:
                raise bad_param("point", p.label, f"a point this machine can run: it takes "
                                f"{p.gpus} GPU(s) and {p.neuron_cores} NeuronCore(s); torch sees "
                                f"{gpus} GPU(s) and the Neuron driver {cores} NeuronCore(s)")
        parallel = max_parallel or local.default_parallel(points, gpus, cores)
    else:
        ray_exec.connect(address, log=log)
        try:
            ray_exec.check_fits(ray, points)
        except Exception:
            ray_exec.disconnect(ray)
            raise
        parallel = max_parallel or ray_exec.capacity(ray, points)
    sid = plan.sweep_id(name, axes, fixed, profile, file, resolved, repeat)
    state = SweepState(sid, {"notebook": name, "axes": axes, "fixed": fixed, "profile": profile,
                             "file": str(file) if file else None, "executor": executor,
                             "address": address,
                             "max_parallel": parallel, "repeat": repeat,
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
    # one worktree a revision, made here, one after the other: two `git worktree add` at once
    # can trip over each other's locks
    trees = {sha: revisions.worktree(state.dir, sha) for sha in {p.sha for p in todo if p.sha}}

    def run_one(p, slots):
        state.update(p.index, status="running", host=here() if ray is None else "ray",
                     started=time.time(), ended=None, error=None, **slots)
        _progress(state, log, f"point {p.index + 1} ({p.label}) started")
        argv = local.argv_for(name, {**fixed, **p.params}, profile=profile, file=file)
        if repeat > 1:
            argv.append("--force")  # every turn measured now, no earlier run reused
        tree = trees[p.sha] if p.sha else None
        if ray is None:
            extra = revisions.env_for(tree, p.sha) if p.sha else {}
            r = local.launch(argv, logs / f"{p.index}.log", slots, timeout_s=timeout_s,
                             env_extra=extra, cwd=tree)
            code, timed_out, host, lost = r.returncode, r.timed_out, here(), None
        else:
            out = _on_ray(ray, p, argv, tree, sid, timeout_s, name, logs)
            code, timed_out, host = out["returncode"], out["timed_out"], out["host"]
            lost = out.get("error")
        if p.sha:
            taken = {q.get("run_id") for i, q in enumerate(state.data["points"])
                     if i != p.index and q.get("run_id")}
            folder = revisions.find_run(name, p.sha, {**fixed, **p.params}, taken)
            run = runner.read_run(folder) if folder else None
            ok = code == 0 and bool(run) and run.get("status") == "ok"
        else:
            folder = runner.latest_with_key(name, p.key)
            ok = code == 0 and runner.find_reusable(name, p.key) is not None
        error = None if ok else (f"timed out after {timeout_s:.0f} s" if timed_out else lost
                                 or _run_error(folder) or f"exit code {code}")
        state.update(p.index, status="ok" if ok else "failed", ended=time.time(), host=host,
                     run_id=folder.name if folder else None, error=error)
        _progress(state, log, f"point {p.index + 1} ({p.label}) "
                  + (f"ok: {folder.name}" if ok else f"failed: {error}"))

    try:
        if ray is None:
            local.run_points(todo, run_one, parallel, gpus, cores)
        else:
            ray_exec.run_points(todo, run_one, parallel)
    finally:
        if ray is not None:
            ray_exec.disconnect(ray)
        page = report.write(state.data)
    c = state.counts()
    deltas = report.revision_deltas(state.data)
    if deltas:
        log(report.markdown(state.data, deltas))
    log(f"sweep {sid}: {c['ok']} ok, {c['failed']} failed\n  {page}")
    return state.data


def _on_ray(ray, p, argv, tree, sid, timeout_s, name, logs) -> dict:
    """One point as a Ray task: its run folder unpacked into outputs/, its log's tail kept."""
    from workbook.paths import repo_root

    commit = p.sha[:12] if p.sha else _commit()
    try:
        out = ray.get(ray_exec.submit(ray, p, name, argv, tree=tree or repo_root(), sweep_id=sid,
                                      commit=commit, timeout_s=timeout_s))
    except ray.exceptions.RayError as e:  # retries spent, or the cluster went away
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        (logs / f"{p.index}.log").write_text(f"{type(e).__name__}: {e}\n")
        return {"returncode": None, "timed_out": False, "host": "ray", "error": first}
    (logs / f"{p.index}.log").write_text(out["log_tail"] + "\n")
    ray_exec.unpack(out, name)
    return out


def _commit() -> str:
    from workbook import provenance

    return str((provenance.collect().get("git") or {}).get("commit") or "unknown")


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
