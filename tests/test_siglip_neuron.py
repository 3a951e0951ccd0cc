"""The siglip_neuron experiment on the CPU: every bad parameter is one clear sentence from the spec
or configure(), and the whole flow (build, CPU reference, runs, report tables) works end to end on
the tiny config.

SigLIP-Tiny (2 blocks, width 64, patch 14, 112 px) builds in milliseconds, so nothing here builds a
real SigLIP size or reaches a model hub. Only eager runs happen here (torch.compile is covered,
once, in test_backends.py), so the file runs in seconds.
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from workbook.backends.cpu import CPUBackend
from workbook.errors import ParameterError
from workbook.experiments import siglip_neuron as exp
from workbook.experiments import siglip_rows
from workbook.params import notebook_parameters
from workbook.proc import usable_cpus
from workbook.record import Recorder
from workbook.specs.siglip_neuron import SPEC

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "siglip_neuron.ipynb"
THREADS = usable_cpus()
HAS_CUDA = torch.cuda.is_available()
_ROOT: dict[str, Path] = {}


@pytest.fixture(autouse=True, scope="module")
def _artifact_root(tmp_path_factory):
    _ROOT["dir"] = tmp_path_factory.mktemp("siglip-artifacts")
    yield
    _ROOT.clear()


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def defaults(**kw) -> dict:
    """The parameters as a notebook run gives them: the spec's defaults, on the tiny config and the
    CPU."""
    p = dict(SPEC.defaults())
    p.update(model="SigLIP-Tiny", image_size=112, backend="cpu", batch_sizes=[1, 2],
             cores=min(p["cores"], THREADS), artifact_dir=str(_ROOT["dir"] / "artifacts"))
    p.update(kw)
    return p


def config(**kw) -> exp.Config:
    """The first cell's checks: the spec's (SPEC.take), then configure's."""
    return exp.configure(SPEC.check(defaults(**kw)))


def bad(**kw) -> str:
    with pytest.raises(ParameterError) as e:
        config(**kw)
    return str(e.value)


# --- the defaults and a good configuration --------------------------------------------------------


def test_notebook_parameters_are_the_spec_and_configure_takes_them_checked():
    assert list(notebook_parameters(NOTEBOOK)) == list(SPEC.params)
    assert list(inspect.signature(exp.configure).parameters) == ["p"]


def test_configure_defaults_on_the_tiny_config():
    cfg = config()
    assert isinstance(cfg.backend, CPUBackend) and cfg.target.name == "cpu"
    assert cfg.target.reason.startswith("requested")
    assert cfg.p.model == "SigLIP-Tiny" and cfg.p.image_size == 112 and cfg.weights == {}
    assert cfg.modes == ["eager"] and cfg.dtypes == ["float32"] and cfg.batch_sizes == [1, 2]
    assert cfg.steps == [("eager", "float32", 1), ("eager", "float32", 2)]
    assert cfg.artifact_dir == _ROOT["dir"] / "artifacts"
    assert cfg.options == {"compiler_args": ["--model-type", "transformer"], "auto_cast": "matmult",
                           "auto_cast_type": "bf16"}
    assert any("small test configuration" in n for n in cfg.notes)


def test_steps_are_modes_times_dtypes_times_batches_without_duplicates():
    cfg = config(modes=["eager", "compile"], dtypes=["float32", "bfloat16"], batch_sizes=[2, 1, 2])
    assert cfg.batch_sizes == [2, 1]
    assert cfg.steps == [(m, d, b) for m in ("eager", "compile") for d in ("float32", "bfloat16")
                         for b in (2, 1)]


def test_empty_artifact_dir_means_the_default():
    from workbook import artifacts

    assert config(artifact_dir="").artifact_dir == artifacts.default_dir()


# --- bad input: one clear sentence (parameter, value, what is allowed) ----------------------------


def test_unknown_model_lists_the_closest_names():
    msg = bad(model="ViT-SO400M-14-SigLIPP")
    assert "model='ViT-SO400M-14-SigLIPP'" in msg
    assert "closest open_clip names:" in msg
    assert "ViT-SO400M-14-SigLIP," in msg or msg.rstrip(".").endswith("ViT-SO400M-14-SigLIP")


