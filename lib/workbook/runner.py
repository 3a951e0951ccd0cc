"""The runner: execute a notebook with merged parameters into its own run folder.

Each run lands in ``outputs/<notebook>/<run-id>/`` with the executed ``notebook.ipynb``,
``report.html``, ``results.json`` (written by the notebook) and ``run.json`` (parameters, status,
error, timings, provenance). Runs never overwrite each other. A finished run with the same notebook
source, parameters and lib version is reused unless forced. A failing notebook still gets its
report, with the error on top, and a non-zero exit code.

An unfinished run (killed, interrupted, timed out or failed) with the same key, on the same hardware
and torch, is resumed: the new run folder gets every group of rows that run completed (see
:mod:`workbook.record`) and measures only the rest; ``--force`` measures everything again. SIGTERM
(a scheduler's or ``timeout``'s stop) is handled like Ctrl-C: the run is recorded as interrupted,
its report is written and the notebook's kernel is shut down, so the next run can resume it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from workbook import __version__, cells, console, liveness, params as P, provenance, report
from workbook.errors import cell_error
from workbook.paths import lib_dir, outputs_dir, repo_root
from workbook.record import RESUME_ENV, RUN_DIR_ENV, run_record, write_json_atomic

PLOTLY_RENDERER = "plotly_mimetype+notebook"  # JupyterLab's renderer plus an offline HTML one


@dataclass
class RunInfo:
    notebook: str
    run_id: str
    run_dir: Path
    status: str  # ok | failed | interrupted | running
    reused: bool = False
    error: str | None = None
    data: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "ok" else 1


def lib_fingerprint() -> str:
    """The lib version for reuse decisions: the package version plus a hash of its source files."""
    h = hashlib.sha256(__version__.encode())
    for f in sorted(lib_dir().rglob("*")):
        if f.is_file() and f.suffix in (".py", ".j2", ".json", ".yaml"):
            h.update(str(f.relative_to(lib_dir())).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def notebook_source_hash(path: Path) -> str:
    nb = json.loads(path.read_text())
    src = [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
           for c in nb["cells"]]
    return hashlib.sha256(json.dumps(src).encode()).hexdigest()[:16]


def run_key(nb_hash: str, params: dict, lib_fp: str) -> str:
    blob = json.dumps({"nb": nb_hash, "params": params, "lib": lib_fp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_run(run_dir: Path) -> dict | None:
    """A run's run.json as it stands: "killed" where it says "running" but its process is gone
    (:func:`workbook.liveness.settle`, which rewrites the run.json of a run folder to say so)."""
    try:
        run = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(run, dict):
        return None
    return liveness.settle(run, Path(run_dir) if is_run_folder(run_dir) else None)


def is_run_folder(d: Path) -> bool:
    """``outputs/<notebook>/<run-id>`` with a run.json: no committed reference, no stray path."""
    root = outputs_dir().resolve()
    d = Path(d)
    return (not d.is_symlink() and d.resolve().parent.parent == root
            and d.parent.name != "reference"
            and (d / "run.json").is_file())


def _runs_with_key(notebook: str, key: str):
    """``(folder, run.json)`` of this notebook's runs made with ``key``, newest first."""
    nb_dir = outputs_dir() / notebook
    if not nb_dir.is_dir():
        return
    for d in sorted(nb_dir.iterdir(), reverse=True):
        run = read_run(d)
        if run and run.get("key") == key:
            yield d, run


def find_reusable(notebook: str, key: str) -> Path | None:
    for d, run in _runs_with_key(notebook, key):
        if run.get("status") == "ok" and (d / "results.json").exists():
            return d
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a notebook ran (a time limit, a scheduler, ``timeout``)."""


def resume_caveat(prior: dict) -> str:
    """What the resume message adds for a prior run that says 'running' on another machine.

    Such a run is resumed (this machine cannot tell whether its process is gone: a killed device
    job, a preempted instance), but when it is in fact still going both runs measure what it has not
    finished.
    """
    where = liveness.elsewhere(prior)
    if not where:
        return ""
    return (f"; it is recorded as still running {where}: if it is still going there, both measure "
            "the rest")


def _machine(prov: dict) -> tuple:
    """What must match for a run's measurements to be reused: the hardware and torch build."""
    tv = prov.get("torch", {})
    return (provenance.hardware_label(prov.get("hardware", {})), tv.get("version"), tv.get("cuda"))


