"""The notebooks as users run them: through the runner, through plain papermill, and with bad parameters
(plain papermill from the repository root and from notebooks/, with run.json and `workbook report`, is in
test_adhoc.py). nbmake runs every notebook with its defaults as well
(``--nbmake`` over notebooks/, see pyproject.toml), which is how JupyterLab runs them: cwd = notebooks/.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from workbook import runner
from workbook.params import notebook_files
from workbook.paths import repo_root

ROOT = repo_root()
PAPERMILL = [sys.executable, "-m", "papermill", "--no-progress-bar"]
CHEAP = {"resolutions": "[224, 448]", "tower_resolutions": "[224, 448]",
         "implementations": "[hf_bicubic, bilinear, gather4]", "iterations": "1", "warmup": "0"}


def _papermill(args, cwd, tmp_path, env_extra=None):
    import os

    env = dict(os.environ, WORKBOOK_OUTPUTS=str(tmp_path / "outputs"), **(env_extra or {}))
    return subprocess.run(PAPERMILL + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def _p(params: dict) -> list[str]:
    return [x for k, v in params.items() for x in ("-p", k, v)]


def _bad(notebook: str, base: dict, cases: list) -> list:
    """One notebook's bad-parameter cases, ``(param, value, expected text[, other params])``, as pytest
    params of :func:`test_bad_parameter_stops_in_the_first_cell` (the base parameters keep each run cheap)."""
    out = []
    for param, value, expected, *extra in cases:
        params = {**base, **(extra[0] if extra else {}), param: value}
        ident = re.sub(r"[^\w.=-]+", "_", f"{notebook}-{param}={value}")
        out.append(pytest.param(notebook, params, expected, id=ident))
    return out


POS_BAD = _bad("pos_interp", {}, [
    ("iteration", "5", "Parameter iteration=5 is not allowed: not a parameter of this notebook, whose parameters are"),
    ("implementations", "[hf_bicubic, bicubicc]", "Parameter implementations="),
    ("resolutions", "[10]", "each at least one patch (14 px"),
    ("resolutions", "[224.5]", "Parameter resolutions="),
    ("device", "cuda", "torch sees no CUDA GPU"),
    ("checkpoint", "/nonexistent/ckpt.pt", "Parameter checkpoint='/nonexistent/ckpt.pt' is not allowed: an existing file"),
])


def _first_cell_error(out: Path) -> dict:
    """The error output of the first cell after the parameters, checking that no later cell ran."""
    code = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    first = next(i for i, c in enumerate(code)
                 if not {"parameters", "injected-parameters"} & set(c["metadata"].get("tags", [])))
    errors = [o for o in code[first]["outputs"] if o["output_type"] == "error"]
    assert errors, "the first cell after the parameters did not fail"
    assert all(not c["outputs"] for c in code[first + 1:])  # nothing after the first cell ran
    return errors[0]


def test_failed_run_through_the_cli_has_report_and_exit_code(tmp_path):
    import os

    env = dict(os.environ, WORKBOOK_OUTPUTS=str(tmp_path / "outputs"))
    r = subprocess.run([sys.executable, "-m", "workbook.cli", "run", "pos_interp", "-p", "resolutions", "[10]"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1
    run_dir = next((tmp_path / "outputs" / "pos_interp").iterdir())
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed" and "Parameter resolutions=[10] is not allowed" in run["error"]
    html = (run_dir / "report.html").read_text()
    head = html[html.index('class="wb-header'):][:2000]
    assert "Status: FAILED" in head and "Parameter resolutions=[10]" in head


def test_every_notebook_declares_its_parameters_for_papermill():
    """papermill --help-notebook must see every parameter (a help comment with '=' hides a line from it)."""
    import papermill as pm
    from workbook.params import notebook_parameters

    for nb in notebook_files():
        ours = notebook_parameters(nb)
        theirs = pm.inspect_notebook(str(nb))
        assert set(theirs) == set(ours), nb.name
        assert all(p.help for p in ours.values()), f"{nb.name}: every parameter needs a # help comment"


def test_every_notebook_checks_its_parameters_through_its_spec_first():
    """The cell after the parameters takes them through the notebook's spec (SPEC.take: types, allowed
    values, a misspelt papermill -p name) before the experiment's configure sees them."""
    from workbook import spec

    for nb in notebook_files():
        assert spec.get(nb.stem) is not None, f"{nb.name}: declare its spec in lib/workbook/specs/{nb.stem}.py"
        cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        first = "".join(cells[1]["source"])
        assert "SPEC.take(globals())" in first and "exp.configure(P)" in first, nb.name


