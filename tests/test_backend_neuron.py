"""The Neuron backend against the TEST STAND-IN torch_neuronx (tests/standins) and a fake sysfs
tree.

No Neuron SDK or hardware is here: these tests check the probe and its install messages, core
discovery, the backend's own rules, the compile-in-a-worker / cache / load flow, DataParallel, sysfs
memory parsing, and that the stand-in itself enforces the documented call signatures. Every number
they produce is a CPU number.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_imports_without
from workbook import artifacts
from workbook.backends import neuron, neuron_worker
from workbook.backends.base import BackendUnavailable
from workbook.backends.neuron import MB, NeuronBackend
from workbook.errors import ParameterError, WorkbookError

STANDINS = Path(__file__).resolve().parent / "standins"
DEFAULT_ARGS = ["--model-type=transformer", "--auto-cast=matmult", "--auto-cast-type=bf16"]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                               torch.nn.Linear(16, 4)).eval()


def batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def clean(monkeypatch):
    """No torch_neuronx imported or importable, NEURON_RT_VISIBLE_CORES unset, no runtime started;
    all restored afterwards (so later test files never see the stand-in)."""
    monkeypatch.setitem(sys.modules, "torch_neuronx", None)
    monkeypatch.delitem(sys.modules, "torch_neuronx")
    monkeypatch.setenv(neuron.VISIBLE_ENV, "unset")
    monkeypatch.delenv(neuron.VISIBLE_ENV)
    monkeypatch.delenv("NEURON_RT_NUM_CORES", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != STANDINS])
    monkeypatch.setattr(neuron, "_RUNTIME_CORES", None)


@pytest.fixture
def sysfs(neuron_tree, monkeypatch):
    """A fake neuron_device tree: 2 devices x 2 cores, memory files on nd0:nc0 and nd1:nc1, and
    clutter."""
    root = neuron_tree
    (root / "neuron0" / "stats").mkdir()  # not a core
    (root / "power").mkdir()  # not a device
    (root / "neuron7").write_text("")  # a file, not a device folder

    def put(dev, core, cat, total=None, peak=None):
        d = (root / f"neuron{dev}" / f"neuron_core{core}" / "stats" / "memory_usage" / "device_mem"
             / cat)
        d.mkdir(parents=True, exist_ok=True)
        if total is not None:
            (d / "total").write_text(f"{total}\n")
        if peak is not None:
            (d / "peak").write_text(f"{peak}\n")

    put(0, 0, "model_code", 96 * MB, 100 * MB)
    put(0, 0, "constants", 3 * MB // 2, 2 * MB)
    put(0, 0, "dma_rings", 3 * MB)  # no peak file
    put(0, 0, "collectives", MB, MB)  # a category outside the usual five
    put(0, 0, "tensors")  # folder without files
    d = (root / "neuron0" / "neuron_core0" / "stats" / "memory_usage" / "device_mem"
         / "runtime_memory")
    d.mkdir()
    (d / "total").write_text("not a number\n")
    put(1, 1, "tensors", 64 * MB, 80 * MB)
    monkeypatch.setenv(neuron.SYSFS_ENV, str(root))
    return root


@pytest.fixture
def standin_path(clean, monkeypatch):
    """The stand-in importable here (sys.path) and in the compile worker (PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(STANDINS))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDINS)] + ([old] if old else [])))


@pytest.fixture
def standin(standin_path, sysfs):
    import torch_neuronx

    assert torch_neuronx.STANDIN is True
    return torch_neuronx


@pytest.fixture
def art_root(tmp_path):
    return tmp_path / "artifacts"


@pytest.fixture
def worker_runs(monkeypatch):
    """Counts compile-worker runs (each one a subprocess)."""
    calls = []
    real = neuron_worker.run_worker

    def counting(d, **kw):
        calls.append(Path(d))
        return real(d, **kw)

    monkeypatch.setattr(neuron_worker, "run_worker", counting)
    return calls


