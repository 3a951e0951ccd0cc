"""The Ray executor: a sweep's points as Ray tasks on a cluster, their run folders sent back.

Each point is one Ray task asking for what its run takes (``num_gpus``; ``neuron_cores``, the
resource Ray gives Neuron nodes; one CPU otherwise) and running ``workbook run`` in a child process
on the node Ray picks. Nodes need not share a filesystem:

- the code travels with the task: the driver's tree (its ``lib/``, ``notebooks/`` and
  ``params/``, or a revision's worktree) is packed once into Ray's object store and unpacked once
  per node, and the run uses that lib and those notebooks, tagged with the driver's commit;
- the run writes into an outputs folder of the node's own, one per sweep and point, so a task that
  Ray retries on the same node resumes the unfinished run there (the runner's resume);
- the task returns the run folder as a tar archive, which the driver unpacks into its ``outputs/``.

A task whose worker dies (a killed process, a lost node) is retried by Ray on any node, up to
``RETRIES`` times; a run that fails is a failed point, not retried. Ray itself is optional
(``pip install -e '.[ray]'``); without it ``--executor ray`` is refused in one sentence.
"""
from __future__ import annotations

import io
import os
import socket
import tarfile
from pathlib import Path

from workbook.errors import bad_param

RETRIES = 3  # re-runs of a point whose worker died
MARK = "WORKBOOK_RAY_POINT"  # in a point's processes' environment: what the reaper looks for
SKIP = {".git", ".venv", "outputs", "scratch", ".whl", "__pycache__", ".pytest_cache", "tests",
        ".ipynb_checkpoints"}  # not shipped with the code


def require():
    """The ray module, or the one sentence saying how to get it."""
    try:
        import ray
    except ImportError:
        raise bad_param("executor", "ray", "local, or ray once Ray is installed (pip install -e "
                        "'.[ray]' in the workbook's environment; make installs it)") from None
    return ray


def connect(address: str | None, log=print):
    """Join the cluster at ``address`` ("auto": the one on this machine), or start a local one
    when no address is given; one sentence when it cannot be reached."""
    ray = require()
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not address:
        ray.init(**quiet)
        log(f"ray: started a local cluster ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")
        return ray
    unreachable = bad_param("address", address, "the address of a running Ray cluster "
                            "(host:port, as ray start --head prints it), or auto for the one "
                            "started on this machine")
    if address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise unreachable from None
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError):
        raise unreachable from None
    log(f"ray: joined the cluster at {address} ({len(ray.nodes())} node(s))")
    return ray


def disconnect(ray) -> None:
    """Leave the cluster (a local one started by :func:`connect` stops)."""
    _packed.clear()
    ray.shutdown()


def needs(point) -> dict:
    """The Ray resources one run of ``point`` asks for."""
    want = {"num_cpus": 1, "num_gpus": point.gpus}
    if point.neuron_cores:
        want["resources"] = {"neuron_cores": point.neuron_cores}
    return want


def check_fits(ray, points) -> None:
    """One sentence for a point no node of the cluster can ever run."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for p in points:
        want = needs(p)
        fits = any(n.get("CPU", 0) >= want["num_cpus"] and n.get("GPU", 0) >= want["num_gpus"]
                   and n.get("neuron_cores", 0) >= p.neuron_cores for n in nodes)
        if not fits:
            have = "; ".join(f"{int(n.get('CPU', 0))} CPUs, {int(n.get('GPU', 0))} GPUs, "
                             f"{int(n.get('neuron_cores', 0))} NeuronCores" for n in nodes)
            raise bad_param("point", p.label, f"a point one node of the cluster can run: it takes "
                            f"{p.gpus} GPU(s) and {p.neuron_cores} NeuronCore(s); the nodes have "
                            f"{have or 'nothing'}")


def capacity(ray, points) -> int:
    """How many points the cluster runs at once (the scarcest resource the points ask for)."""
    total = ray.cluster_resources()
    gpus = max((p.gpus for p in points), default=0)
    cores = max((p.neuron_cores for p in points), default=0)
    fit = [int(total.get("CPU", 1))]
    if gpus:
        fit.append(int(total.get("GPU", 0)) // gpus)
    if cores:
        fit.append(int(total.get("neuron_cores", 0)) // cores)
    return max(min(fit), 1)


def run_points(points, run_one, parallel: int) -> None:
    """``run_one(point, {})`` for every point, ``parallel`` tasks in flight (Ray places them)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        for f in [pool.submit(run_one, p, {}) for p in points]:
            f.result()


