"""Backends (cpu, cuda) behind the one interface, and how ``auto`` and explicit requests resolve
(targets.resolve with the Neuron probe).

This machine has no GPU and no Neuron SDK: ``auto`` must land on the CPU and say why the others
were skipped, and an explicit ``cuda`` must be a clear error (what is missing, how to install it),
never a silent fallback. The CPU backend runs for real: eager, and torch.compile with the artifact
cache (one miss and one hit, compiled once each in a module fixture since a CPU compile costs
seconds). CUDA parts that need no GPU (the probe, memory without a GPU, the tf32 switch) run here;
GPU runs are marked ``gpu``.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from workbook import artifacts, targets
from workbook.backends import NAMES, Backend, BackendUnavailable, Prepared, get, neuron
from workbook.backends.cpu import CPUBackend
from workbook.backends.cuda import COMPILE_MODES, CUDABackend, set_matmul_precision
from workbook.errors import ParameterError, WorkbookError
from workbook.proc import usable_cpus

HAS_CUDA = torch.cuda.is_available()
THREADS = usable_cpus()
INDUCTOR_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE",
                 "TORCHINDUCTOR_AUTOGRAD_CACHE")
no_gpu_here = pytest.mark.skipif(HAS_CUDA,
                                 reason="checks the no-GPU behaviour; torch sees a CUDA GPU here")


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.LayerNorm(32),
                               torch.nn.Linear(32, 4)).eval()


def example(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 8, generator=torch.Generator().manual_seed(seed))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def prepare(b, model, x, *, mode, dtype, cores, cache=None):
    """``b.prepare`` without compiler options."""
    return b.prepare(model, x, mode=mode, dtype=dtype, cores=cores, options={}, cache=cache)


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --- which backend: targets.resolve with the Neuron probe, then get -------------------------------


def resolve(name: str):
    return targets.resolve(name, neuron=neuron.probe)


def test_names():
    assert NAMES == ("cpu", "cuda", "neuron")


@no_gpu_here
def test_auto_picks_the_cpu_and_says_why_neuron_and_cuda_were_skipped():
    if neuron.probe()[0]:
        pytest.skip("a Neuron SDK with NeuronCores is visible here")
    t = resolve("auto")
    assert t.name == "cpu" and isinstance(get(t.name), CPUBackend)
    reason = t.reason
    assert reason.startswith("auto: the CPU, since ")
    assert "neuron: " in reason and "cuda: " in reason
    assert reason.index("neuron: ") < reason.index("cuda: ")  # in the order auto tries them
    assert "torch_neuronx" in reason or "Neuron SDK" in reason  # what is missing for neuron
    assert "torch sees no CUDA GPU" in reason


def test_explicit_cpu_is_requested():
    t = resolve("cpu")
    assert t.name == "cpu" and t.reason == "requested" and t.devices == THREADS


@no_gpu_here
def test_explicit_cuda_without_gpu_is_a_clear_error_not_a_fallback():
    with pytest.raises(ParameterError) as e:
        resolve("cuda")
    err = e.value
    assert isinstance(err, WorkbookError) and isinstance(err, ValueError)
    msg = str(err)
    assert "backend='cuda'" in msg
    assert "torch sees no CUDA GPU" in msg  # what is missing
    assert "install a CUDA build of torch" in msg  # how to install it
    assert "\x1b[1;31mParameterError" in err._render_traceback_()[0]  # one line in a notebook


@pytest.mark.parametrize("name", ["tpu", "CPU", "", "gpu"])
def test_unknown_backend_names_raise(name):
    with pytest.raises(ParameterError) as e:
        get(name)
    assert f"backend={name!r}" in str(e.value) and "one of cpu, cuda, neuron" in str(e.value)
    with pytest.raises(ParameterError) as e:
        resolve(name)
    assert f"backend={name!r}" in str(e.value) and "one of auto, cpu, cuda, neuron" in str(e.value)


def test_get_returns_the_named_backends_without_needing_their_hardware():
    assert isinstance(get("cpu"), CPUBackend)
    cuda = get("cuda")
    assert isinstance(cuda, CUDABackend) and isinstance(cuda, Backend)
    assert cuda.clock == "cuda" and get("cpu").clock == "cpu"


def test_backend_unavailable_is_a_parameter_error():
    assert issubclass(BackendUnavailable, ParameterError)


# --- CPU backend: what it states, and no rules of its own -----------------------------------------


def test_cpu_describe():
    d = CPUBackend().describe()
    assert d["backend"] == "cpu" and d["threads_available"] == THREADS
    assert d["torch"] == torch.__version__
    assert d["hardware"]


def test_cpu_has_no_rules_of_its_own():
    steps = [(m, d, 3) for m in ("eager", "compile") for d in ("float32", "bfloat16")]
    assert CPUBackend().rules(steps=steps, cores=2, options={"compiler_args": []}) == []


@pytest.mark.parametrize("kw, text", [
    (dict(modes=["compile-cudagraphs"]), "modes of the cpu backend: eager, compile"),
    (dict(modes=["trace"]), "modes of the cpu backend: eager, compile"),
    (dict(dtypes=["float16"]), "dtypes of the cpu backend: float32, bfloat16"),
    (dict(dtypes=["tfloat32"]), "dtypes of the cpu backend: float32, bfloat16"),
])
def test_modes_and_dtypes_the_cpu_lacks_are_refused(kw, text):
    """The siglip_neuron configure checks a run's modes and dtypes against the backend's own."""
    from workbook.experiments.siglip_neuron import _matrix
    from workbook.specs.siglip_neuron import SPEC

    with pytest.raises(ParameterError, match=text):
        _matrix(SPEC.check(kw), CPUBackend())


# --- CPU backend: eager ---------------------------------------------------------------------------


def test_cpu_prepare_eager_float32_is_the_model(keep_threads, tmp_path):
    m = mlp()
    x = example(3)
    with torch.inference_mode():
        want = m(x)
    b = CPUBackend()
    prep = prepare(b, copy.deepcopy(m), x, mode="eager", dtype="float32", cores=1)
    assert isinstance(prep, Prepared)
    assert (prep.backend, prep.mode, prep.dtype) == ("cpu", "eager", "float32")
    assert (prep.batch, prep.cores) == (3, 1)
    assert prep.cache == "none" and prep.compile_s is None and prep.load_s is None
    assert prep.artifact is None
    assert torch.get_num_threads() == 1  # cores = threads
    with torch.inference_mode():
        got = b.to_output(prep.fn(b.to_input(x, "float32")))
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_cpu_prepare_eager_ignores_a_cache_entry(keep_threads, tmp_path):
    e = artifacts.entry(tmp_path, "cpu", {"model": "mlp"})
    prep = prepare(CPUBackend(), mlp(), example(), mode="eager", dtype="float32", cores=1, cache=e)
    assert prep.cache == "none" and not e.exists()  # eager has nothing to compile or store


def test_cpu_prepare_eager_bfloat16(keep_threads):
    m = mlp()
    x = example(4)
    with torch.inference_mode():
        want = m(x)
    b = CPUBackend()
    xb = b.to_input(x, "bfloat16")
    assert xb.dtype == torch.bfloat16 and xb.device.type == "cpu"
    prep = prepare(b, copy.deepcopy(m), x, mode="eager", dtype="bfloat16", cores=1)
    with torch.inference_mode():
        raw = prep.fn(xb)
    assert raw.dtype == torch.bfloat16
    got = b.to_output(raw)
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = rel_l2(got, want)
    assert 0 < err < 2e-2  # bf16 rounds, but stays within the notebook's bf16 tolerance


def test_cpu_prepare_leaves_the_callers_model_as_it_was(keep_threads):
    m = mlp()
    prepare(CPUBackend(), m, example(), mode="eager", dtype="bfloat16", cores=1)
    assert next(m.parameters()).dtype == torch.float32


def test_cpu_memory_reports_host_peak_rss():
    mem = CPUBackend().memory()
    assert set(mem) == {"host_peak_rss_mb"}
    assert 1 < mem["host_peak_rss_mb"] < 1e7  # MB: a running Python with torch is more than 1 MB


def test_base_hooks_are_harmless_on_cpu():
    b = CPUBackend()
    b.synchronize()
    b.reset_peak_memory()
    y = torch.ones(2, 2, dtype=torch.bfloat16, requires_grad=True) * 2
    out = b.to_output(y)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert torch.equal(out, torch.full((2, 2), 2.0))


# --- CPU backend: torch.compile with the artifact cache (compiles exactly twice: one miss, one hit)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile a small MLP twice into the same cache entry; environment and thread count restored
    after."""
    from torch._dynamo.utils import counters

    root = tmp_path_factory.mktemp("artifacts")
    m = mlp()
    x = example(2)
    with torch.inference_mode():
        want = m(x)
    parts = {"model": "mlp", "weights": artifacts.weights_digest(m), "shape": list(x.shape),
             "dtype": "float32",
             "mode": "compile", "cores": 1, "options": {}, "versions": {"torch": torch.__version__}}
    b = CPUBackend()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for var in INDUCTOR_VARS:
            mp.setenv(var, "")  # recorded, so the value the backend sets is undone at the end
            mp.delenv(var)
        entry = artifacts.entry(root, "cpu", parts)
        before = entry.exists()
        hits0 = counters["inductor"]["fxgraph_cache_hit"]
        miss = prepare(b, copy.deepcopy(m), x, mode="compile", dtype="float32", cores=1,
                       cache=entry)
        with torch.inference_mode():
            out_miss = b.to_output(miss.fn(b.to_input(x, "float32")))
        meta_after_miss = entry.meta() if entry.exists() else None
        hits1 = counters["inductor"]["fxgraph_cache_hit"]
        # a later run makes the same entry from the same parts
        again = artifacts.entry(root, "cpu", dict(parts))
        hit = prepare(b, copy.deepcopy(m), x, mode="compile", dtype="float32", cores=1, cache=again)
        with torch.inference_mode():
            out_hit = b.to_output(hit.fn(b.to_input(x, "float32")))
        hits2 = counters["inductor"]["fxgraph_cache_hit"]
        env_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    torch._dynamo.reset()
    torch.set_num_threads(threads)
    return dict(entry=entry, again=again, before=before, miss=miss, hit=hit, want=want,
                out_miss=out_miss, out_hit=out_hit, meta=meta_after_miss,
                hit_delta_miss=hits1 - hits0, hit_delta_hit=hits2 - hits1,
                env_dir=env_dir)