def run(prep, b, x, dtype="float32"):
    with torch.inference_mode():
        return b.to_output(prep.fn(b.to_input(x, dtype)))


# ------------------------------------------------------------------------------------ availability
def test_module_imports_without_the_sdk_or_torch():
    assert_imports_without(["workbook.backends.neuron", "workbook.backends.neuron_worker"],
                           {"torch_neuronx", "torch"})


def test_unavailable_without_sdk_says_how_to_install(clean, sysfs):
    b = NeuronBackend()
    ok, why = neuron.probe()
    assert not ok
    assert why.startswith(neuron.INSTALL_HINT)
    assert "torch-neuronx and neuronx-cc from AWS's Neuron pip repository" in why
    d = b.describe()
    assert d["available"] is False and d["standin"] is False and d["sdk_version"] is None
    with pytest.raises(BackendUnavailable, match="Neuron pip repository"):
        b.prepare(tiny_model(), batch(), mode="trace", dtype="float32", cores=1, options={},
                  cache=None)


def test_pypi_placeholder_counts_as_not_installed(clean, sysfs, tmp_path, monkeypatch):
    pkg = tmp_path / "placeholder" / "torch_neuronx"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise ImportError("WRONG PACKAGE: install torch-neuronx from '
                                     'the Neuron repository")\n')
    monkeypatch.syspath_prepend(str(pkg.parent))
    ok, why = neuron.probe()
    assert not ok
    assert why.startswith(neuron.INSTALL_HINT) and "placeholder" in why
    assert "torch_neuronx" not in sys.modules


def test_no_cores_visible(standin_path, tmp_path, monkeypatch):
    empty = tmp_path / "empty_sysfs"
    empty.mkdir()
    monkeypatch.setenv(neuron.SYSFS_ENV, str(empty))
    assert neuron.probe() == (False, neuron.NO_CORES)
    monkeypatch.setenv(neuron.SYSFS_ENV, str(tmp_path / "does_not_exist"))
    assert neuron.probe() == (False, neuron.NO_CORES)


def test_available_with_standin_and_core_count(standin, monkeypatch):
    from workbook import targets

    ok, why = neuron.probe()
    assert ok and "STAND-IN" in why and "4 NeuronCores" in why
    assert neuron.visible_cores() == 4
    t = targets.resolve("auto", neuron=neuron.probe)
    assert (t.name, t.devices) == ("neuron", 4) and "STAND-IN" in t.reason
    for value, n in (("1", 1), ("0-1", 2), ("0,2-3", 3), (" 3 ", 1)):
        monkeypatch.setenv(neuron.VISIBLE_ENV, value)
        assert neuron.visible_cores() == n, value
    for bad in ("3-1", "a", "1,,2", "-2"):
        monkeypatch.setenv(neuron.VISIBLE_ENV, bad)
        with pytest.raises(ParameterError, match="NEURON_RT_VISIBLE_CORES"):
            neuron.visible_cores()
        assert neuron.probe()[0] is False
    assert neuron.parse_visible_cores("0,2-3,3") == [0, 2, 3]


def test_discover_cores_orders_devices_numerically(tmp_path):
    for d, c in ((10, 0), (2, 1), (2, 0)):
        (tmp_path / f"neuron{d}" / f"neuron_core{c}").mkdir(parents=True)
    assert neuron.discover_cores(tmp_path) == [(2, 0), (2, 1), (10, 0)]


def test_rules_refuse_what_a_trace_cannot_run(standin):
    b = NeuronBackend()
    assert b.rules(steps=[("trace", "bfloat16", 4), ("trace", "float32", 8)], cores=4,
                   options={}) == []
    with pytest.raises(ParameterError, match="cores=2 .*a divisor of the batch size 3"):
        b.rules(steps=[("trace", "float32", 2), ("trace", "float32", 3)], cores=2, options={})
    with pytest.raises(ParameterError, match="inline_weights_to_neff=False"):
        b.rules(steps=[("trace", "float32", 2)], cores=2,
                options={"inline_weights_to_neff": False})
    with pytest.raises(ParameterError, match="options='compile_args'"):
        b.rules(steps=[], cores=1, options={"compile_args": []})
    notes = b.rules(steps=[], cores=1, options={"compiler_args": ["--auto-cast=none"]})
    assert notes == [neuron.OWN_CAST_NOTE]


