"""Runs made by plain papermill (the issue's literal `papermill notebooks/siglip_neuron.ipynb
out.ipynb -p cores 2`, from the repository root and from notebooks/): run.json beside results.json,
the last output saying where results went, `workbook report` rendering the report into the run
folder, the run in `workbook list`; a failing run reported as failed; bad input to `workbook
report`. The siglip_neuron run of each folder is executed once (module fixture, tiny config) and
shared by the tests; the adhoc logic is also tested on hand-made notebooks, no kernel.
"""
import json
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import make_notebook
from test_notebooks import TINY, _p

from workbook import adhoc, adhoc_report, cli, record
from workbook.paths import repo_root, shown

ROOT = repo_root()
PAPERMILL = [sys.executable, "-m", "papermill", "--no-progress-bar"]


@dataclass
class Plain:
    cwd: Path
    # the executed notebook, where papermill wrote it (in the repository: must be git-ignored)
    out: Path
    proc: subprocess.CompletedProcess
    outputs: Path
    env: dict

    @property
    def run_dir(self) -> Path:
        dirs = list((self.outputs / "siglip_neuron").glob("adhoc-*"))
        assert len(dirs) == 1, dirs
        return dirs[0]

    def executed(self):
        return nbformat.read(str(self.out), as_version=4)


@pytest.fixture(scope="module", params=[".", "notebooks"], ids=["from-root", "from-notebooks"])
def plain(request, tmp_path_factory):
    """`papermill notebooks/siglip_neuron.ipynb out.ipynb -p cores 2` as typed, from the root or
    from notebooks/ (tiny config; the output named out-pytest-PID.ipynb so that a user's own
    out.ipynb is never touched)."""
    cwd = ROOT / request.param
    nb = "siglip_neuron.ipynb" if request.param == "notebooks" else "notebooks/siglip_neuron.ipynb"
    name = f"out-pytest-{os.getpid()}.ipynb"
    outputs = tmp_path_factory.mktemp("outputs")
    env = dict(os.environ, WORKBOOK_OUTPUTS=str(outputs))
    proc = subprocess.run(PAPERMILL + [nb, name, "-p", "cores", "2"] + _p(TINY), cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)
    try:
        yield Plain(cwd, cwd / name, proc, outputs, env)
    finally:
        (cwd / name).unlink(missing_ok=True)