def test_notebooks_are_committed_without_outputs():
    for nb in notebook_files():
        cells = json.loads(Path(nb).read_text())["cells"]
        assert not any(c.get("outputs") for c in cells), f"{nb.name} has outputs; strip them"


def test_checkpoint_gives_weights_and_an_extra_table(tmp_path, monkeypatch):
    """The real loading path on a checkpoint the test writes (open_clip layout, a one-block SO400M tower)."""
    import torch
    from workbook.models import build_tower

    src = build_tower("ViT-SO400M-14-SigLIP", depth=1, seed=7)
    ckpt = tmp_path / "siglip_1block.pt"
    torch.save({"state_dict": {f"visual.trunk.{k}": v for k, v in src.model.state_dict().items()}}, ckpt)
    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(tmp_path / "outputs"))
    cli = {"checkpoint": str(ckpt), "depth": 1, "resolutions": [448], "tower_resolutions": [448],
           "implementations": ["hf_bicubic", "gather4"], "iterations": 1, "warmup": 0}
    info = runner.run("pos_interp", cli=cli)
    assert info.status == "ok", info.error
    res = json.loads((info.run_dir / "results.json").read_text())
    assert res["weights"] == "checkpoint siglip_1block.pt"
    assert {r["table"] for r in res["tables"]["table_fidelity"]} == {"random", "sincos", "checkpoint"}


# ---- siglip_neuron ---------------------------------------------------------------------------------------
TINY = {"model": "SigLIP-Tiny", "image_size": "112", "batch_sizes": "[1, 2]", "iters": "2"}


SIGLIP_BAD = _bad("siglip_neuron", TINY, [
    ("cors", "2", "Parameter cors=2 is not allowed: not a parameter of this notebook"),
    ("model", "ViT-SO400M-14-SigLIPP", "closest open_clip names: ViT-SO400M-14-SigLIP"),
    ("image_size", "100", "a multiple of the patch size (14 px"),
    ("batch_sizes", "[0]", "Parameter batch_sizes="),
    ("cores", "64", "this machine has"),
    ("backend", "cuda", "torch sees no CUDA GPU"),
    ("backend", "neuron", "the Neuron SDK is not installed"),
    ("pretrained", "/nonexistent/ckpt.pt", "a checkpoint path that exists"),
])


def test_siglip_neuron_path_through_the_standin(tmp_path, monkeypatch):
    """backend=neuron end to end with the TEST STAND-IN torch_neuronx and a fake sysfs: the report must say at
    the top that these are not Neuron figures, and label the rows neuron-standin; a second run loads the .pt."""
    import os

    root = tmp_path / "neuron_device"
    for d in (0, 1):
        mem = root / f"neuron{d}" / "neuron_core0" / "stats" / "memory_usage" / "device_mem"
        for cat, mb in (("model_code", 96), ("constants", 2), ("dma_rings", 3), ("runtime_memory", 1), ("tensors", 4)):
            (mem / cat).mkdir(parents=True)
            (mem / cat / "total").write_text(str(mb * 2**20))
            (mem / cat / "peak").write_text(str(mb * 2**20))
    standins = str(ROOT / "tests" / "standins")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [standins, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("WORKBOOK_NEURON_SYSFS", str(root))
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES", raising=False)
    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(tmp_path / "outputs"))
    cli = {"model": "SigLIP-Tiny", "image_size": 112, "backend": "auto", "modes": ["trace"], "cores": 2,
           "batch_sizes": [2], "iters": 2, "artifact_dir": str(tmp_path / "artifacts")}
    first = runner.run("siglip_neuron", cli=cli)
    assert first.status == "ok", first.error
    res = json.loads((first.run_dir / "results.json").read_text())
    assert res["backend"] == "neuron" and res["backend_info"]["standin"] is True
    assert any("TEST STAND-IN" in f for f in res["fallbacks"])
    rows = res["tables"]["runs"]
    assert {r["backend"] for r in rows} == {"neuron-standin"} and rows[0]["cache"] == "miss"
    assert rows[0]["nd0_nc0_model_code_mb"] == 96 and rows[0]["nd1_nc0_dma_rings_mb"] == 3
    html = (first.run_dir / "report.html").read_text()
    head = html[html.index('class="wb-header'):][:3000]
    assert "TEST STAND-IN" in head
    second = runner.run("siglip_neuron", cli=cli, force=True)
    rows2 = json.loads((second.run_dir / "results.json").read_text())["tables"]["runs"]
    assert rows2[0]["cache"] == "hit" and rows2[0]["compile_s"] is None


