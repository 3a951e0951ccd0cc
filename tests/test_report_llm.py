"""The LLM notebooks' reports (mistral_tp, export_search), as test_report_content.py checks the others: a
module of its own so that pytest-xdist runs them beside the vision notebooks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_report_content import (RUNS, TERMINAL, _chromium, _notebook_outputs, check_browser,
                                 check_reads_clean, check_shape, check_tables_and_figures, run_reports)
from workbook import runner

HERE = ("export_search", "mistral_tp")


@pytest.fixture(scope="module")
def reports():
    with run_reports(HERE) as infos:
        yield infos


@pytest.mark.parametrize("name", HERE)
def test_every_table_and_figure_reaches_the_report(reports, name):
    check_tables_and_figures(reports[name], name)


@pytest.mark.parametrize("name", HERE)
def test_the_report_reads_clean(reports, name):
    check_reads_clean(reports[name])


@pytest.mark.parametrize("name", HERE)
def test_results_keep_their_shape(reports, name):
    check_shape(reports[name], name)


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_a_headless_browser(reports, tmp_path):
    check_browser(reports["mistral_tp"], "mistral_tp", tmp_path)


def test_export_search_text_agrees_with_its_table(reports):
    info = reports["export_search"]
    res = json.loads((info.run_dir / "results.json").read_text())
    counts = {r["status"]: r["configurations"] for r in res["tables"]["counts"]}
    said = "".join("".join(o.get("text", "")) for o in _notebook_outputs(info) if o.get("name") == "stdout")
    total = sum(counts.values())
    assert f"{total} configurations: " in said
    assert all(f"{n} {status.replace('-', ' ')}" in said for status, n in counts.items())


def test_mistral_figure_and_random_weights_note(reports):
    info = reports["mistral_tp"]
    res = json.loads((info.run_dir / "results.json").read_text())
    steps = res["tables"]["decode_steps"]
    assert {r["run"] for r in steps} == {"tp=2", "one process"} and all(r["decode_step_ms"] > 0 for r in steps)
    assert len(res["tables"]["logits_by_position"]) > 0
    fig = next(o["data"]["application/vnd.plotly.v1+json"] for o in _notebook_outputs(info)
               if "application/vnd.plotly.v1+json" in o.get("data", {}))
    names = {t.get("name") for t in fig["data"]}
    assert {"tp=2", "one process", "tp against one process"} <= names
    said = "".join("".join(o.get("text", "")) for o in _notebook_outputs(info) if o.get("name") == "stdout")
    assert "seeded random numbers, so the generated text means nothing" in said


def test_mistral_tp_two_gloo_ranks_match_one_process(reports):
    res = json.loads((reports["mistral_tp"].run_dir / "results.json").read_text())
    assert res["lead"] == "Numbers from: cpu tensor parallelism over 2 torchrun processes (gloo, parallelize_module)"
    check = res["tables"]["correctness"][0]
    assert check["tokens_identical"] is True and check["logits_max_abs_diff"] < 1e-4
    g = res["tables"]["generations"][0]
    assert g["completion_tokens"] == 4 and g["total_tokens"] == g["prompt_tokens"] + 4
    assert {m["rank"] for m in res["tables"]["measurements"] if m["run"] == "tp=2"} == {0, 1}
    assert res["fallbacks"] == []


def test_export_search_shows_each_try_in_the_terminal_and_keeps_the_report_to_its_tables(reports):
    info = reports["export_search"]
    res = json.loads((info.run_dir / "results.json").read_text())
    tested = [r for r in res["tables"]["configurations"] if r["reason"] == "tested"]
    shown = [ln for ln in TERMINAL["export_search"] if ln.startswith("    [search] tp=")]
    assert len(shown) == len(tested) > 0 and all(" in " in ln and " pending" in ln for ln in shown)
    said = "".join("".join(o.get("text", "")) for o in _notebook_outputs(info))
    assert "[search]" not in said and "[search] tp=" in (info.run_dir / "log.txt").read_text()


def test_mistral_tp_shows_rank_0s_stages_in_the_terminal_as_they_happen(reports):
    """Each torchrun launch relays rank 0's progress lines, marked with its size; the other ranks'
    copies stay in the log."""
    lines = TERMINAL["mistral_tp"]
    loaded = [ln for ln in lines if "] loaded and sharded over" in ln]
    assert [ln.split(" · ")[0] for ln in loaded] == ["    2 ranks", "    1 rank"]
    assert all("· [rank 0 +" in ln for ln in loaded)
    assert not [ln for ln in lines if "[rank 1 +" in ln]


def test_export_search_resumes_without_repeating(reports):
    """A second run on the same state file reads it back and tries nothing again."""
    first = reports["export_search"]
    state_dir = first.data["params"]["state_dir"]
    res1 = json.loads((first.run_dir / "results.json").read_text())
    assert res1["validator"] == "cpu" and res1["tables"]["configurations"][0]["status"] == "valid"
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBOOK_OUTPUTS", str(first.run_dir.parent.parent))
    mp.setenv("WORKBOOK_ROOT", str(Path(state_dir).parent / "root"))
    try:
        again = runner.run("export_search", cli={**RUNS["export_search"], "state_dir": state_dir}, force=True,
                           log=lambda *_: None)
    finally:
        mp.undo()
    res2 = json.loads((again.run_dir / "results.json").read_text())
    saved = json.loads(next(Path(state_dir).glob("*.json")).read_text())
    assert len(saved["attempts"]) == res1["headline"]["tested"] == res2["headline"]["tested"]
    assert res2["tables"]["configurations"] == res1["tables"]["configurations"]
