"""Every table and figure a notebook makes is in its report, and the report reads clean, in a browser too.

One runner run per notebook (cheap parameters) feeds every assertion of this module. triton_precision's
GPU-only sections (per-kernel speed, the so400m stack, its ratios and the bar) are driven on the CPU through
the stand-in ``tests/standins/gpu_sections.py``: a cell inserted before them replays an H100 reference run's
rows, and everything downstream is the notebook's own code.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest

from workbook import runner
from workbook.paths import repo_root

ROOT = repo_root()
STANDINS = ROOT / "tests" / "standins"

RUNS = {
    "pos_interp": {"resolutions": [224, 448], "tower_resolutions": [224, 448], "iterations": 1, "warmup": 0,
                   "implementations": ["hf_bicubic", "bilinear", "gather4"]},
    "siglip_neuron": {"model": "SigLIP-Tiny", "image_size": 112, "batch_sizes": [1, 2], "iters": 2},
    "triton_precision": {"kernels": ["layernorm", "linear_gelu"], "dtypes": ["float32", "bfloat16"], "tokens": 16,
                         "claim_shape": [32, 24, 40]},
    "export_search": {"batch_sizes": [1], "min_seq": 2048, "validator": "cpu"},
    "mistral_tp": {"max_tokens": 4, "backend": "cpu"},
}
TABLES = {
    "pos_interp": ["Set-up", "Implementations", "Fidelity on position tables", "Kernel and alignment effects",
                   "One interpolation call", "Vision tower forward", "Pooled embedding against the reference",
                   "Claim check"],
    "siglip_neuron": ["Set-up", "CPU fp32 reference", "Run matrix", "Accuracy against CPU fp32", "Memory"],
    "triton_precision": ["Set-up", "Precision verdicts", "Precision against fp64, every tensor",
                         "fc1 + GELU against fp64", "Fused tower against transformers", "Speed per kernel",
                         "Speed-up per kernel", "so400m stack", "Stack ratios against transformers", "The bar",
                         "Summary"],
    "export_search": ["Candidate sizes", "Configurations by status", "Every configuration", "Optimal configurations"],
    "mistral_tp": ["Tensor-parallel logits and tokens against one process",
                   "Load, first token and decode, per run and rank"],
    "serving": ["Roofline: copy bandwidth and weights read per decode step", "Prefill and decode per batch size",
                "Latency and throughput per benchmark",
                "The server clock against the client clock, per benchmark (means)",
                "Batch 1: through the server against the engine alone",
                "Batch 1: where the time of a request goes (means)",
                "A/B rounds", "TTFT change of B against A, per image size", "Claim check"],
}
FIGURES = {
    "pos_interp": ["Smallest per-position cosine vs hf_bicubic (float32)",
                   "Smallest per-position cosine of each change at 448 px", "One interpolation call",
                   "Vision tower forward (float32)"],
    "siglip_neuron": ["Steady-state latency per call", "Throughput", "|difference| to CPU fp32"],
    "triton_precision": ["fc1 + GELU, bfloat16: |error| in ULPs", "forward+backward per kernel (bf16)",
                         "so400m training step, forward+backward", "so400m training step, peak memory"],
    "export_search": ["tp=2"],
    "mistral_tp": ["Mistral tensor-parallel run"],
    "serving": ["The engine alone: decode against batch size", "Latency and throughput against request rate",
                "TTFT change of gather4 against hf_bicubic (mean over rounds, band: the rounds' spread)"],
}
CHATTER = re.compile(r"\d+%\||it/s\]|IProgress not found|AUTOTUNE|Ignoring this choice")


def _seamed_root(tmp: Path) -> Path:
    """A workbook root whose triton_precision has the GPU stand-in cell in front of its speed section."""
    root = tmp / "root"
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "params", root / "params")
    path = root / "notebooks" / "triton_precision.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Speed per kernel"))
    nb.cells.insert(at, nbformat.v4.new_code_cell(  # the GPU seam (cfg.gpu) replays from here on
        f"import sys\nsys.path.insert(0, {str(STANDINS)!r})\nimport gpu_sections\n"
        "gpu_sections.install(cfg, rec)"))
    nbformat.write(nb, str(path))
    return root


TERMINAL: dict[str, list[str]] = {}  # what the runner printed, per notebook


@contextlib.contextmanager
def run_reports(names):
    """Each of ``names`` run once through the runner with its cheap parameters, in a throw-away root
    (what the runner printed in :data:`TERMINAL`)."""
    mp = pytest.MonkeyPatch()
    tmp = Path(tempfile.mkdtemp(prefix="workbook-reports-"))
    mp.setenv("WORKBOOK_ROOT", str(_seamed_root(tmp)))
    mp.setenv("WORKBOOK_OUTPUTS", str(tmp / "outputs"))
    infos = {}
    try:
        for name in names:
            cli = dict(RUNS[name])
            if name == "export_search":
                cli["state_dir"] = str(tmp / "state")
            TERMINAL[name] = []
            infos[name] = runner.run(name, cli=cli, log=TERMINAL[name].append)
        yield infos
    finally:
        mp.undo()
        shutil.rmtree(tmp, ignore_errors=True)


HERE = ("pos_interp", "siglip_neuron", "triton_precision")  # the LLM notebooks: test_report_llm.py


@pytest.fixture(scope="module")
def reports():
    with run_reports(HERE) as infos:
        yield infos


def _notebook_outputs(info):
    nb = json.loads((info.run_dir / "notebook.ipynb").read_text())
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def _title(fig: dict) -> str:
    t = fig.get("layout", {}).get("title", {})
    return t.get("text", "") if isinstance(t, dict) else str(t)


def _tables(text) -> list[str]:
    return re.findall(r'data-wb-table="([^"]*)"', "".join(text) if isinstance(text, list) else text)


@pytest.mark.parametrize("name", HERE)
def test_every_table_and_figure_reaches_the_report(reports, name):
    check_tables_and_figures(reports[name], name)


def check_tables_and_figures(info, name):
    assert info.status == "ok", info.error
    outputs = _notebook_outputs(info)
    made = [t for o in outputs for t in _tables(o.get("data", {}).get("text/html", ""))]
    figures = [_title(o["data"]["application/vnd.plotly.v1+json"]) for o in outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    html = (info.run_dir / "report.html").read_text()
    assert made == TABLES[name]  # the notebook made each of them, in this order (GPU sections included)
    assert _tables(html) == made  # and each reached the report
    assert figures == FIGURES[name]
    assert html.count('class="plotly-graph-div"') == len(figures)


@pytest.mark.parametrize("name", HERE)
def test_the_report_reads_clean(reports, name):
    check_reads_clean(reports[name])


def check_reads_clean(info):
    html = (info.run_dir / "report.html").read_text()
    stderr = ["".join(o["text"]) for o in _notebook_outputs(info) if o.get("name") == "stderr"]
    assert not [s for s in stderr if CHATTER.search(s)], "progress or library chatter left in the notebook"
    head = html[html.index('class="wb-header'):][:6000]
    assert "Status: OK" in head and "Headline:" in head
    run = json.loads((info.run_dir / "run.json").read_text())
    assert run["cells"] and len(run["cells"]) == run["cells_total"]
    assert f"progress: {run['cells_total']} of {run['cells_total']} code cells ran" in head
    for key in json.loads((info.run_dir / "results.json").read_text())["headline"]:
        assert f">{key} =" not in head and f" {key} = " not in head  # labels, not raw keys


def test_gpu_sections_ran_through_the_stand_in_and_say_so(reports):
    res = json.loads((reports["triton_precision"].run_dir / "results.json").read_text())
    assert any(n.startswith("TEST STAND-IN") for n in res["notes"])
    assert {"kernel_speed", "stack", "stack_ratios", "bar"} <= set(res["tables"])
    assert {r["check"] for r in res["tables"]["bar"]} == {"fwd+bwd speed-up vs transformers sdpa",
                                                           "peak memory vs transformers sdpa"}
    html = (reports["triton_precision"].run_dir / "report.html").read_text()
    assert "TEST STAND-IN" in html[html.index('class="wb-header'):][:6000]


def test_pos_interp_results_and_claim_check(reports):
    info = reports["pos_interp"]
    res = json.loads((info.run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["device"] == "cpu"
    assert set(res["tables"]) == {"table_fidelity", "effects", "interp_speed", "tower_speed", "embedding_fidelity",
                                  "claim_check"}
    claims = {c["claim"]: c["verdict"] for c in res["tables"]["claim_check"]}
    assert any(v.startswith("not measured: TTFT") for v in claims.values())
    assert any("not measured at 1024 px" in v for v in claims.values())  # 1024 not in tower_resolutions
    assert res["not_measured"] and res["notes"] and "interp_speedup_448px" in res["headline"]
    html = (info.run_dir / "report.html").read_text()
    assert "Not measured:" in html and "Claim check" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
@pytest.mark.parametrize("name", ["triton_precision"])
def test_report_renders_in_a_headless_browser(reports, name, tmp_path):
    check_browser(reports[name], name, tmp_path)


def check_browser(info, name, tmp_path):
    """The report as a reader's browser builds it (scripts run, no network): every table there, every plotly
    figure drawn, the header first."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
           (info.run_dir / "report.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert dom.index('class="wb-header') < dom.index('class="wb-table"')
    assert _tables(dom) == TABLES[name]
    drawn = len(re.findall(r'class="plot-container plotly"', dom))
    assert drawn == len(re.findall(r'class="plotly-graph-div[ "]', dom)) == len(FIGURES[name])


def test_triton_precision_precision_and_model_check(reports):
    res = json.loads((reports["triton_precision"].run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["device"] == "cpu"
    assert res["headline"]["precision_verdict"] == "all pass (2x rule)"
    assert res["headline"]["fc1_gelu_bf16_mean_ulp_triton"] < res["headline"]["fc1_gelu_bf16_mean_ulp_eager"]
    assert all(r["worst_grad_max_abs_diff"] < 1e-4 and r["grads_nonzero"] == r["grads"]
               for r in res["tables"]["model_check"])


def _shape(results: dict) -> dict:
    return {"keys": sorted(results), "headline": sorted(results.get("headline") or {}),
            "tables": {name: sorted({k for row in rows for k in row})
                       for name, rows in sorted((results.get("tables") or {}).items())}}


@pytest.mark.parametrize("name", HERE)
def test_results_keep_their_shape(reports, name):
    """The results.json keys, headline keys, table names and columns of each notebook's run are those the
    code recorded before the consolidation (tests/data/results_shape.json): structure changed, results not."""
    check_shape(reports[name], name)


def check_shape(info, name):
    before = json.loads((ROOT / "tests" / "data" / "results_shape.json").read_text())[name]
    now = _shape(json.loads((info.run_dir / "results.json").read_text()))
    assert now == before