# ---- triton_precision -------------------------------------------------------------------------------------
TP_CHEAP = {"kernels": "[layernorm, linear_gelu]", "dtypes": "[float32, bfloat16]", "tokens": "16",
            "claim_shape": "[32, 24, 40]"}


BLOCK = {"kernels": "[block]"}  # the head-size rule concerns the encoder-layer case only
TRITON_BAD = _bad("triton_precision", TP_CHEAP, [
    ("kernel", "mlp", "Parameter kernel='mlp' is not allowed: not a parameter of this notebook"),
    ("kernels", "[layernorm, softmax]", "Parameter kernels="),
    ("dtypes", "[float64]", "a non-empty list of names from float32, bfloat16, float16"),
    ("hidden", "20000", "at most 16384"),
    ("heads", "5", "Parameter heads=5 is not allowed: a divisor of hidden=72",
     BLOCK),
    ("heads", "4", "head size that is a multiple of 8", BLOCK),
    ("tokens", "0", "Parameter tokens="),
    ("claim_shape", "[4, 8]", "three positive integers"),
    ("stack_config", "huge", "one of so400m, tiny"),
    ("stack_variants", "[flash]", "Parameter stack_variants="),
    ("device", "cuda", "torch sees no CUDA GPU"),
])


# ---- export_search ----------------------------------------------------------------------------------------
ES_CHEAP = {"batch_sizes": "[1]", "min_seq": "2048", "validator": "cpu"}


def test_export_search_rejects_a_model_that_is_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "vit")
    out = tmp_path / "out.ipynb"
    r = _papermill(["notebooks/export_search.ipynb", str(out)] + _p({**ES_CHEAP, "model": str(tmp_path / "vit")}),
                   ROOT, tmp_path)
    assert r.returncode != 0
    error = _first_cell_error(out)
    assert error["ename"] == "ParameterError" and "Parameter model=" in error["evalue"]


ES_BAD = _bad("export_search", ES_CHEAP, [
    ("validators", "cpu", "Parameter validators='cpu' is not allowed: not a parameter of this notebook"),
    ("validator", "neuron", "optimum-cli (optimum-neuron) is not installed"),
    ("validator", "cuda", "torch sees no CUDA GPU"),
    ("validator", "tpu", "one of auto, neuron, cuda, cpu"),
    ("total_cores", "1", "Parameter total_cores="),
    ("batch_sizes", "[0, 4]", "Parameter batch_sizes="),
    ("memory_budget_gb", "0", "a positive number of GB per device"),
    ("instance_type", "p5", "empty or one of trn1, inf2, trn2"),
    ("model", "/nonexistent/mistral", "Parameter model="),
    ("executor", "slurm", "Parameter executor='slurm' is not allowed"),
    ("address", "10.0.0.1:6379", "Parameter address='10.0.0.1:6379' is not allowed: left at its "
                                 "default unless executor is ray"),
    ("max_parallel", "-1", "Parameter max_parallel="),
])


# ---- mistral_tp -------------------------------------------------------------------------------------------
TP_TINY = {"max_tokens": "4", "backend": "cpu"}