def test_plain_papermill_writes_run_json_beside_results(plain):
    assert plain.proc.returncode == 0, plain.proc.stderr[-2000:]
    res = json.loads((plain.run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["backend"] == "cpu"
    assert res["backend_reason"].startswith("auto: the CPU, since neuron:")
    assert all(r["accuracy_pass"] for r in res["tables"]["runs"] if r["dtype"] == "float32")
    run = json.loads((plain.run_dir / "run.json").read_text())
    assert run["notebook"] == "siglip_neuron" and run["run_id"] == plain.run_dir.name
    assert run["status"] == "ok" and run["error"] is None and run["command"] == "papermill"
    assert run["params"]["cores"] == 2 and run["params"]["model"] == "SigLIP-Tiny"
    assert run["param_sources"]["cores"] == "papermill"
    assert run["param_sources"]["backend"] == "notebook"
    assert set(run["param_sources"].values()) == {"papermill", "notebook"}
    assert run["profile"] is None and run["key"] is None and run["host"] == socket.gethostname()
    assert run["started_at"] <= run["ended_at"]
    assert run["duration_s"] > 0 and isinstance(run["pid"], int)
    assert run["provenance"]["git"]["commit"]
    assert run["provenance"]["hardware"]["cpu"]["cores_logical"] >= 1


def test_last_output_says_where_results_went(plain):
    code = [c for c in plain.executed().cells if c.cell_type == "code"]
    last = code[-1].outputs[-1]
    assert last.output_type == "stream" and last.name == "stdout"
    line = last.text.strip().splitlines()[-1]
    assert line.startswith(f"results: {shown(plain.run_dir)}; render its report with: ")
    assert line.endswith(f" report {plain.out.name}")
    assert adhoc_report.find_marker(plain.executed()) == {"run_dir": shown(plain.run_dir),
                                                          "notebook": "siglip_neuron"}
    ignored = subprocess.run(["git", "check-ignore", "-q", plain.out.name], cwd=plain.cwd)
    assert ignored.returncode == 0, f"{plain.out} would show up in git status"


def test_workbook_report_as_printed_renders_into_the_run_folder(plain):
    """The command the last output gives, run as given from the folder papermill ran in."""
    line = [c for c in plain.executed().cells if c.cell_type == "code"][-1].outputs[-1].text.strip()
    command = shlex.split(line.split("render its report with: ", 1)[1])
    r = subprocess.run(command, cwd=plain.cwd, capture_output=True, text=True, env=plain.env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    html = plain.run_dir / "report.html"
    assert f"siglip_neuron {plain.run_dir.name}: ok" in r.stdout and str(html) in r.stdout
    head = html.read_text()
    head = head[head.index('class="wb-header'):][:3000]
    assert "Status: OK" in head and "papermill" in head  # param sources are in the header's table
    kept, executed = (nbformat.read(str(p), as_version=4)
                      for p in (plain.run_dir / "notebook.ipynb", plain.out))
    assert [c.source for c in kept.cells] == [c.source for c in executed.cells]
    from workbook import console

    moved = console.clean_notebook(executed)  # what the report command moved out: the progress bars
    assert moved > 0 and kept == executed
    assert "CPU fp32 reference: 100%|" in (plain.run_dir / "log.txt").read_text()
    assert 'href="log.txt"' in head
    assert plain.run_dir.name in (plain.outputs / "index.html").read_text()
    assert json.loads((plain.run_dir / "run.json").read_text())["status"] == "ok"


def test_run_appears_in_workbook_list(plain, monkeypatch, capsys):
    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(plain.outputs))
    assert cli.main(["list"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if plain.run_dir.name in ln]
    assert len(lines) == 1 and lines[0].split()[:3] == ["siglip_neuron", plain.run_dir.name, "ok"]


# ---- a failing plain papermill run (hand-made notebook: the kernel's import of torch is the cost)
# ------------
FAIL_CELLS = ["from workbook import record\nrec = record.start('smoke', dict(n=n))",
              "rec.add('t', {'n': n})",
              "raise RuntimeError('planned failure')",
              "rec.finish()"]


def test_failing_plain_papermill_run_is_reported_failed(tmp_path, monkeypatch, capsys):
    make_notebook(tmp_path / "smoke.ipynb", "n: int = 3  # how many", FAIL_CELLS)
    outputs = tmp_path / "outputs"
    env = dict(os.environ, WORKBOOK_OUTPUTS=str(outputs))
    r = subprocess.run(PAPERMILL + ["smoke.ipynb", "out.ipynb", "-p", "n", "4"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "planned failure" in r.stderr
    run_dir = next((outputs / "smoke").glob("adhoc-*"))
    # the kernel recorded it as the cell failed
    run = json.loads((run_dir / "run.json").read_text())
    # cell 5: the notebook's parameters cell, papermill's injected one, then FAIL_CELLS
    assert run["status"] == "failed" and run["error"] == "RuntimeError: planned failure (In [5])"
    assert run["ended_at"] and run["param_sources"] == {"n": "papermill"}

    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(outputs))
    assert cli.main(["report", str(tmp_path / "out.ipynb")]) == 0
    out = capsys.readouterr().out
    assert "smoke " + run_dir.name + ": failed — RuntimeError: planned failure (In [5])" in out
    html = (run_dir / "report.html").read_text()
    head = html[html.index('class="wb-header'):][:2000]
    assert "Status: FAILED" in head and "RuntimeError: planned failure (In [5])" in head
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "failed"
    assert res["stopped"] == run["error"] and res["tables"]["t"] == [{"n": 4}]
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    i = next(i for i, ln in enumerate(listed) if run_dir.name in ln)
    assert listed[i].split()[2] == "failed"
    assert "RuntimeError: planned failure (In [5])" in listed[i + 1]


# ---- workbook report: bad input
# -----------------------------------------------------------------------------
def _marked(path: Path, run_dir: str, error: dict | None = None,
            papermill_mark: bool = True) -> Path:
    """A hand-made executed notebook: record.start()'s marker naming ``run_dir``, maybe failed."""
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell("rec = record.start('nb', {})", execution_count=1)
    first.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "results: x"},
                                            metadata={adhoc.MARKER: {"run_dir": run_dir,
                                                                     "notebook": "nb"}})]
    nb.cells = [first, nbformat.v4.new_code_cell("x = 1", execution_count=2)]
    if error:
        cell = nbformat.v4.new_code_cell("boom()", execution_count=3)
        cell.outputs = [nbformat.v4.new_output("error", ename=error["ename"],
                                               evalue=error["evalue"], traceback=[])]
        if papermill_mark:
            cell.metadata["papermill"] = {"exception": True}
        nb.cells.append(cell)
    nbformat.write(nb, str(path))
    return path


@pytest.mark.parametrize("case,expected", [
    ("missing", "NOTEBOOK '{arg}' does not exist; expected an executed notebook"),
    ("folder", "NOTEBOOK '{arg}' is a folder; expected an executed notebook"),
    ("text",
     "NOTEBOOK '{arg}' is not a Jupyter notebook (not JSON); expected an executed notebook"),
    ("json", "NOTEBOOK '{arg}' is not a Jupyter notebook (not in nbformat 4); expected"),
    ("never-run", "NOTEBOOK '{arg}' names no workbook run; expected an executed notebook"),
    ("gone", "names the run folder '{gone}', which does not exist here; expected"),
])
def test_report_bad_input_is_one_sentence(case, expected, tmp_path, capsys):
    gone = str(tmp_path / "outputs" / "nb" / "adhoc-gone")
    arg = {"missing": str(tmp_path / "out.ipynb"), "folder": str(tmp_path),
           "never-run": str(ROOT / "notebooks" / "siglip_neuron.ipynb")}.get(
        case, str(tmp_path / f"{case}.ipynb"))
    if case == "text":
        Path(arg).write_text("print('not a notebook')\n")
    elif case == "json":
        Path(arg).write_text('{"cells": "no"}')
    elif case == "gone":
        _marked(Path(arg), gone)
    assert cli.main(["report", arg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected.format(arg=arg, gone=gone) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


# ---- the adhoc logic on hand-made notebooks and runs, no kernel
# -------------------------------------------------
@pytest.mark.parametrize("args,out", [
    (["notebooks/siglip_neuron.ipynb", "out.ipynb", "-p", "cores", "2"], "out.ipynb"),
    (["-p", "a", "b.ipynb", "-k", "workbook", "--no-progress-bar", "in.ipynb", "res/o.ipynb"],
     "res/o.ipynb"),
    (["-r", "x", "y", "in.ipynb", "o.ipynb", "-y", "z: 1"], "o.ipynb"),
    (["--cwd", "d", "in.ipynb"], None),  # no output path: none to name
    (["in.ipynb", "-"], None),  # to stdout
])
def test_papermill_output_is_found_among_its_arguments(args, out):
    assert adhoc.papermill_output(args) == out


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def _err_cell(n, ename="RuntimeError", evalue="boom", marked=False):
    c = nbformat.v4.new_code_cell("x", execution_count=n)
    c.outputs = [nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])]
    if marked:
        c.metadata["papermill"] = {"exception": True}
    return c


def test_settle_reads_the_status_from_the_notebook():
    here = {"pid": os.getpid(), "host": socket.gethostname()}
    done, running = {"status": "complete"}, {"status": "running"}
    ok_nb = _nb(nbformat.v4.new_code_cell("x", execution_count=1))
    settle = adhoc_report.settle
    assert settle({"status": "ok"}, done, ok_nb) == {"status": "ok", "error": None}
    # papermill stopped on a cell: failed even after finish() (as under the runner)
    assert settle({"status": "ok"}, done, _nb(_err_cell(5, marked=True))) == {
        "status": "failed", "error": "RuntimeError: boom (In [5])"}
    # saved from JupyterLab: the error of the cell run last, unless the results are complete
    lab = _nb(_err_cell(7, evalue="late"), _err_cell(3, evalue="early"))
    assert settle({"status": "running"}, running, lab)["error"] == "RuntimeError: late (In [7])"
    assert settle({"status": "running"}, done, lab) == {"status": "ok", "error": None}
    stopped = _nb(_err_cell(2, "KeyboardInterrupt", "", True))
    assert settle({"status": "running"}, running, stopped)["status"] == "interrupted"
    # the kernel's own record
    assert settle({"status": "failed", "error": "E: x (In [2])"}, running, ok_nb) == {}
    got = settle({"status": "running", **here}, running, ok_nb)
    assert got == {"status": "running", "error": None}
    assert settle({"status": "running", "pid": 1, "host": "elsewhere"}, running, ok_nb) == {
        "status": "interrupted", "error": adhoc_report.STOPPED}


def test_report_settles_a_run_the_kernel_left_running(wb_root, monkeypatch):
    """A kernel that died mid-run (no hook ran): the report takes the failure from the cell
    papermill marked, dates it from papermill's end time, and says so in results.json, run.json and
    the report."""
    monkeypatch.delenv(record.RUN_DIR_ENV, raising=False)
    rec = record.start("nb", {"n": 1})
    run = json.loads((rec.run_dir / "run.json").read_text())
    assert run["status"] == "running" and run["command"]
    assert run["param_sources"] == {"n": "notebook"}
    out = _marked(wb_root / "out.ipynb", shown(rec.run_dir),
                  {"ename": "ValueError", "evalue": "bad"})
    nb = nbformat.read(str(out), as_version=4)
    nb.metadata["papermill"] = {"end_time": "2030-01-01T00:00:05.000000"}
    nbformat.write(nb, str(out))
    html, run = adhoc_report.make_report(str(out))
    assert run["status"] == "failed" and run["error"] == "ValueError: bad (In [3])"
    assert run["ended_at"].startswith("20") and run["duration_s"] > 0
    assert json.loads((rec.run_dir / "run.json").read_text()) == run
    assert json.loads(rec.path.read_text())["stopped"] == "ValueError: bad (In [3])"
    assert html == rec.run_dir / "report.html" and "Status: FAILED" in html.read_text()
    assert (rec.run_dir / "notebook.ipynb").exists()
    assert rec.run_dir.name in (wb_root / "outputs" / "index.html").read_text()


def test_report_leaves_a_runner_run_alone(wb_root, tmp_path):
    d = wb_root / "outputs" / "nb" / "20300101-000000-abcdef"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"notebook": "nb", "run_id": d.name, "status": "ok",
                                            "key": "k"}))
    _marked(d / "notebook.ipynb", shown(d))
    html, run = adhoc_report.make_report(str(d / "notebook.ipynb"))  # its own notebook: re-rendered
    assert run["status"] == "ok" and html.exists()
    other = _marked(tmp_path / "copy.ipynb", shown(d))
    with pytest.raises(adhoc_report.WorkbookError, match="made by `workbook run`"):
        adhoc_report.make_report(str(other))


