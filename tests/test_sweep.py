"""workbook sweep with the local executor, on the throw-away smoke notebook: axes, points, sweep.json,
the page, a driver killed mid-sweep and the same command finishing it, and bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from workbook import runner
from workbook.errors import ParameterError, WorkbookError
from workbook.sweep import plan
from workbook.sweep.driver import run_sweep


def test_a_list_is_an_axis_and_a_list_parameter_takes_a_list_of_lists(wb_root):
    axes, fixed = plan.split_axes("smoke", {"n": [1, 2], "sizes": [[1], [2, 3]], "label": "x",
                                            "pause": 0.5})
    assert axes == {"n": [1, 2], "sizes": [[1], [2, 3]]} and fixed == {"label": "x", "pause": 0.5}
    axes, fixed = plan.split_axes("smoke", {"n": [1, 2], "sizes": [4, 5]})
    assert axes == {"n": [1, 2]} and fixed == {"sizes": [4, 5]}  # one value of a list parameter


@pytest.mark.parametrize("cli,sentence", [
    ({"n": []}, "Parameter n=[] is not allowed: a non-empty list of values to sweep."),
    ({"n": 3}, "Nothing to sweep: give at least one parameter a list of values"),
    ({"nn": [1]}, "Parameter nn=[1] is not allowed: smoke has no such parameter"),
    ({"n": [1, "many"]}, "Parameter n='many' is not allowed"),
])
def test_bad_axes_stop_before_any_point_runs(wb_root, cli, sentence):
    with pytest.raises(WorkbookError) as err:
        run_sweep("smoke", cli, log=lambda *_: None)
    assert sentence in str(err.value)
    assert not (wb_root / "outputs" / "smoke").exists()


def test_a_point_this_machine_cannot_run_is_refused_first(monkeypatch):
    """pos_interp on cuda takes a GPU; with none visible the sweep says so before running anything."""
    from workbook.sweep import local

    monkeypatch.setattr(local, "visible_gpus", lambda: 0)
    with pytest.raises(ParameterError, match="it takes 1 GPU"):
        run_sweep("pos_interp", {"device": ["cuda", "cpu"]}, log=lambda *_: None)
    assert plan.gpus_for({"backend": "cuda", "tp_degree": 2}, 0) == 2
    assert plan.gpus_for({"backend": "auto"}, 0) == 0 and plan.gpus_for({"device": "cpu"}, 4) == 0


def test_a_killed_driver_is_continued_by_the_same_command(wb_root):
    """SIGKILL the driver once a point has finished; the same command runs only what is not done."""
    argv = [sys.executable, "-m", "workbook.cli", "sweep", "smoke", "-p", "n", "[1, 2]",
            "-p", "pause", "0.5"]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ))
    sweeps = wb_root / "outputs" / "sweeps"
    deadline = time.time() + 120
    done = []
    while time.time() < deadline and not done:
        for f in sweeps.glob("*/sweep.json"):
            try:
                done = [p for p in json.loads(f.read_text())["points"] if p["status"] == "ok"]
            except ValueError:
                pass
        time.sleep(0.2)
    assert done, "no point finished"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    finished = {p["index"]: p["run_id"] for p in done}
    second = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(finished)} done earlier" in second.stdout
    data = json.loads(next(sweeps.glob("*/sweep.json")).read_text())
    assert [p["status"] for p in data["points"]] == ["ok"] * 2 and data["runs_of_driver"] == 2
    for i, run_id in finished.items():  # not run again
        assert data["points"][i]["run_id"] == run_id
    keys = [runner.read_run(d)["key"] for d in (wb_root / "outputs" / "smoke").iterdir()
            if runner.read_run(d) and runner.read_run(d)["status"] == "ok"]
    assert sorted(keys) == sorted(p["key"] for p in data["points"])  # one ok run per point


def test_two_revisions_by_two_values_run_in_worktrees_alternating(tmp_path, monkeypatch):
    """A 2x2 sweep, two at a time: n [1, 2] by --rev A --rev B on a clone of this repository with a smoke
    notebook committed twice (x_ms changed in B). Each point runs at each commit with that commit's
    notebook, the order alternates, the runs record their commit, sweep.json and the page hold every
    point, `workbook list --sweep` lists their runs, and the delta table says B changed x_ms."""
    from conftest import SMOKE_CELLS, SMOKE_PARAMS, make_notebook
    from workbook.paths import repo_root

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo_root()), str(clone)], check=True)
    git = ["git", "-C", str(clone), "-c", "user.email=t@t", "-c", "user.name=t"]
    nb = clone / "notebooks" / "smoke.ipynb"
    make_notebook(nb, SMOKE_PARAMS, SMOKE_CELLS)
    subprocess.run(git + ["add", "notebooks/smoke.ipynb"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "A"], check=True)
    make_notebook(nb, SMOKE_PARAMS, [c.replace("n * 1.5", "n * 3.0") for c in SMOKE_CELLS])
    subprocess.run(git + ["commit", "-q", "-am", "B"], check=True)
    monkeypatch.setenv("WORKBOOK_ROOT", str(clone))
    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(tmp_path / "outputs"))
    lines = []
    data = run_sweep("smoke", {"n": [1, 2]}, revs=["HEAD~1", "HEAD"], max_parallel=2,
                     log=lines.append)
    assert [p["status"] for p in data["points"]] == ["ok"] * 4, [p.get("error") for p in data["points"]]
    sweep_dir = tmp_path / "outputs" / "sweeps" / data["id"]
    on_disk = json.loads((sweep_dir / "sweep.json").read_text())
    assert on_disk["points"] == data["points"] and on_disk["max_parallel"] == 2
    page = (sweep_dir / "report.html").read_text()
    assert page.count('/report.html">') == 4 and "x against n" in page and "x against revision" in page
    assert "(B) against" in page and any(line.startswith("[4/4 done, 0 running, 0 failed]")
                                         for line in lines)
    listed = subprocess.run([sys.executable, "-m", "workbook.cli", "list", "--sweep", data["id"]],
                            capture_output=True, text=True, env=dict(os.environ))
    assert sorted(line.split()[1] for line in listed.stdout.splitlines() if line.startswith("smoke")) \
        == sorted(p["run_id"] for p in data["points"])
    assert [(p["params"]["n"], p["rev"]) for p in data["points"]] == [
        (1, "HEAD~1"), (1, "HEAD"), (2, "HEAD"), (2, "HEAD~1")]  # A B, then B A
    for p in data["points"]:
        run = json.loads((tmp_path / "outputs" / "smoke" / p["run_id"] / "run.json").read_text())
        assert p["commit"].startswith(run["provenance"]["git"]["commit"])
        res = json.loads((tmp_path / "outputs" / "smoke" / p["run_id"] / "results.json").read_text())
        assert res["headline"]["x_ms"] == p["params"]["n"] * (1.5 if p["rev"] == "HEAD~1" else 3.0)
    table = "\n".join(lines)
    assert "one run a side, [p10-p90] where recorded" in table
    assert "| n=1 | x_ms | 1.5 ms | 3 ms | 2× | changed (beyond ±5%) |" in table
    assert "| n=2 | x_ms | 3 ms | 6 ms | 2× | changed (beyond ±5%) |" in table
    with pytest.raises(ParameterError, match="Parameter rev='no-such-branch' is not allowed"):
        run_sweep("smoke", {"n": [1]}, revs=["no-such-branch", "HEAD"], log=lambda *_: None)


def test_repeats_take_turns_and_give_the_a_b_table_the_repeats_range(wb_root, monkeypatch):
    """--repeat 3: each point three times at each revision, A B, B A, A B; the delta table takes
    each side's median and calls a figure changed only where the repeats' ranges do not overlap."""
    from workbook.paths import outputs_dir
    from workbook.sweep import report

    grid = plan.points("smoke", {"n": [1]}, {})
    pts = plan.with_revisions(grid, [("A", "a" * 40), ("B", "b" * 40)], repeat=3)
    assert [(p.rev, p.repeat) for p in pts] == [("A", 0), ("B", 0), ("B", 1), ("A", 1),
                                                ("A", 2), ("B", 2)]
    assert len({p.key for p in pts}) == 6 and pts[2].label == "n=1, rev=B, repeat 2"
    figures = {"A": [(10.0, "x"), (11.0, "x"), (12.0, "x")],  # x_ms, label
               "B": [(11.5, "x"), (13.0, "y"), (14.0, "y")]}
    points = []
    for p in pts:
        x, label = figures[p.rev][p.repeat]
        run = outputs_dir() / "smoke" / f"run-{p.rev}{p.repeat}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"headline": {
            "x_ms": x, "y_ms": 5.0 if p.rev == "A" else 9.0, "label": label}}))
        points.append({"params": p.params, "commit": p.sha, "rev": p.rev, "status": "ok",
                       "run_id": run.name})
    sweep = {"id": "s", "notebook": "smoke", "points": points, "repeat": 3, "axes": {},
             "fixed": {"n": 1}, "executor": "local", "max_parallel": 1,
             "revisions": [{"rev": "A", "commit": "a" * 40}, {"rev": "B", "commit": "b" * 40}]}
    rows = {d["figure"]: d for d in report.revision_deltas(sweep)}
    assert (rows["x_ms"]["a"], rows["x_ms"]["b"]) == (11.0, 13.0)
    assert rows["x_ms"]["verdict"] == "noise" and rows["x_ms"]["why"] == "within the repeats' range"
    assert rows["y_ms"]["verdict"] == "changed" and rows["y_ms"]["why"] == "beyond the repeats' range"
    assert rows["label"]["a"] == "x" and rows["label"]["b"] == '"x" / "y"'  # the values taken
    assert rows["label"]["verdict"] == "changed"
    md = report.markdown(sweep, list(rows.values()))
    assert "median of 3 runs a side, taken in turns" in md
    assert "| n=1 | x_ms | 11 ms [10–12] | 13 ms [11.5–14] | 1.18× | noise (within the repeats' range) |" in md
    page = report.render(sweep, outputs_dir() / "page.html")
    assert "axes: revision (2, 3 runs each, taking turns)" in page
    assert page.count('"type":"box"') == 2  # x_ms and y_ms: every repeat drawn, none stacked


def test_repeat_is_refused_without_two_revisions(wb_root):
    with pytest.raises(ParameterError, match="Parameter repeat=3 is not allowed: 1 unless two "
                                             "revisions are compared"):
        run_sweep("smoke", {"n": [1, 2]}, repeat=3, log=lambda *_: None)
    with pytest.raises(ParameterError, match="Parameter repeat=0 is not allowed"):
        run_sweep("smoke", {"n": [1]}, revs=["HEAD~1", "HEAD"], repeat=0, log=lambda *_: None)
    assert not (wb_root / "outputs" / "smoke").exists()