def pack(tree: Path) -> tuple[str, bytes]:
    """The tree's code as a gzipped tar (what :data:`SKIP` leaves), and its digest."""
    import hashlib

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for dirpath, dirs, files in os.walk(tree):
            dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.endswith(".egg-info"))
            for f in sorted(files):
                path = Path(dirpath) / f
                tar.add(path, arcname=str(path.relative_to(tree)), recursive=False)
    blob = buf.getvalue()
    return hashlib.sha256(blob).hexdigest()[:16], blob


_packed: dict[str, tuple[str, object]] = {}  # tree -> (digest, object ref), once per driver


def submit(ray, point, notebook: str, argv: list[str], *, tree: Path, sweep_id: str, commit: str,
           timeout_s=None):
    """The point's task, started; its result is what :func:`_run_point` returns."""
    if str(tree) not in _packed:
        digest, blob = pack(tree)
        _packed[str(tree)] = (digest, ray.put(blob))
    digest, code = _packed[str(tree)]
    task = ray.remote(_run_point).options(**needs(point), max_retries=RETRIES,
                                          retry_exceptions=False)
    return task.remote(notebook, argv[1:], digest, code, scratch_name(sweep_id, point.index),
                       commit, timeout_s)


def _unpacked(digest: str, code: bytes) -> Path:
    """The shipped tree on this node, unpacked once (into a fresh folder, then renamed)."""
    import shutil
    import tempfile

    dest = scratch_dir(f"trees/{digest}")
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent))
        with tarfile.open(fileobj=io.BytesIO(code), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        try:
            tmp.rename(dest)
        except OSError:  # another task unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def scratch_name(sweep_id: str, index: int) -> str:
    """The point's folder on a node: this driver's outputs folder, the sweep and the point (two
    drivers' sweeps with one id never share a folder)."""
    import hashlib

    from workbook.paths import outputs_dir

    driver = hashlib.sha256(str(outputs_dir().resolve()).encode()).hexdigest()[:10]
    return f"{driver}/{sweep_id}/{index}"


def scratch_dir(name: str) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "workbook-ray" / name


def _run_point(notebook: str, argv: list[str], digest: str, code: bytes, scratch: str,
               commit: str, timeout_s) -> dict:
    """On the node: ``python -m workbook.cli run ...`` with the shipped tree's lib and notebooks,
    into this node's outputs folder for the point; the run folder as a tar archive."""
    import sys

    from workbook import proc

    tree = _unpacked(digest, code)
    base = scratch_dir(scratch)
    outputs = base / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    (base / "worker.pid").write_text(str(os.getpid()))  # where a test kills the worker
    env = dict(os.environ, WORKBOOK_ROOT=str(tree), WORKBOOK_OUTPUTS=str(outputs),
               WORKBOOK_GIT_COMMIT=commit)
    if (tree / "lib" / "workbook").is_dir():  # the tree's own lib, in the kernel too
        env["PYTHONPATH"] = str(tree / "lib")
    # a worker killed mid-run takes its run and the run's kernel (a session of its own) with it,
    # so a retry never races the old attempt for the same run folder
    env[MARK] = scratch
    with proc.reaper(MARK, scratch):
        r = proc.run([sys.executable, *argv], log=base / "point.log", env=env,
                     timeout_s=timeout_s, grace_s=10, cwd=tree)
    folder = outputs / notebook
    runs = sorted(d for d in folder.glob("*") if (d / "run.json").is_file()) \
        if folder.is_dir() else []  # run ids start with their time: the newest is last
    blob = None
    if runs:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(runs[-1], arcname=runs[-1].name)
        blob = buf.getvalue()
    return {"host": socket.gethostname(), "returncode": r.returncode, "timed_out": r.timed_out,
            "run_id": runs[-1].name if runs else None, "tar": blob,
            "log_tail": proc.tail_text(base / "point.log")}


def unpack(result: dict, notebook: str) -> Path | None:
    """The returned run folder, in the driver's ``outputs/<notebook>/`` (replacing an older copy
    of the same run, which a retried point may have sent)."""
    import shutil

    from workbook.paths import outputs_dir

    if not result.get("tar"):
        return None
    dest = outputs_dir() / notebook
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest / result["run_id"], ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(result["tar"]), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / result["run_id"]