def test_image_size_not_a_multiple_of_the_patch_suggests_neighbours():
    msg = bad(image_size=100)
    assert "image_size=100" in msg
    assert "multiple of the patch size (14 px for SigLIP-Tiny)" in msg
    assert "98 or 112" in msg


def test_image_size_below_one_patch():
    msg = bad(image_size=7)
    assert "image_size=7" in msg
    assert "multiple of the patch size (14 px for SigLIP-Tiny), e.g. 14" in msg


@pytest.mark.parametrize("size", [0, -14, True])
def test_image_size_not_a_positive_integer(size):
    msg = bad(image_size=size)
    assert f"image_size={size!r}" in msg and "a multiple of the model's patch size" in msg


@pytest.mark.parametrize("batches", [[0], [-1], ["a"], [], [1, 0], [True], [1.5]])
def test_bad_batch_sizes(batches):
    msg = bad(batch_sizes=batches)
    assert f"batch_sizes={batches!r}" in msg
    assert "a non-empty list of integers of at least 1" in msg


def test_batch_sizes_from_the_command_line_text():
    assert config(batch_sizes="1, 4").batch_sizes == [1, 4]
    assert config(batch_sizes="[2]").batch_sizes == [2]


def test_cores_more_than_the_machine_has_says_how_many():
    msg = bad(cores=99)
    assert "cores=99" in msg
    assert f"1 to {THREADS}: this machine has {THREADS} CPU threads" in msg


def test_cores_zero():
    assert "cores=0 is not allowed: an integer of at least 1" in bad(cores=0)


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU behaviour; torch sees a CUDA GPU here")
def test_cuda_requested_without_a_gpu():
    msg = bad(backend="cuda")
    assert "backend='cuda'" in msg
    assert "torch sees no CUDA GPU" in msg and "install a CUDA build of torch" in msg


def test_neuron_requested_without_the_sdk():
    from workbook.backends.neuron import probe

    ok, why = probe()
    if ok:
        pytest.skip("a Neuron SDK with NeuronCores is visible here")
    msg = bad(backend="neuron")
    assert "backend='neuron'" in msg and why in msg


def test_unknown_backend():
    msg = bad(backend="tpu")
    assert "backend='tpu'" in msg and "one of auto, cpu, cuda, neuron" in msg


def test_dtype_the_cpu_lacks():
    msg = bad(dtypes=["float16"])
    assert "dtypes=['float16']" in msg and "dtypes of the cpu backend: float32, bfloat16" in msg
    assert "dtypes of the cpu backend" in bad(dtypes=["float32", "tfloat32"])


def test_dtype_nobody_has():
    msg = bad(dtypes=["float64"])
    assert "dtypes=['float64']" in msg and "from float32, tfloat32, bfloat16, float16" in msg


def test_mode_the_cpu_lacks():
    msg = bad(modes=["compile-cudagraphs"])
    assert "modes=['compile-cudagraphs']" in msg
    assert "modes of the cpu backend: eager, compile" in msg
    assert "a non-empty list of names from auto, eager, compile" in bad(modes=[])


def test_tolerances_missing_a_dtype():
    msg = bad(dtypes=["float32", "bfloat16"], tolerances={"float32": 1e-4})
    assert "tolerances={'float32': 0.0001}" in msg
    assert "for every dtype that runs: float32, bfloat16" in msg


def test_tolerances_as_yaml_text_are_accepted():
    cfg = config(dtypes=["float32", "bfloat16"], tolerances="{float32: 1.0e-4, bfloat16: 2e-2}")
    assert cfg.tolerances == {"float32": 1e-4, "bfloat16": 2e-2}  # YAML 1.1 reads 2e-2 as text


def test_tolerances_for_a_dtype_that_does_not_exist():
    msg = bad(tolerances={"float32": 1e-4, "bfloat61": 1e-2})
    assert msg.startswith("Parameter tolerances=") and "a mapping from dtypes (float32, " in msg


def test_negative_tolerance():
    assert "numbers of at least 0" in bad(tolerances={"float32": -1e-4})


def test_tolerances_not_a_mapping():
    assert "tolerances=[0.1]" in bad(tolerances=[0.1])


def test_malformed_tolerances_text_is_a_parameter_error():
    assert "tolerances=" in bad(tolerances="{float32: [")