def test_compile_miss_compiles_and_commits(compiled):
    e, miss = compiled["entry"], compiled["miss"]
    assert compiled["before"] is False
    assert miss.cache == "miss" and miss.mode == "compile" and miss.backend == "cpu"
    assert miss.compile_s is not None and miss.compile_s > 0
    assert (e.dir / "meta.json").is_file()
    meta = compiled["meta"]
    assert meta is not None and meta["key"] == e.key
    assert meta["parts"]["model"] == "mlp" and meta["parts"]["backend"] == "cpu"
    assert meta["compile_s"] == pytest.approx(miss.compile_s)
    assert compiled["hit_delta_miss"] == 0  # nothing on disk to load yet


def test_compile_hit_loads_from_the_same_entry(compiled):
    e, again, hit, miss = compiled["entry"], compiled["again"], compiled["hit"], compiled["miss"]
    assert again.key == e.key and again.dir == e.dir
    assert hit.cache == "hit"
    # the (short) time of the second compile is reported
    assert hit.compile_s is not None and hit.compile_s > 0
    assert hit.compile_s < miss.compile_s
    assert compiled["hit_delta_hit"] >= 1  # inductor loaded its compiled graph from the entry
    assert e.meta()["compile_s"] == pytest.approx(miss.compile_s)  # a hit does not rewrite it