def test_siglip_neuron_first_cell_refuses_what_cannot_run(standin, tmp_path):
    """cores against the visible NeuronCores, and modes and dtypes the neuron backend lacks."""
    from workbook.experiments import siglip_neuron as exp
    from workbook.specs.siglip_neuron import SPEC

    for kw, text in ((dict(cores=5), r"cores=5 .*1 to 4: this machine has 4 NeuronCores"),
                     (dict(modes=["eager"]), "modes of the neuron backend: trace"),
                     (dict(dtypes=["float16"]), "dtypes of the neuron backend: float32, bfloat16"),
                     (dict(cores=2, batch_sizes=[3]), "a divisor of the batch size 3")):
        with pytest.raises(ParameterError, match=text):
            exp.configure(SPEC.check(_siglip_neuron_params(tmp_path, **kw)))


def test_describe_with_standin(standin):
    d = NeuronBackend().describe()
    assert d["standin"] is True and d["backend"] == "neuron-standin"
    assert d["sdk_version"] == "0.0.0+standin"
    assert (d["cores"], d["devices"], d["cores_in_sysfs"]) == (4, 2, 4)
    assert d["NEURON_RT_VISIBLE_CORES"] is None
    assert d["compiler_args"] == DEFAULT_ARGS


def test_compiler_args_from_options():
    b = NeuronBackend()
    assert b.compiler_args({}) == DEFAULT_ARGS
    assert b.compiler_args({"auto_cast": "none"}) == ["--model-type=transformer",
                                                      "--auto-cast=none"]
    opts = {"compiler_args": ["-O3"], "auto_cast": "all", "auto_cast_type": "fp16"}
    assert b.compiler_args(opts) == ["-O3", "--auto-cast=all", "--auto-cast-type=fp16"]
    assert b.compiler_args({"compiler_args": ["--auto-cast=none"]}) == ["--auto-cast=none"]
    # auto_cast and auto_cast_type values are the spec's to check (test_siglip_neuron)
    for bad in ({"compile_args": []}, {"compiler_args": "--model-type=transformer"},
                {"timeout_s": 0}, {"inline_weights_to_neff": 1},
                {"compiler_args": ["--auto-cast=none"], "auto_cast": "matmult"}):
        with pytest.raises(ParameterError):
            b.compiler_args(bad)