def test_non_numeric_tolerance_is_a_parameter_error():
    assert "tolerances=" in bad(tolerances={"float32": "abc"})


def test_runs_dtype_without_a_tolerance_is_a_parameter_error():
    msg = bad(runs=["eager:bfloat16:1"], dtypes=["float32"], tolerances={"float32": 1e-4})
    assert "tolerances=" in msg


def test_checkpoint_path_that_does_not_exist():
    msg = bad(pretrained="/no/such/ckpt.pt")
    assert "pretrained='/no/such/ckpt.pt'" in msg and "a checkpoint path that exists" in msg


def test_images_folder_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "nope")
    msg = bad(images=missing)
    assert f"images={missing!r}" in msg and "a folder holding images" in msg


@pytest.mark.parametrize("kw, text", [
    (dict(warmup=-1), "warmup=-1 is not allowed: an integer of at least 0"),
    (dict(iters=0), "iters=0 is not allowed: an integer of at least 1"),
    (dict(cpu_reference_max_batch=-1),
     "cpu_reference_max_batch=-1 is not allowed: an integer of at least 0"),
    (dict(auto_cast="some"), "auto_cast='some' is not allowed: one of none, matmult, all"),
    (dict(auto_cast_type="int3"),
     "auto_cast_type='int3' is not allowed: one of bf16, fp16, tf32, fp8_e4m3"),
    (dict(seed=-1), "seed=-1 is not allowed: an integer from 0 to 4294967295"),
    (dict(seed="abc"), "seed='abc' is not allowed: an integer from 0 to 4294967295"),
])
def test_other_bad_numbers_and_choices(kw, text):
    assert text in bad(**kw)


def test_artifact_dir_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    f = tmp_path / "cache.txt"
    f.write_text("not a folder")
    msg = bad(artifact_dir=str(f))
    assert msg == (f"Parameter artifact_dir={str(f)!r} is not allowed: a folder, or empty for the "
                   "default (it is a file).")


def test_auto_cast_flags_in_compiler_args_are_not_merged_with_the_parameters():
    """Off Neuron the options are only carried; --auto-cast in compiler_args drops the two
    parameters, never both."""
    cfg = config(compiler_args="--model-type transformer --auto-cast none")
    assert cfg.options == {"compiler_args": ["--model-type", "transformer", "--auto-cast", "none"]}
    assert not any("--auto-cast" in n for n in cfg.notes)  # a note of the neuron backend only
    cfg = config()
    assert cfg.options == {"compiler_args": ["--model-type", "transformer"], "auto_cast": "matmult",
                           "auto_cast_type": "bf16"}


# --- runs: explicit mode:dtype:batch triples ------------------------------------------------------


def test_runs_accepted():
    cfg = config(runs=["eager:float32:1"])
    assert cfg.steps == [("eager", "float32", 1)] and cfg.batch_sizes == [1]
    assert cfg.dtypes == ["float32"]
    cfg = config(runs="eager:bfloat16:2,compile:float32:1")  # as text from the command line
    assert cfg.steps == [("eager", "bfloat16", 2), ("compile", "float32", 1)]
    assert cfg.batch_sizes == [2, 1] and cfg.dtypes == ["bfloat16", "float32"]


def test_runs_override_modes_the_backend_lacks():
    """runs replaces modes x dtypes x batch_sizes, so modes it replaces are not checked."""
    assert config(modes=["trace"], runs=["eager:float32:1"]).steps == [("eager", "float32", 1)]


@pytest.mark.parametrize("runs", [["nope:float32:1"], ["eager:float32:0"], ["eager:float64:1"],
                                  ["eager:float32"], ["eager:float32:x"], ["eager:float16:1"],
                                  ["compile-cudagraphs:float32:1"]])
def test_runs_rejected(runs):
    msg = bad(runs=runs)
    assert f"runs={runs!r}" in msg
    assert "mode:dtype:batch triples with modes eager, compile and dtypes float32, bfloat16" in msg


# --- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_of_another_model_fails_in_build(tmp_path):
    from workbook.models import build_tower

    other = build_tower("SigLIP-Tiny", overrides=dict(embed_dim=32))
    path = tmp_path / "other.pt"
    torch.save(other.model.state_dict(), path)
    cfg = config(pretrained=str(path))  # the file exists: configure cannot tell yet
    assert cfg.weights == {"checkpoint": str(path)}
    with pytest.raises(ParameterError) as e:
        exp.build(cfg)
    msg = str(e.value)
    assert f"pretrained={str(path)!r}" in msg  # the notebook's parameter, not build_tower's
    assert "a checkpoint of SigLIP-Tiny" in msg and "of another shape" in msg