def test_mistral_tp_neuron_path_through_the_standins(tmp_path, neuron_tree, monkeypatch):
    """With the stand-in SDKs on the path and a fake sysfs, auto picks neuron; the first line says stand-in, and
    the report (`workbook report` of the executed notebook) shows the table of Neuron paths tried."""
    import os

    root = neuron_tree
    standins = str(ROOT / "tests" / "standins")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [standins, os.environ.get("PYTHONPATH")])),
           "WORKBOOK_NEURON_SYSFS": str(root)}
    out = tmp_path / "out.ipynb"
    r = _papermill(["notebooks/mistral_tp.ipynb", str(out)] + _p({"max_tokens": "4", "backend": "auto",
                                                                  "sequence_length": "128"}), ROOT, tmp_path, env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(next((tmp_path / "outputs" / "mistral_tp").glob("adhoc-*/results.json")).read_text())
    assert res["backend"] == "neuron"
    assert "nxdi" in res["lead"] and "STAND-IN" in res["lead"]
    assert res["tables"]["paths_tried"][0]["path"] == "nxdi" and res["tables"]["paths_tried"][0]["ok"] is True
    assert res["tables"]["generations"][0]["completion_tokens"] == 4
    from workbook import adhoc_report

    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(tmp_path / "outputs"))
    html, run = adhoc_report.make_report(str(out))
    text = html.read_text()
    assert run["status"] == "ok" and 'data-wb-table="Neuron paths tried"' in text
    assert "STAND-IN" in text[text.index('class="wb-header'):][:3000]


MISTRAL_BAD = _bad("mistral_tp", TP_TINY, [
    ("tp", "2", "Parameter tp=2 is not allowed: not a parameter of this notebook"),
    ("tp_degree", "3", "a divisor of the model's 8 attention heads"),
    ("prompts", "[a, b]", "Parameter batch_size=1 is not allowed: at least the number of prompts (2)"),
    ("batch_size", "0", "Parameter batch_size="),
    ("sequence_length", "100000", "at most the model's 4096 positions"),
    ("top_p", "0", "a number in (0, 1]"),
    ("dtype", "float64", "one of float32, float16, bfloat16"),
    ("backend", "neuron", "no Neuron path can run"),
    ("backend", "cuda", "torch sees no CUDA GPU"),
    ("model", "/nonexistent/mistral", "Parameter model="),
    ("tp_mechanism", "megatron", "one of parallelize_module, local_shards, tp_plan, auto"),
    ("allreduce", "symm_mem", "nccl here: symm_mem needs backend cuda, compile True and tp_degree > 1"),
    ("allow_fallback", "maybe", "Parameter allow_fallback='maybe' is not allowed: true or false."),
])


def test_mistral_tp_config_only_shape_is_refused_where_it_does_not_fit(tmp_path):
    """mistral-7b-shape writes only a config; on this machine tp 2 over 2 CPU cores must be refused by the memory
    rule or accepted with a per-rank estimate, never silently shrunk."""
    from workbook.models import mistral

    p = mistral.create_config_only(tmp_path / "m", seed=1)
    assert mistral.random_init_seed(p) == 1 and not list(p.glob("*.safetensors"))
    out = tmp_path / "out.ipynb"
    r = _papermill(["notebooks/mistral_tp.ipynb", str(out)] + _p({**TP_TINY, "model": str(p), "compile": "True"}),
                   ROOT, tmp_path)
    assert r.returncode != 0
    error = _first_cell_error(out)
    assert error["ename"] == "ParameterError" and "Parameter compile=True" in error["evalue"]