# ------------------------------------------------------------------------------------ prepare
def test_prepare_miss_then_hit(standin, art_root, worker_runs):
    b = NeuronBackend()
    model, x = tiny_model(), batch(4)
    entry = artifacts.entry(art_root, "neuron", {"model": "tiny", "shape": [4, 8]})
    p1 = b.prepare(model, x, mode="trace", dtype="float32", cores=1, options={}, cache=entry)

    assert p1.cache == "miss" and len(worker_runs) == 1
    assert p1.backend == "neuron-standin" and p1.notes[0] == neuron.STANDIN_NOTE
    assert (p1.mode, p1.dtype, p1.batch, p1.cores) == ("trace", "float32", 4, 1)
    assert p1.compile_s > 0 and p1.load_s >= 0
    d = entry.dir
    assert p1.artifact == str(d / "model.pt") and (d / "model.pt").is_file()
    assert not (d / "source_model.pt").exists() and not (d / "example.pt").exists()
    info = json.loads((d / "compile.json").read_text())
    assert info["standin"] is True and info["compiler_args"] == DEFAULT_ARGS
    assert info["trace_s"] == p1.compile_s
    log = (d / "compiler_workdir" / "log-neuron-cc.txt").read_text()
    assert (d / "compiler_workdir" / "standin.neff").is_file()
    for flag in DEFAULT_ARGS:
        assert flag in log
    meta = entry.meta()
    assert meta["compiler_args"] == DEFAULT_ARGS and meta["compile_s"] == p1.compile_s
    assert meta["traced_shape"] == [4, 8] and meta["standin"] is True
    assert os.environ[neuron.VISIBLE_ENV] == "0"
    assert b.describe()["compiler_args"] == DEFAULT_ARGS
    eager = model(x).detach()
    assert torch.equal(run(p1, b, x), eager)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not touched

    mtime = (d / "compile.json").stat().st_mtime_ns
    p2 = b.prepare(model, x, mode="trace", dtype="float32", cores=1, options={}, cache=entry)
    assert p2.cache == "hit" and p2.compile_s is None and p2.load_s >= 0
    assert len(worker_runs) == 1 and (d / "compile.json").stat().st_mtime_ns == mtime
    assert p2.backend == "neuron-standin" and p2.notes[0] == neuron.STANDIN_NOTE
    assert torch.equal(run(p2, b, x), eager)

    # Same folder, other dtype and flags (a cache key that left them out): traced again, said so.
    p3 = b.prepare(model, x, mode="trace", dtype="bfloat16", cores=1, options={"auto_cast": "none"},
                   cache=entry)
    assert p3.cache == "miss" and len(worker_runs) == 2 and p3.notes[0] == neuron.STANDIN_NOTE
    assert any("other compiler_args, dtype" in n for n in p3.notes)
    assert entry.meta()["compiler_args"] == ["--model-type=transformer", "--auto-cast=none"]
    assert entry.meta()["dtype"] == "bfloat16"
    xin = b.to_input(x, "bfloat16")
    assert xin.dtype == torch.bfloat16 and xin.device.type == "cpu"
    with torch.inference_mode():
        raw = p3.fn(xin)
    assert raw.dtype == torch.bfloat16  # the model was cast to bf16 before tracing
    assert torch.equal(b.to_output(raw), tiny_model().to(torch.bfloat16)(xin).detach().float())
    assert next(model.parameters()).dtype == torch.float32
    log = (d / "compiler_workdir" / "log-neuron-cc.txt").read_text()
    worker_env = json.loads(log.split("\n", 1)[1])["env"]
    # this process now holds NEURON_RT_VISIBLE_CORES=0; the worker asks for one free core of its own
    assert os.environ[neuron.VISIBLE_ENV] == "0"
    assert worker_env == {"NEURON_RT_VISIBLE_CORES": None, "NEURON_RT_NUM_CORES": "1"}


def test_prepare_two_cores_uses_data_parallel(standin, worker_runs):
    b = NeuronBackend()
    model, x = tiny_model(), batch(4)
    p = b.prepare(model, x, mode="trace", dtype="float32", cores=2, options={}, cache=None)
    assert os.environ[neuron.VISIBLE_ENV] == "0-1"
    assert isinstance(p.fn, standin.DataParallel) and p.fn.device_ids == [0, 1]
    assert (p.batch, p.cores, p.cache) == (4, 2, "none")
    assert any("no artifact cache" in n for n in p.notes) and Path(p.artifact).is_file()
    compile_info = json.loads((Path(p.artifact).parent / "compile.json").read_text())
    assert compile_info["example_shape"] == [2, 8]  # traced for the per-core batch
    out = run(p, b, x)
    with torch.no_grad():
        per_core = torch.cat([model(x[:2]), model(x[2:])])
        torch.testing.assert_close(out, model(x), rtol=1e-6, atol=1e-6)
    assert torch.equal(out, per_core)
    # The runtime of this process has started on 2 cores: more cannot be had without a new process.
    with pytest.raises(ParameterError, match="already started the Neuron runtime"):
        b.rules(steps=[("trace", "float32", 3)], cores=3, options={})
    assert len(worker_runs) == 1