def test_compile_caches_live_in_the_entry_folder(compiled):
    e = compiled["entry"]
    inductor = e.dir / "inductor"
    assert compiled["env_dir"] == str(inductor)
    assert inductor.is_dir() and any(inductor.rglob("*"))
    for prep in (compiled["miss"], compiled["hit"]):
        assert any(str(inductor) in n for n in prep.notes)


def test_compile_outputs_match_eager(compiled):
    want = compiled["want"]
    for out in (compiled["out_miss"], compiled["out_hit"]):
        assert out.shape == want.shape and out.dtype == torch.float32
        assert rel_l2(out, want) <= 1e-4
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


# --- CUDA backend: what can be checked without a GPU ----------------------------------------------


def test_cuda_backend_declares_its_modes_and_dtypes():
    b = CUDABackend()
    assert b.modes == ("eager", "compile", "compile-cudagraphs", "compile-max-autotune")
    assert b.dtypes == ("float32", "tfloat32", "bfloat16", "float16")
    assert COMPILE_MODES == {"compile": "default", "compile-cudagraphs": "reduce-overhead",
                             "compile-max-autotune": "max-autotune"}
    assert b.unit == "GPUs"


@no_gpu_here
def test_cuda_unavailable_here_with_an_install_hint():
    ok, why = targets.cuda_probe()
    assert ok is False
    assert "torch sees no CUDA GPU" in why and torch.__version__ in why
    assert "install a CUDA build of torch" in why


@no_gpu_here
def test_cuda_backend_without_a_gpu_reads_no_memory():
    b = CUDABackend()
    assert b.memory() == {} and b.describe()["gpus"] == []
    b.synchronize()
    b.reset_peak_memory()