class _Shell:
    """Stands in for IPython's shell: the events the recorder hooks into."""

    def __init__(self):
        self.events = self
        self.hooks = []

    def register(self, event, fn):
        assert event == "post_run_cell"
        self.hooks.append(fn)

    def cell_done(self, n, error=None):
        result = type("Result", (),
                      {"error_in_exec": error, "error_before_exec": None, "execution_count": n})
        for fn in self.hooks:
            fn(result)


def test_cell_hook_keeps_run_json_and_prints_finish_line_last(wb_root, monkeypatch, capsys):
    shell = _Shell()
    monkeypatch.setattr(adhoc, "_shell", lambda: shell)
    for name, value in (("_hooked", False), ("_current", None), ("_pending", [])):
        monkeypatch.setattr(adhoc, name, value)  # the kernel's hook state, restored after the test
    monkeypatch.delenv(record.RUN_DIR_ENV, raising=False)
    rec = record.Recorder("nb", {"n": 1})
    adhoc_run = lambda: json.loads((rec.run_dir / "run.json").read_text())  # noqa: E731
    assert len(shell.hooks) == 1 and adhoc_run()["status"] == "running"
    shell.cell_done(2, RuntimeError("boom"))
    assert adhoc_run()["status"] == "failed"
    assert adhoc_run()["error"] == "RuntimeError: boom (In [2])"
    assert json.loads(rec.path.read_text())["status"] == "failed"
    shell.cell_done(3)  # JupyterLab: the user fixed it and went on
    assert adhoc_run()["status"] == "running" and adhoc_run()["error"] is None
    rec.finish()
    print("a table shown after finish()")
    shell.cell_done(4)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a table shown after finish()"
    assert out[1].startswith(f"results: {shown(rec.run_dir)}; render its report with: ")
    assert len(out) == 2
    assert adhoc_run()["status"] == "ok" and adhoc_run()["duration_s"] >= 0