def test_worker_failure_reports_its_error(standin, art_root, worker_runs):
    b = NeuronBackend()
    broken = torch.nn.Sequential(torch.nn.Linear(3, 4))  # forward raises on 8 input features
    entry = artifacts.entry(art_root, "neuron", {"model": "broken"})
    with pytest.raises(WorkbookError) as e:
        b.prepare(broken, batch(2), mode="trace", dtype="float32", cores=1, options={}, cache=entry)
    msg = str(e.value)
    assert "exit code 1" in msg and "mat1 and mat2 shapes cannot be multiplied" in msg
    assert "neuron_worker: trace failed: RuntimeError" in msg and "nothing was cached" in msg
    assert len(worker_runs) == 1 and not entry.exists()
    assert not (entry.dir / "model.pt").exists() and not (entry.dir / "source_model.pt").exists()
    assert (entry.dir / "worker-stderr.log").is_file()


def test_worker_timeout_is_stopped(standin, art_root):
    entry = artifacts.entry(art_root, "neuron", {"model": "slow"})
    with pytest.raises(WorkbookError, match=r"longer than timeout_s=0.2 s and was stopped"):
        NeuronBackend().prepare(tiny_model(), batch(2), mode="trace", dtype="float32", cores=1,
                                options={"timeout_s": 0.2}, cache=entry)
    assert not entry.exists() and not (entry.dir / "model.pt").exists()


def test_bad_models_and_options_are_refused_before_compiling(standin, worker_runs):
    class Local(torch.nn.Module):
        def forward(self, x):
            return x * 2

    Local.__module__ = "__main__"
    b = NeuronBackend()
    def prepare(model, options=None):
        b.prepare(model, batch(2), mode="trace", dtype="float32", cores=1, options=options or {},
                  cache=None)

    with pytest.raises(WorkbookError, match=r"defined in __main__ \(.*Local\)"):
        prepare(Local())
    unpicklable = tiny_model()
    unpicklable.hook = lambda x: x
    with pytest.raises(WorkbookError, match="cannot be saved for the compile worker"):
        prepare(unpicklable)
    with pytest.raises(ParameterError, match="options='compile_args'"):
        prepare(tiny_model(), {"compile_args": []})
    assert worker_runs == []


def _siglip_neuron_params(tmp_path, **kw):
    p = dict(model="SigLIP-Tiny", image_size=112, backend="neuron", modes=["trace"], cores=1,
             batch_sizes=[1], artifact_dir=str(tmp_path / "artifacts"))
    p.update(kw)
    return p


def test_siglip_neuron_first_cell_applies_the_backends_option_rules(standin, tmp_path):
    """On the neuron backend the first cell runs the backend's own option rules; compiler_args that
    set --auto-cast themselves replace the auto_cast parameters (said in a note) instead of
    conflicting at the trace."""
    from workbook.experiments import siglip_neuron as exp
    from workbook.specs.siglip_neuron import SPEC

    def config(**kw):
        return exp.configure(SPEC.check(_siglip_neuron_params(tmp_path, **kw)))

    cfg = config(compiler_args="--model-type transformer --auto-cast none")
    assert cfg.target.name == "neuron" and "STAND-IN" in cfg.target.reason
    args = cfg.backend.compiler_args(cfg.options)
    assert args == ["--model-type", "transformer", "--auto-cast", "none"]
    assert any("compiler_args sets --auto-cast itself" in n for n in cfg.notes)
    cfg = config(auto_cast="all", auto_cast_type="fp16")
    args = cfg.backend.compiler_args(cfg.options)
    assert args[-2:] == ["--auto-cast=all", "--auto-cast-type=fp16"]
    assert not any("--auto-cast" in n for n in cfg.notes)


