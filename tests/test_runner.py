"""The runner end to end on a tiny notebook: run folders, reuse, failures, list/index/compare, CLI exit codes."""
import json
import subprocess
import sys

import pytest

from workbook import cli, runner
from workbook.errors import ParameterError


def test_run_writes_everything_and_is_reused(wb_root, capsys):
    info = runner.run("smoke", cli={"n": 5})
    assert info.status == "ok" and not info.reused
    files = {p.name for p in info.run_dir.iterdir()}
    assert {"notebook.ipynb", "report.html", "results.json", "run.json"} <= files
    run = json.loads((info.run_dir / "run.json").read_text())
    assert run["status"] == "ok" and run["params"]["n"] == 5 and run["param_sources"]["n"] == "-p"
    assert run["duration_s"] > 0 and run["provenance"]["hardware"]["cpu"]["cores_logical"] >= 1
    assert "torch" in run["provenance"]["packages"]
    res = json.loads((info.run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["tables"]["t"] == [{"label": "a", "n": 5, "x_ms": 7.5}]
    html = (info.run_dir / "report.html").read_text()
    assert "Plotly.newPlot" in html  # the figure is in the report, with plotly.js embedded
    assert "src=\"https://cdn.plot.ly" not in html  # plotly.js is inline, not fetched
    assert 'class="wb-code"' in html and "Status: OK" in html

    again = runner.run("smoke", cli={"n": 5})
    assert again.reused and again.run_dir == info.run_dir
    assert "reusing finished run" in capsys.readouterr().out
    forced = runner.run("smoke", cli={"n": 5}, force=True)
    assert not forced.reused and forced.run_dir != info.run_dir
    assert (info.run_dir / "report.html").exists()  # earlier run untouched

    other = runner.run("smoke", profile="gpu")
    assert other.data["params"]["n"] == 7 and other.data["params"]["label"] == "gpu"

    rows = runner.list_runs()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    index = (wb_root / "outputs" / "index.html").read_text()
    assert info.run_id in index and "x_ms = 7.5" in index

    from workbook.compare import compare
    text = compare(info.run_dir, other.run_dir)
    assert "param n" in text and "param label" in text  # what differs between the runs
    assert "hardware" in text


def test_failing_cell_gives_report_status_and_exit_code(wb_root):
    ok = runner.run("smoke")
    info = runner.run("smoke", cli={"fail": True})
    assert info.status == "failed" and info.exit_code == 1
    assert "RuntimeError: planned failure" in info.error
    run = json.loads((info.run_dir / "run.json").read_text())
    assert run["status"] == "failed" and "planned failure" in run["error"]
    html = (info.run_dir / "report.html").read_text()
    head = html[html.index('class="wb-header'):][:3000]
    assert "Status: FAILED" in head and "planned failure" in head
    assert "made up fallback" in head  # the fallback recorded before the failure is at the top too
    res = json.loads((info.run_dir / "results.json").read_text())
    assert res["tables"]["t"]  # what finished before the failure is kept
    assert json.loads((ok.run_dir / "run.json").read_text())["status"] == "ok"  # earlier run untouched
    # a failed run is never reused
    again = runner.run("smoke", cli={"fail": True})
    assert not again.reused and again.run_dir != info.run_dir


def test_cli_exit_codes(wb_root, capsys):
    assert cli.main(["run", "smoke", "-p", "n", "-1"]) == 1  # the notebook's first cell rejects it
    err_run = runner.list_runs()[0]
    assert "Parameter n=-1 is not allowed: a count of at least 0" in err_run["error"]
    assert cli.main(["run", "smoke", "-p", "nope", "1"]) == 2  # the runner rejects unknown names
    assert "Parameter nope=1 is not allowed" in capsys.readouterr().err
    assert cli.main(["run", "smoke", "-p", "n", "many"]) == 2
    assert cli.main(["list"]) == 0
    assert "failed" in capsys.readouterr().out
    assert cli.main(["params", "smoke"]) == 0
    assert "n: int = 3    # how many" in capsys.readouterr().out


def test_unknown_parameter_raises_before_anything_runs(wb_root):
    with pytest.raises(ParameterError):
        runner.run("smoke", cli={"bogus": 1})
    assert not (wb_root / "outputs" / "smoke").exists()


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "workbook.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run-all" in out.stdout