def test_unreadable_checkpoint_fails_in_build(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ParameterError) as e:
        exp.build(config(pretrained=str(path)))
    assert f"pretrained={str(path)!r}" in str(e.value) and "can be read" in str(e.value)


def test_checkpoint_that_fits_is_loaded(tmp_path):
    from workbook import artifacts
    from workbook.models import build_tower

    src = build_tower("SigLIP-Tiny", seed=7)
    path = tmp_path / "tiny-open-clip.pt"
    state = {"visual.trunk." + k: v for k, v in src.model.state_dict().items()}
    torch.save({"state_dict": state}, path)
    cfg = config(pretrained=str(path))
    tower = exp.build(cfg)
    assert tower.weights == "checkpoint tiny-open-clip.pt"
    assert artifacts.weights_digest(tower.model) == artifacts.weights_digest(src.model)
    seeded = exp.build(config())  # the same config without the checkpoint: seed 0 weights
    assert artifacts.weights_digest(seeded.model) != artifacts.weights_digest(src.model)
    x = exp.inputs(cfg, 2)
    with torch.inference_mode():
        torch.testing.assert_close(tower.model(x), src.model(x), rtol=0, atol=0)


# --- inputs ---------------------------------------------------------------------------------------


def test_seeded_inputs_are_reproducible_and_in_range():
    cfg = config()
    a, b = exp.inputs(cfg, 3), exp.inputs(cfg, 3)
    assert a.shape == (3, 3, 112, 112) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.3
    assert not torch.equal(exp.inputs(config(seed=1), 3), a)


