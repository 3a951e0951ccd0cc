"""workbook sweep --executor ray against a Ray cluster the test starts on 127.0.0.1 (2 CPUs): the
2x2 sweep, a worker killed mid-point (retried, nothing lost or duplicated), and the sentences for
an unreachable address and a point no node can run."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workbook import runner
from workbook.errors import ParameterError
from workbook.sweep import ray_exec
from workbook.sweep.driver import run_sweep

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    port = _free_port()
    # no token between this test's driver and its own cluster (a user's cluster keeps its own)
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--num-gpus", "0",
                    "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    yield f"127.0.0.1:{port}"
    import ray

    ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


def _ok_runs(root: Path) -> list[dict]:
    base = root / "outputs" / "smoke"
    runs = [runner.read_run(d) for d in base.iterdir()] if base.is_dir() else []
    return [r for r in runs if r and r["status"] == "ok"]


def test_a_sweep_runs_as_ray_tasks_and_a_killed_worker_is_retried(wb_root, cluster):
    """The 2x2 sweep through Ray: every point's run comes back into the driver's outputs/, one run a
    point. The worker running point 0 is SIGKILLed once its first group is recorded: Ray runs the
    task again, the run resumes what the killed attempt recorded, nothing is lost or doubled. The
    same command then finds every point done."""
    grid = {"n": [1, 2], "label": ["a", "b"], "sizes": [1, 2], "pause": 1.5}
    out, lines = {}, []
    driver = threading.Thread(target=lambda: out.update(data=run_sweep(
        "smoke", grid, executor="ray", address=cluster, log=lines.append)))
    driver.start()
    scratch, groups = None, []
    deadline = time.time() + 120
    while time.time() < deadline and not groups:
        sweeps = list((wb_root / "outputs" / "sweeps").glob("*/sweep.json"))
        if sweeps:
            sid = json.loads(sweeps[0].read_text())["id"]
            scratch = ray_exec.scratch_dir(ray_exec.scratch_name(sid, 0))
            for f in scratch.glob("outputs/smoke/*/results.json"):
                try:
                    groups = json.loads(f.read_text()).get("tables", {}).get("g", [])
                except ValueError:
                    continue
        time.sleep(0.2)
    assert groups, "point 0 never recorded its first group"
    first_pid = groups[0]["pid"]
    os.kill(int((scratch / "worker.pid").read_text()), signal.SIGKILL)
    driver.join(300)
    data = out["data"]
    assert data["executor"] == "ray" and data["address"] == cluster
    assert [p["status"] for p in data["points"]] == ["ok"] * 4
    assert all(p["host"] == socket.gethostname() for p in data["points"])
    runs = _ok_runs(wb_root)  # unpacked into the driver's outputs/, one a point
    assert sorted(r["key"] for r in runs) == sorted(p["key"] for p in data["points"])
    for p in data["points"]:
        res = json.loads((wb_root / "outputs" / "smoke" / p["run_id"] / "results.json").read_text())
        assert res["headline"]["x_ms"] == p["params"]["n"] * 1.5
        assert res["params"]["label"] == p["params"]["label"]
        assert [r["size"] for r in res["tables"]["g"]] == [1, 2]  # nothing lost, nothing twice
    killed = json.loads((wb_root / "outputs" / "smoke" / data["points"][0]["run_id"]
                         / "results.json").read_text())["tables"]["g"]
    assert killed[0]["pid"] == first_pid != killed[1]["pid"]  # the killed attempt's group resumed
    assert any(line.startswith("[4/4 done, 0 running, 0 failed]") for line in lines)
    again = run_sweep("smoke", grid, executor="ray", address=cluster, log=lines.append)
    assert [p["run_id"] for p in again["points"]] == [p["run_id"] for p in data["points"]]
    assert "4 done earlier, 0 to run" in "\n".join(lines)


def test_bad_ray_input_is_one_sentence(wb_root, cluster):
    with pytest.raises(ParameterError, match="Parameter address='127.0.0.1:1' is not allowed: "
                                             "the address of a running Ray cluster"):
        run_sweep("smoke", {"n": [1]}, executor="ray", address="127.0.0.1:1", log=lambda *_: None)
    with pytest.raises(ParameterError, match="Parameter executor='slurm' is not allowed: local or "
                                             "ray"):
        run_sweep("smoke", {"n": [1]}, executor="slurm", log=lambda *_: None)
    with pytest.raises(ParameterError, match="given only with --executor ray"):
        run_sweep("smoke", {"n": [1]}, address=cluster, log=lambda *_: None)


def test_a_point_no_node_can_run_is_refused_before_any_runs(cluster):
    with pytest.raises(ParameterError, match="a point one node of the cluster can run: it takes 1 "
                                             "GPU"):
        run_sweep("pos_interp", {"device": ["cuda", "cpu"]}, executor="ray", address=cluster,
                  log=lambda *_: None)


def test_without_ray_the_executor_is_refused_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(ParameterError, match=r"ray once Ray is installed \(pip install -e "):
        ray_exec.require()


def test_the_export_search_through_ray_gives_the_local_answer(cluster, tmp_path):
    """The same fake tries (tests/test_export_search.py) searched here and through Ray: one at a
    time, the same tries in the same order and the same table; two at a time, the same verdicts
    and optimum, every try recorded once."""
    from test_export_search import CANDS, EXPECTED_TRIES, _fake_validator, _statuses

    from workbook.llm import search
    from workbook.llm import search_plan as sp
    from workbook.llm.search_ray import RayDispatch

    v, _ = _fake_validator(tmp_path, pause=0.05)
    here = search.search("m", v, CANDS, tmp_path / "here", 60, log=lambda *_: None)
    states = {}
    for parallel in (1, 2):
        d = RayDispatch(cluster, parallel, log=lambda *_: None)
        try:
            states[parallel] = search.search("m", v, CANDS, tmp_path / f"ray{parallel}", 60,
                                             log=lambda *_: None, dispatch=d)
        finally:
            d.close()
    one, two = states[1], states[2]
    assert [(a["tp"], a["batch"], a["seq"]) for a in one["attempts"]] == EXPECTED_TRIES
    assert _statuses(one) == _statuses(here)
    assert all(a["host"] == socket.gethostname() and Path(a["log"]).is_file()
               for a in one["attempts"])
    tried = [(a["tp"], a["batch"], a["seq"]) for a in two["attempts"]]
    assert len(tried) == len(set(tried)) and set(EXPECTED_TRIES) <= set(tried)
    assert {k: s in sp.VALID for k, s in _statuses(two).items()} == \
        {k: s in sp.VALID for k, s in _statuses(here).items()}
    assert sp.optimal(two) == sp.optimal(here)