SERVING_BAD = _bad("serving", {}, [
    ("rates", "[2]", "Parameter rates='[2]' is not allowed: not a parameter of this notebook"),
    ("request_rates", "[0]", "is not allowed: a non-empty list of positive requests/s."),
    ("request_rates", "[]", "is not allowed: a non-empty list of positive requests/s."),
    ("slo_ms", "{'latency': 100}", "is not allowed: a dict of ttft, tpot and/or e2el to positive ms."),
    ("slo_ms", "{'ttft': -1}", "is not allowed: a dict of ttft, tpot and/or e2el to positive ms."),
    ("ab_interps", "[gather4, gather4]", "two different implementations, A and B"),
    ("ab_interps", "[nearest, gather4]", "Parameter ab_interps="),
    ("ab_sizes", "[8]", "sizes of at least one patch (14 px)"),
    ("ab_sizes", "[1024]", "fit the model's 4096 positions (the largest needs 5425)"),
    ("context", "50", "at least prompt_tokens + output_tokens (96)"),
    ("context", "100000", "at most the model's 4096 positions"),
    ("compile", "True", "False unless the backend is cuda"),
    ("tp_degree", "3", "a degree that splits this model's heads and MLP: 1, 2, 4"),
    ("backend", "cuda", "torch sees no CUDA GPU"),
    ("backend", "neuron", "Parameter backend='neuron' is not allowed: one of auto, cuda, cpu"),
    ("model", "/nonexistent/mistral", "Parameter model="),
    ("url", "http://127.0.0.1:9", "an OpenAI-compatible server answering GET /v1/models"),
])
ALL_BAD = POS_BAD + SIGLIP_BAD + TRITON_BAD + ES_BAD + MISTRAL_BAD + SERVING_BAD
# Through plain papermill, end to end, one case per notebook: a misspelt name (only a kernel has papermill's injected
# cell to read it from). Every other case runs the first cell's checks in this process with the values papermill
# would inject (its own type resolution of `-p` text): the same code, without a kernel start per case.
THROUGH_PAPERMILL = {"pos_interp-iteration=5", "siglip_neuron-cors=2", "triton_precision-kernel=mlp",
                     "export_search-validators=cpu", "mistral_tp-tp=2", "serving-rates=_2_"}


@pytest.mark.parametrize("notebook,params,expected", [c for c in ALL_BAD if c.id in THROUGH_PAPERMILL])
def test_bad_parameter_stops_in_the_first_cell(notebook, params, expected, tmp_path):
    """Plain papermill with one bad parameter: a non-zero exit, one ParameterError (or BackendUnavailable, its
    subclass for a backend that cannot run here) in the first cell naming it, no later cell run, no run recorded."""
    out = tmp_path / "out.ipynb"
    r = _papermill([f"notebooks/{notebook}.ipynb", str(out)] + _p(params), ROOT, tmp_path)
    assert r.returncode != 0
    error = _first_cell_error(out)
    assert error["ename"] in ("ParameterError", "BackendUnavailable") and expected in error["evalue"], error
    assert not (tmp_path / "outputs" / notebook).exists()  # no run was recorded (a default model may be cached)


def test_every_notebook_has_a_bad_parameter_case_through_papermill():
    assert {c.values[0] for c in ALL_BAD if c.id in THROUGH_PAPERMILL} == {
        nb.stem for nb in notebook_files()}


@pytest.mark.parametrize("notebook,params,expected", [c for c in ALL_BAD if c.id not in THROUGH_PAPERMILL])
def test_bad_parameter_is_refused_by_the_first_cell_checks(notebook, params, expected, monkeypatch, tmp_path):
    """The first cell's checks (the experiment's configure, then its model build where the cell does one) with
    the notebook's defaults and this case's values as papermill injects them: one sentence naming the value."""
    import importlib

    from papermill.cli import _resolve_type
    from workbook.errors import ParameterError
    from workbook.params import notebook_parameters

    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(tmp_path / "outputs"))
    kwargs = {n: p.default for n, p in notebook_parameters(ROOT / "notebooks" / f"{notebook}.ipynb").items()}
    kwargs.update({k: _resolve_type(v) for k, v in params.items()})
    exp = importlib.import_module(f"workbook.experiments.{notebook}")
    with pytest.raises(ParameterError) as err:  # BackendUnavailable is a ParameterError
        from workbook import spec

        cfg = exp.configure(spec.get(notebook).check(kwargs))
        if hasattr(exp, "build"):
            exp.build(cfg)
    assert expected in str(err.value)
    assert not (tmp_path / "outputs" / notebook).exists()