def write_images(folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a_red.png")
    Image.new("RGB", (20, 50), (0, 0, 255)).save(folder / "b_blue.PNG")
    grad = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    grad.save(folder / "c_grad.png")
    (folder / "notes.txt").write_text("not an image")


def test_images_folder_gives_normalised_tensors_repeated_to_fill(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder)
    cfg = config(images=str(folder))
    x = exp.inputs(cfg, 5)
    assert x.shape == (5, 3, 112, 112) and x.dtype == torch.float32
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    red, blue, grad = x[0], x[1], x[2]  # sorted by name; the text file is ignored
    torch.testing.assert_close(red[0], torch.ones(112, 112))
    torch.testing.assert_close(red[1:], -torch.ones(2, 112, 112))
    torch.testing.assert_close(blue[2], torch.ones(112, 112))
    torch.testing.assert_close(blue[:2], -torch.ones(2, 112, 112))
    assert grad.min() < -0.8 and grad.max() > 0.8  # a gradient spans the range (mean=std=0.5)
    assert torch.equal(x[3], x[0]) and torch.equal(x[4], x[1])  # 3 images repeated to fill 5
    assert torch.equal(exp.inputs(cfg, 2), x[:2])


def test_images_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures")
    with pytest.raises(ParameterError) as e:  # refused in the first cell, before anything runs
        config(images=str(tmp_path / "empty"))
    assert "images=" in str(e.value) and "jpg/png/webp" in str(e.value)


# --- end to end on the CPU ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """The notebook's cells in order, on SigLIP-Tiny: eager float32 and bfloat16, batch 1 and 2."""
    run_dir = tmp_path_factory.mktemp("siglip-run")
    threads = torch.get_num_threads()
    cfg = config(modes=["eager"], dtypes=["float32", "bfloat16"])
    tower = exp.build(cfg)
    rec = Recorder("siglip_neuron", {}, run_dir=run_dir)
    exp.start_record(cfg, tower, rec)
    described = exp.describe(cfg, tower)
    pool = exp.inputs(cfg, exp.ACCURACY_IMAGES)
    ref, cpu_rows = exp.cpu_reference(cfg, tower, pool, rec)
    rows = exp.run_matrix(cfg, tower, pool, ref, cpu_rows, rec)  # records the headline too
    summ = exp.summary(rows, cpu_rows)
    hist = exp.histogram_rows(rec.table("error_histogram"))
    mem = exp.memory_rows(rows)
    rec.finish()
    torch.set_num_threads(threads)
    return dict(cfg=cfg, tower=tower, rec=rec, described=described, pool=pool, ref=ref,
                cpu_rows=cpu_rows, rows=rows, summary=summ, hist=hist, mem=mem, run_dir=run_dir)


def test_e2e_record_states_backend_model_and_weights(e2e):
    data = json.loads((e2e["run_dir"] / "results.json").read_text())
    assert data["status"] == "complete"
    assert data["backend"] == "cpu" and data["backend_reason"].startswith("requested")
    assert data["backend_info"]["threads_available"] == THREADS
    assert data["model"] == "SigLIP-Tiny" and data["timm_model"] == "vit_so400m_patch14_siglip_224"
    assert data["weights"] == "seeded random (seed=0)" and data["image_size"] == 112
    assert data["tower_params"] == e2e["tower"].params > 0
    assert data["fallbacks"] == []
    assert any("Seeded random weights" in n for n in data["notes"])
    assert any("small test configuration" in n for n in data["notes"])
    assert any("Neuron" in m["what"] and "cpu" in m["why"] for m in data["not_measured"])
    assert len(data["tables"]["runs"]) == 4 and len(data["tables"]["cpu_reference"]) == 2


def test_e2e_describe(e2e):
    d = {r["parameter"]: r["value"] for r in e2e["described"]}
    assert d["backend"].startswith("cpu (requested")
    assert "SigLIP-Tiny → vit_so400m_patch14_siglip_224" in d["model"] and "112 px" in d["model"]
    assert d["runs (mode:dtype:batch)"] == ("eager:float32:1, eager:float32:2, eager:bfloat16:1, "
                                            "eager:bfloat16:2")
    assert d["cores"] == f"{e2e['cfg'].p.cores} CPU threads"
    assert d["batch sizes"] == "1, 2" and d["warm-up / timed iterations"] == "1 / 3"


def test_e2e_cpu_reference(e2e):
    ref, cpu_rows, pool = e2e["ref"], e2e["cpu_rows"], e2e["pool"]
    assert pool.shape == (exp.ACCURACY_IMAGES, 3, 112, 112)
    assert ref.shape == (exp.ACCURACY_IMAGES, 64) and ref.dtype == torch.float32  # pooled, width 64
    assert torch.isfinite(ref).all() and ref.abs().max() > 0
    assert [r["batch"] for r in cpu_rows] == [1, 2]  # both are ≤ cpu_reference_max_batch (8)
    for r in cpu_rows:
        assert (r["backend"], r["mode"], r["dtype"]) == ("cpu", "eager", "float32")
        assert r["threads"] == THREADS
        assert r["latency_median_ms"] > 0
        assert r["ms_per_image"] == pytest.approx(r["latency_median_ms"] / r["batch"])
        assert r["throughput_img_s"] == pytest.approx(1e3 / r["ms_per_image"])


def test_e2e_runs_float32_matches_and_bfloat16_differs(e2e):
    rows = e2e["rows"]
    assert [(r["mode"], r["dtype"], r["batch"]) for r in rows] == [
        ("eager", "float32", 1), ("eager", "float32", 2), ("eager", "bfloat16", 1),
        ("eager", "bfloat16", 2)]
    for r in rows:
        assert r["backend"] == "cpu" and r["cache"] == "none" and r["compile_s"] is None
        assert r["first_inference_s"] > 0 and r["latency_median_ms"] > 0
        assert r["speedup_vs_cpu_same_batch"] is not None and r["speedup_vs_cpu_same_batch"] > 0
        assert r["speedup_vs_cpu_best"] > 0
        assert r["host_peak_rss_mb"] > 0 and r["host_rss_mb"] > 0
        assert r["tolerance_rel_l2"] == e2e["cfg"].tolerances[r["dtype"]]
        assert r["accuracy_pass"] is True
        assert r["cosine_min"] > 0.99
    f32 = [r for r in rows if r["dtype"] == "float32"]
    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    for r in f32:
        assert r["max_abs_diff"] < 1e-5 and r["rel_l2_err"] <= 1e-4
    for r in bf16:
        assert r["max_abs_diff"] > 0 and 1e-5 < r["rel_l2_err"] <= 2e-2
        assert r["max_abs_diff"] > max(x["max_abs_diff"] for x in f32)


def test_e2e_error_histogram(e2e):
    table = e2e["rec"].table("error_histogram")
    assert [(h["dtype"], h["batch"]) for h in table] == [("float32", 1), ("float32", 2),
                                                         ("bfloat16", 1), ("bfloat16", 2)]
    for h, r in zip(table, e2e["rows"]):
        n = min(exp.ACCURACY_IMAGES, r["batch"]) * 64
        assert h["zero_count"] + sum(h["counts"]) == n  # every element in exactly one bin
        assert len(h["counts"]) == len(h["bin_upper_edges"]) == len(exp.HIST_EDGES) + 1
    hist = e2e["hist"]
    assert hist and {h["configuration"] for h in hist} >= {"eager bfloat16 b1", "eager bfloat16 b2"}
    for h in hist:
        assert h["count"] > 0 and math.isfinite(h["abs_diff_upper"])
        assert 0 < h["abs_diff_upper"] <= 1
    assert max(h["abs_diff_upper"] for h in hist if "bfloat16" in h["configuration"]) >= 1e-4


def test_e2e_summary(e2e):
    s = e2e["summary"]
    assert len(s) == 2 + 4
    assert [r["accuracy"] for r in s[:2]] == ["reference", "reference"]
    assert s[0]["configuration"] == f"cpu eager float32 ×{THREADS} threads, batch 1"
    assert s[0]["speedup_vs_cpu"] == 1.0
    cores = e2e["cfg"].p.cores
    assert s[2]["configuration"] == f"cpu eager float32 ×{cores}, batch 1 (cache none)"
    assert s[5]["configuration"] == f"cpu eager bfloat16 ×{cores}, batch 2 (cache none)"
    assert s[2]["accuracy"] == "pass (rel L2 ≤ 0.0001)"
    assert s[4]["accuracy"] == "pass (rel L2 ≤ 0.02)"
    for line in s[2:]:
        assert line["speedup_vs_cpu"] > 0 and line["latency_ms_p50"] > 0


def test_e2e_headline(e2e):
    head = e2e["rec"].data["headline"]
    rows = e2e["rows"]
    assert head["all_accuracy_pass"] is True
    assert head["best_throughput_img_s"] == max(r["throughput_img_s"] for r in rows)
    best = max(rows, key=lambda r: r["throughput_img_s"])
    assert head["best_throughput_config"] == f"eager {best['dtype']} b{best['batch']}"
    b1 = [r["latency_median_ms"] for r in rows if r["batch"] == 1]
    assert head["best_b1_latency_ms"] == min(b1)
    assert head["best_b1_config"] in ("eager float32", "eager bfloat16")


def test_e2e_memory_rows(e2e):
    mem = e2e["mem"]
    assert len(mem) == 4
    for m in mem:
        assert set(m) == {"mode", "dtype", "batch", "host_rss_mb", "host_peak_rss_mb"}
        assert m["host_rss_mb"] > 0 and m["host_peak_rss_mb"] > 0


def test_headline_without_rows_records_nothing(tmp_path):
    rec = Recorder("siglip_neuron", {}, run_dir=tmp_path)
    exp.headline([], rec)
    assert rec.data["headline"] == {}


def test_no_cpu_timing_when_every_batch_is_above_the_limit(tmp_path):
    cfg = config(batch_sizes=[2], cpu_reference_max_batch=1, warmup=0, iters=1)
    tower = exp.build(cfg)
    rec = Recorder("siglip_neuron", {}, run_dir=tmp_path)
    pool = exp.inputs(cfg, exp.ACCURACY_IMAGES)
    ref, cpu_rows = exp.cpu_reference(cfg, tower, pool, rec)
    assert cpu_rows == [] and ref.shape[0] == exp.ACCURACY_IMAGES
    assert any("No CPU timing" in n for n in rec.data["notes"])
    rows = exp.run_matrix(cfg, tower, pool, ref, cpu_rows, rec)
    assert len(rows) == 1
    assert rows[0]["speedup_vs_cpu_same_batch"] is None and rows[0]["speedup_vs_cpu_best"] is None
    assert rows[0]["accuracy_pass"] is True
    assert exp.summary(rows, cpu_rows)[0]["speedup_vs_cpu"] is None


def test_float32_after_bfloat16_still_matches(tmp_path):
    cfg = config(runs=["eager:bfloat16:1", "eager:float32:1"], warmup=0, iters=1)
    tower = exp.build(cfg)
    rec = Recorder("siglip_neuron", {}, run_dir=tmp_path)
    pool = exp.inputs(cfg, exp.ACCURACY_IMAGES)
    ref, cpu_rows = exp.cpu_reference(cfg, tower, pool, rec)
    rows = exp.run_matrix(cfg, tower, pool, ref, cpu_rows, rec)
    assert rows[1]["dtype"] == "float32"
    assert rows[1]["accuracy_pass"], rows[1]["rel_l2_err"]


# --- helpers --------------------------------------------------------------------------------------


def test_error_histogram_bins():
    ref = torch.zeros(1, 6, dtype=torch.float32)
    # each nonzero |difference| in a bin of its own
    out = torch.tensor([[0.0, 0.0, 1.5e-3, -2.5e-3, 0.5, 3.0]])
    h = exp.error_histogram(out, ref)
    assert h["zero_count"] == 2 and sum(h["counts"]) == 4
    edges = h["bin_upper_edges"]
    assert edges[-1] == float("inf") and edges[:-1] == exp.HIST_EDGES
    want = [0] * len(edges)
    for v in out.double().abs().flatten().tolist():
        if v:
            i = next(i for i, e in enumerate(edges) if e >= v)  # the first bin whose edge holds v
            assert i == 0 or edges[i - 1] < v
            want[i] += 1
    assert h["counts"] == want
    assert h["counts"][-1] == 1  # |3.0| > 1: the open-ended last bin


def test_flat_memory_spreads_neuron_cores_into_columns():
    mem = {"host_peak_rss_mb": 10.0, "neuron_cores": [
        {"core": "nd0:nc0", "total_mb": 5.0, "peak_mb": 6, "kind": "text"},
        {"core": "nd0:nc1", "total_mb": 7.0}]}
    assert siglip_rows.flat_memory(mem) == {"host_peak_rss_mb": 10.0, "nd0_nc0_total_mb": 5.0,
                                            "nd0_nc0_peak_mb": 6, "nd0_nc1_total_mb": 7.0}
    flat = siglip_rows.flat_memory({"cuda0_peak_allocated_mb": 1.0})
    assert flat == {"cuda0_peak_allocated_mb": 1.0}


def test_resumed_matrix_takes_finished_configurations(tmp_path, monkeypatch):
    from workbook import record

    cfg = config(runs=["eager:float32:1", "eager:bfloat16:1"], warmup=0, iters=1)
    tower = exp.build(cfg)
    pool = exp.inputs(cfg, exp.ACCURACY_IMAGES)
    first = Recorder("siglip_neuron", {"n": 1}, run_dir=tmp_path / "first")
    ref, cpu_rows = exp.cpu_reference(cfg, tower, pool, first)
    cfg_first = config(runs=["eager:float32:1"], warmup=0, iters=1)  # killed after one
    measured = exp.run_matrix(cfg_first, tower, pool, ref, cpu_rows, first)

    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "first"))
    rec = Recorder("siglip_neuron", {"n": 1}, run_dir=tmp_path / "second")
    prepared = []
    real = cfg.backend.prepare
    monkeypatch.setattr(cfg.backend, "prepare",
                        lambda *a, **k: prepared.append(k["dtype"]) or real(*a, **k))
    rows = exp.run_matrix(cfg, tower, pool, ref, cpu_rows, rec)
    assert prepared == ["bfloat16"]  # the float32 configuration came from the first run
    assert rows[0]["resumed_from"] == "first"
    assert rows[0]["latency_median_ms"] == measured[0]["latency_median_ms"]
    assert "resumed_from" not in rows[1] and rows[1]["dtype"] == "bfloat16"
    hist = rec.table("error_histogram")
    assert [(h["dtype"], h.get("resumed_from")) for h in hist] == [("float32", "first"),
                                                                   ("bfloat16", None)]
    names = {r["configuration"] for r in exp.histogram_rows(hist)}
    assert names == {"eager float32 b1", "eager bfloat16 b1"}
