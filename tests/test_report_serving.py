"""The serving notebook with its defaults, through the runner (nbmake skips it): every table and figure
in its report, the report clean and drawn in a browser, its results' shape, and what it measures.

A module of its own so that pytest-xdist can run it beside test_report_content.py's notebooks."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from test_report_content import (_chromium, check_browser, check_reads_clean, check_shape,
                                 check_tables_and_figures)
from workbook import runner


TERMINAL: list[str] = []  # what the runner printed


@pytest.fixture(scope="module")
def info():
    mp = pytest.MonkeyPatch()
    tmp = Path(tempfile.mkdtemp(prefix="workbook-serving-"))
    mp.setenv("WORKBOOK_OUTPUTS", str(tmp / "outputs"))
    try:
        yield runner.run("serving", cli={}, log=TERMINAL.append)
    finally:
        mp.undo()
        shutil.rmtree(tmp, ignore_errors=True)


def test_every_table_and_figure_reaches_the_report(info):
    check_tables_and_figures(info, "serving")


def test_the_report_reads_clean(info):
    check_reads_clean(info)


def test_results_keep_their_shape(info):
    check_shape(info, "serving")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_a_headless_browser(info, tmp_path):
    check_browser(info, "serving", tmp_path)


def test_serving_measures_what_vllm_bench_serve_reports(info):
    """Every benchmark's requests completed, its metrics saved under vllm bench serve's field names, the
    overhead at batch 1 and the claim table in the results."""
    run_dir = info.run_dir
    res = json.loads((run_dir / "results.json").read_text())
    t = res["tables"]
    assert [r["benchmark"] for r in t["load"]] == ["rate 2", "rate 8", "one at a time", "concurrency 4"]
    assert all(r["failed"] == 0 and r["completed"] > 0 and r["median_ttft_ms"] > 0 for r in t["load"])
    assert len(t["ab_rounds"]) == 4 and {r["config"] for r in t["ab_rounds"]} == {"hf_bicubic", "gather4"}
    saved = sorted(p.name for p in (run_dir / "vllm").glob("*.json"))
    assert len(saved) == 4 + 4
    one = json.loads((run_dir / "vllm" / "rate-8.json").read_text())
    for field in ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                  "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                  "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "mean_e2el_ms"):
        assert field in one, field
    assert one["request_rate"] == 8.0 and one["total_output_tokens"] == one["completed"] * 32
    head = res["headline"]
    assert head["batch1_ttft_ms"] > 0 and "server_overhead_pct_tpot" in head
    html = (run_dir / "report.html").read_text()
    assert "not on vLLM" in html and "static batching" in html


def test_the_child_processes_progress_shows_under_its_cell_and_stays_out_of_the_report(info):
    """The engine's, the servers' and the load generator's progress lines are echoed in the terminal
    under the cell that waits for them, while they run, and moved to the run's log, not the report."""
    def under(heading):
        at = next(i for i, ln in enumerate(TERMINAL) if ln.startswith("  cell ") and heading in ln)
        rest = TERMINAL[at + 1:]
        end = next((i for i, ln in enumerate(rest) if ln.startswith("  cell ")), len(rest))
        return rest[:end]

    direct = under("The engine alone")
    assert "    [direct] warm-up: batch 1 ready in" in "\n".join(direct)
    assert sum(ln.startswith("    [direct] batch ") for ln in direct) == 4  # batches [1, 2, 4, 8]
    load = "\n".join(under("Under load"))
    assert "    [serve] warm-up took" in load and "    [4/4] concurrency 4: 12/12 ok in" in load
    assert "    [4/4] hf_bicubic@224 round 2: 6/6 ok in" in "\n".join(under("Vision prefix A/B"))
    from workbook.console import RELAY

    log = (info.run_dir / "log.txt").read_text()
    assert f"{RELAY}[direct] warm-up: batch 8 ready in" in log
    assert RELAY not in (info.run_dir / "report.html").read_text()