# ------------------------------------------------------------------------------------ memory
def test_memory_reads_sysfs(clean, sysfs, monkeypatch):
    b = NeuronBackend()
    cores = b.memory()["neuron_cores"]
    assert [c["core"] for c in cores] == ["nd0:nc0", "nd0:nc1", "nd1:nc0", "nd1:nc1"]
    c0 = cores[0]
    assert c0 == {"core": "nd0:nc0", "model_code_mb": 96.0, "model_code_peak_mb": 100.0,
                  "constants_mb": 1.5, "constants_peak_mb": 2.0, "dma_rings_mb": 3.0,
                  "collectives_mb": 1.0, "collectives_peak_mb": 1.0, "total_mb": 101.5}
    assert cores[1] == {"core": "nd0:nc1"}  # no files: nothing invented
    monkeypatch.setenv(neuron.VISIBLE_ENV, "3")
    assert b.memory() == {"neuron_cores": [{"core": "nd1:nc1", "tensors_mb": 64.0,
                                            "tensors_peak_mb": 80.0, "total_mb": 64.0}]}
    monkeypatch.setenv(neuron.VISIBLE_ENV, "3-4")
    m = b.memory()
    assert [c["core"] for c in m["neuron_cores"]] == ["nd1:nc1"] and m["cores_not_in_sysfs"] == [4]
    assert neuron.read_core_memory(sysfs, 5, 0) == {"core": "nd5:nc0"}


# ------------------------------------------------------------------------------------ the stand-in
def test_standin_trace_enforces_documented_signature(standin, tmp_path):
    model, x = tiny_model(), batch(2)
    with pytest.raises(TypeError, match="positional"):
        standin.trace(model, x, str(tmp_path / "wd"))
    with pytest.raises(TypeError, match="compiler_args"):
        standin.trace(model, x, compiler_args=5)
    with pytest.raises(TypeError, match="compiler_args"):
        standin.trace(model, x, compiler_args=["--model-type=transformer", 3])
    with pytest.raises(TypeError, match="compiler_workdir"):
        standin.trace(model, x, compiler_workdir=tmp_path / "wd")
    with pytest.raises(TypeError, match="example_inputs"):
        standin.trace(model, [x])
    with pytest.raises(ValueError, match="--target"):
        standin.trace(model, x, cpu_backend=True)
    n = len(standin.CALLS)
    traced = standin.trace(model, x, compiler_workdir=str(tmp_path / "wd"),
                           compiler_args="--model-type=transformer")
    assert isinstance(traced, torch.jit.ScriptModule)
    assert "not a NEFF" in (tmp_path / "wd" / "standin.neff").read_text()
    assert standin.CALLS[n]["compiler_args"] == ["--model-type=transformer"]
    assert len(standin.CALLS) == n + 1


def test_standin_data_parallel_checks(standin, monkeypatch):
    model, x = tiny_model(), batch(5)
    traced = standin.trace(model, x[:2])
    with pytest.raises(TypeError, match="ScriptModule"):
        standin.DataParallel(model)
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "4-5")
    with pytest.raises(ValueError, match="device id 2 is out of range: 2 NeuronCores"):
        standin.DataParallel(traced, device_ids=[0, "nc:2"])
    with pytest.raises(TypeError, match="'gpu:0'"):
        standin.DataParallel(traced, device_ids=["gpu:0"])
    dp = standin.DataParallel(traced, device_ids=[0, "nc:1"])
    with torch.no_grad():
        out = dp(x)  # 5 rows over 2 cores: chunks of 2, 2, 1
        assert torch.equal(out, torch.cat([traced(x[:2]), traced(x[2:4]), traced(x[4:])]))
    dp.disable_dynamic_batching()
    with pytest.raises(ValueError, match="split evenly"):
        dp(x)
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES")
    monkeypatch.delenv(neuron.SYSFS_ENV)
    with pytest.raises(ValueError, match="never reads the real /sys"):
        standin.DataParallel(traced)