@pytest.mark.parametrize("kw, text", [
    (dict(modes=["trace"]), "modes of the cuda backend: eager, compile, compile-cudagraphs"),
    (dict(dtypes=["float16", "tfloat32"]), None),
])
def test_cuda_modes_and_dtypes(kw, text):
    from workbook.experiments.siglip_neuron import _matrix
    from workbook.specs.siglip_neuron import SPEC

    if text is None:
        assert {d for _, d, _ in _matrix(SPEC.check(kw), CUDABackend())} == {"float16", "tfloat32"}
        return
    with pytest.raises(ParameterError, match=text):
        _matrix(SPEC.check(kw), CUDABackend())


@pytest.fixture
def keep_matmul_precision():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


def test_set_matmul_precision_toggles_tf32(keep_matmul_precision):
    set_matmul_precision("tfloat32")
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.get_float32_matmul_precision() == "high"
    set_matmul_precision("float32")
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False  # IEEE fp32 for convolutions too
    assert torch.get_float32_matmul_precision() == "highest"
    set_matmul_precision("tfloat32")
    set_matmul_precision("bfloat16")  # any other dtype turns tf32 off as well
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"


# --- CUDA backend on a GPU (skipped here) ---------------------------------------------------------


def tiny_tower():
    from workbook.models import build_tower

    return build_tower("SigLIP-Tiny", seed=0).model


def tiny_images(batch: int) -> torch.Tensor:
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("tfloat32", 2e-3), ("bfloat16", 2e-2),
                                        ("float16", 5e-3)])
def test_cuda_eager_matches_cpu(dtype, tol, keep_matmul_precision):
    m = tiny_tower()
    x = tiny_images(4)
    with torch.inference_mode():
        ref = m(x)
    b = CUDABackend()
    assert torch.cuda.device_count() >= 1
    prep = prepare(b, copy.deepcopy(m), x, mode="eager", dtype=dtype, cores=1)
    assert prep.cache == "none" and prep.compile_s is None
    xi = b.to_input(x, dtype)
    assert xi.device == torch.device("cuda:0")
    b.reset_peak_memory()
    with torch.inference_mode():
        out = b.to_output(prep.fn(xi))
    b.synchronize()
    assert out.device.type == "cpu" and out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_l2(out, ref) <= tol
    assert b.memory()["cuda0_peak_allocated_mb"] > 0
    assert b.describe()["gpus"]


@pytest.mark.gpu
def test_cuda_compile_miss_then_hit_matches_cpu(tmp_path, monkeypatch, keep_matmul_precision):
    for var in INDUCTOR_VARS:
        monkeypatch.setenv(var, "")  # recorded, so the value the backend sets is undone after
        monkeypatch.delenv(var)
    m = tiny_tower()
    x = tiny_images(2)
    with torch.inference_mode():
        ref = m(x)
    b = CUDABackend()
    parts = {"model": "SigLIP-Tiny", "weights": artifacts.weights_digest(m), "shape": list(x.shape),
             "dtype": "float32", "mode": "compile", "cores": 1}
    preps = []
    for _ in range(2):
        e = artifacts.entry(tmp_path, "cuda", parts)
        prep = prepare(b, copy.deepcopy(m), x, mode="compile", dtype="float32", cores=1, cache=e)
        with torch.inference_mode():
            out = b.to_output(prep.fn(b.to_input(x, "float32")))
        assert rel_l2(out, ref) <= 1e-4
        preps.append(prep)
    assert [p.cache for p in preps] == ["miss", "hit"]
    assert all(p.compile_s and p.compile_s > 0 for p in preps)
    assert e.meta()["mode"] == "compile"
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_cuda_two_gpu_scatter_gather_equals_one_gpu(keep_matmul_precision):
    m = tiny_tower()
    x = tiny_images(6)
    b = CUDABackend()
    one = prepare(b, copy.deepcopy(m), x, mode="eager", dtype="float32", cores=1)
    two = prepare(b, copy.deepcopy(m), x, mode="eager", dtype="float32", cores=2)
    xi = b.to_input(x, "float32")
    with torch.inference_mode():
        y1 = one.fn(xi)
        y2 = two.fn(xi)
    b.synchronize()
    assert y2.device == torch.device("cuda:0") and y2.shape == y1.shape
    torch.testing.assert_close(b.to_output(y2), b.to_output(y1), rtol=1e-5, atol=1e-5)
    mem = b.memory()
    assert mem["cuda1_peak_allocated_mb"] > 0  # the second GPU did real work