def find_resumable(notebook: str, key: str, machine: tuple) -> Path | None:
    """The newest unfinished run with this key on this kind of machine that recorded some
    results."""
    for d, run in _runs_with_key(notebook, key):
        if run.get("status") == "ok" or (run.get("status") == "running" and liveness.alive(run)):
            continue  # finished (reused instead), or a run in progress rather than an abandoned one
        res = _read_results(d)
        if res and res.get("groups") and _machine(run.get("provenance", {})) == machine:
            return d
    return None


def new_run_dir(notebook: str, key: str) -> Path:
    base = outputs_dir() / notebook
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        d = base / (f"{stamp}-{key[:6]}" + (f"-{n}" if n else ""))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise RuntimeError("could not create a fresh run folder")


@contextlib.contextmanager
def _environment(**env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _error_text(exc: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return cell_error(exc.ename, exc.evalue, exc.exec_count)
    try:
        from nbclient.exceptions import DeadKernelError
    except ImportError:  # pragma: no cover
        DeadKernelError = ()  # noqa: N806
    if isinstance(exc, DeadKernelError):
        return f"the kernel died ({exc}); out of memory or a crash in native code"
    return f"{type(exc).__name__}: {exc}"


def prepare(notebook: str, *, cli: dict | None = None, param_file: str | None = None,
            profile: str | None = None, lib_fp: str | None = None) -> tuple:
    """What a run of ``notebook`` with these parameters would be, without running it: (notebook
    path, name, merged values, their sources, notebook hash, lib fingerprint, run key). The key
    names the run folder an identical run reuses (a sweep finds its points' runs by it)."""
    nb_path = P.notebook_path(notebook)
    name = nb_path.stem
    defaults = P.notebook_parameters(nb_path)
    values, sources = P.merge(name, defaults, profile=profile, file=param_file, cli=cli)
    nb_hash, lib_fp = notebook_source_hash(nb_path), lib_fp or lib_fingerprint()
    return nb_path, name, values, sources, nb_hash, lib_fp, run_key(nb_hash, values, lib_fp)


def latest_with_key(notebook: str, key: str) -> Path | None:
    """The newest run folder made with ``key`` (finished or not)."""
    return next((d for d, _run in _runs_with_key(notebook, key)), None)


def run(notebook: str, *, cli: dict | None = None, param_file: str | None = None,
        profile: str | None = None, force: bool = False, log=print,
        timeout: float | None = None) -> RunInfo:
    """Run one notebook; a bad request raises ParameterError/WorkbookError before anything runs."""
    nb_path, name, values, sources, nb_hash, lib_fp, key = prepare(
        notebook, cli=cli, param_file=param_file, profile=profile)

    if not force:
        prev = find_reusable(name, key)
        if prev is not None:
            data = read_run(prev)
            log(f"{name}: reusing finished run {prev.name} (same notebook source, parameters and "
                f"lib version; --force to run again)\n  {prev / 'report.html'}")
            return RunInfo(name, prev.name, prev, "ok", reused=True, data=data)

    prov = provenance.collect()
    prior = None if force else find_resumable(name, key, _machine(prov))
    run_dir = new_run_dir(name, key)
    run_id = run_dir.name
    started = time.time()
    data = run_record(name, run_id, params=values, param_sources=sources, command=_command_line(),
                      provenance=prov, profile=profile, param_file=param_file, key=key,
                      notebook_hash=nb_hash, lib_fingerprint=lib_fp,
                      resumed_from=prior.name if prior else None)
    write_json_atomic(run_dir / "run.json", data)
    log(f"{name}: running into {run_dir}")
    env = {RUN_DIR_ENV: run_dir, "PLOTLY_RENDERER": PLOTLY_RENDERER, "WORKBOOK_ROOT": repo_root(),
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", RESUME_ENV: prior or ""}
    if prior:
        log(f"{name}: resuming the unfinished run {prior.name}: what it completed is kept, the "
            "rest is measured (--force measures everything again)"
            + resume_caveat(read_run(prior) or {}))

    out_nb = run_dir / "notebook.ipynb"
    status, error = "ok", None
    interrupt = None
    prior_cells, prior_run = cells.prior_cells(list_runs(), name, profile)
    tracker = cells.Tracker(run_dir / console.LOG_NAME, log=log, prior=prior_cells,
                            prior_id=prior_run)
    try:
        import papermill as pm

        with _environment(**env), _sigterm_interrupts(), cells.tracking(tracker), \
                cells.engine_messages_to(tracker.log_path):
            manager = cells.kernel_manager_logging_to(tracker.log_path)
            pm.execute_notebook(str(nb_path), str(out_nb), parameters=values, cwd=str(repo_root()),
                                kernel_name=_kernel_name(), progress_bar=False, log_output=False,
                                engine_name=cells.ENGINE, execution_timeout=timeout,
                                kernel_manager_class=manager)
    except KeyboardInterrupt as exc:
        interrupt = exc
        status = "interrupted"
        error = "interrupted by the user (Ctrl-C)"
        if isinstance(exc, Terminated):
            error = ("terminated by SIGTERM (a time limit or a scheduler); the next identical run "
                     "resumes it")
        tracker.interrupted()
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, reported, an exit code
        status, error = "failed", _error_text(exc)

    data.update(status=status, error=error, ended_at=provenance.now_iso(),
                duration_s=round(time.time() - started, 2), **tracker.record())
    results = _read_results(run_dir)
    # the kernel is gone: say why
    if status != "ok" and results and results.get("status") == "running":
        results.update(status=status, stopped=error)
        write_json_atomic(run_dir / "results.json", results)
    if out_nb.exists():
        try:
            report.render(out_nb, run_dir / "report.html", report.summary_html(data, results))
        except Exception as exc:  # noqa: BLE001 - a broken report must not hide the run's status
            data["report_error"] = _error_text(exc)
    write_json_atomic(run_dir / "run.json", data)
    write_index()
    msg = f"{name}: {status} in {data['duration_s']:.1f} s"
    log(msg + (f" — {error}" if error else "") + f"\n  {run_dir / 'report.html'}")
    if interrupt is not None:
        raise interrupt
    return RunInfo(name, run_id, run_dir, status, error=error, data=data)


@contextlib.contextmanager
def _sigterm_interrupts():
    """Turn SIGTERM into :class:`Terminated`, and SIGINT into KeyboardInterrupt however deep in
    nbclient's event loop it lands, while a notebook runs (main thread only: elsewhere, no
    change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    def interrupt(signum, frame):
        # Our own handler, not Python's default: an asyncio loop (nbclient's) replaces only the
        # default one, with a handler that cancels its task, and a cancellation swallowed inside
        # would lose the Ctrl-C.
        raise KeyboardInterrupt()

    old = signal.signal(signal.SIGTERM, handler)
    # started with Ctrl-C ignored (nohup, `cmd &`)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


def _command_line() -> str:
    """The invoking command without machine paths (``workbook run ...``), for the record."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog in ("cli.py", "__main__.py"):
        prog = "workbook"
    return " ".join([prog, *sys.argv[1:]])


def _kernel_name() -> str:
    """The kernel papermill starts: this interpreter's own (python3 resolves to sys.executable)."""
    return os.environ.get("WORKBOOK_KERNEL", "python3")


def _read_results(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None


def run_all(*, profile: str | None = None, force: bool = False, log=print) -> list[RunInfo]:
    """Every notebook with its defaults (and the profile's section); a failure stops no other."""
    infos = []
    for name in P.list_notebooks():
        infos.append(run(name, profile=profile, force=force, log=log))
    write_index()
    return infos


def list_runs() -> list[dict]:
    """Every run folder's run.json plus its headline figures, newest first."""
    rows = []
    root = outputs_dir()
    if not root.is_dir():
        return rows
    for run_json in root.glob("*/*/run.json"):
        run_d = read_run(run_json.parent)
        if not run_d:
            continue
        res = _read_results(run_json.parent) or {}
        run_d["headline"] = res.get("headline", {})
        run_d["fallbacks"] = res.get("fallbacks", [])
        run_d["path"] = str(run_json.parent)
        rows.append(run_d)
    rows.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    return rows


def find_run(ref: str) -> Path:
    """A run folder from a path, ``notebook/run-id``, or a unique run-id prefix."""
    from workbook.errors import WorkbookError

    p = Path(ref)
    if (p / "run.json").exists():
        return p.resolve()
    root = outputs_dir()
    cands = [d for d in root.glob("*/*") if (d / "run.json").exists()
             and (d.name.startswith(ref) or f"{d.parent.name}/{d.name}".startswith(ref))]
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise WorkbookError(f"No run matches {ref!r}; `workbook list` shows the runs.")
    raise WorkbookError(f"{ref!r} matches {len(cands)} runs; give more of the run id.")


def write_index() -> Path:
    from workbook.index import write

    return write(outputs_dir(), list_runs())
