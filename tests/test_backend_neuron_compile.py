"""The neuron backend's ``compile`` mode (TorchNeuron, ``torch.compile(backend="neuron")``) against
the TEST STAND-IN torch_neuronx made TorchNeuron (``as_torchneuron``): the call TorchNeuron
documents, one static graph, CPU tensors in and out, the NEFF cache in the artifact folder, one
NeuronCore, and each mode refused in one sentence where the installed torch-neuronx cannot run it.
Every number here is a CPU number."""
from __future__ import annotations

import os

import pytest
import torch
from test_backend_neuron import batch, clean, run, standin, standin_path, sysfs, tiny_model  # noqa: F401
from workbook import artifacts
from workbook.backends import neuron, neuron_compile
from workbook.backends.neuron import NeuronBackend
from workbook.errors import ParameterError


@pytest.fixture
def torchneuron(standin, monkeypatch):
    """The stand-in as TorchNeuron; torch.compile's keyword arguments recorded."""
    standin.as_torchneuron(monkeypatch)
    seen = []
    real = torch.compile

    def spy(model, **kw):
        seen.append(kw)
        return real(model, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.delenv(neuron_compile.CACHE_ENV, raising=False)
    standin.CALLS.clear()
    return standin, seen


def test_compile_runs_one_static_graph_and_matches_eager(torchneuron, tmp_path):
    mod, seen = torchneuron
    b, x, model = NeuronBackend(), batch(4), tiny_model()
    assert b.rules(steps=[("compile", "float32", 4)], cores=1, options={}) == []
    entry = artifacts.entry(tmp_path / "artifacts", "tiny", {"mode": "compile"})
    prep = b.prepare(model, x, mode="compile", dtype="float32", cores=1, options={}, cache=entry)
    assert seen == [{"backend": "neuron", "fullgraph": True, "dynamic": False}]
    graphs = [c for c in mod.CALLS if c["fn"].startswith("torch.compile")]
    assert len(graphs) == 1 and [4, 8] in graphs[0]["input_shapes"]  # one graph, the batch's shape
    assert prep.mode == "compile" and prep.backend == "neuron-standin" and prep.cores == 1
    assert prep.compile_s is not None and prep.compile_s >= 0
    assert prep.notes[0] == neuron.STANDIN_NOTE
    assert any("NEFF cache" in n for n in prep.notes)
    assert str(entry.dir) == os.environ[neuron_compile.CACHE_ENV]
    out = run(prep, b, x)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, model(x).detach())
    assert b.describe()["torchneuron"] is True and b.describe()["trace"] is False


def test_compile_takes_one_core(torchneuron):
    b = NeuronBackend()
    with pytest.raises(ParameterError, match="Parameter cores=2 is not allowed: 1 with mode "
                                             "compile"):
        b.rules(steps=[("compile", "float32", 4)], cores=2, options={})


def test_trace_is_refused_with_torchneuron_naming_compile(torchneuron):
    with pytest.raises(ParameterError, match="Parameter modes='trace' is not allowed: compile "
                                             "here: the torch-neuronx installed"):
        NeuronBackend().rules(steps=[("trace", "float32", 4)], cores=1, options={})


def test_compile_is_refused_with_the_xla_torch_neuronx_naming_trace(standin):
    with pytest.raises(ParameterError, match="Parameter modes='compile' is not allowed: trace "
                                             "here: mode compile needs TorchNeuron"):
        NeuronBackend().rules(steps=[("compile", "float32", 4)], cores=1, options={})


def test_the_standin_backend_refuses_dynamic_shapes(torchneuron):
    torch._dynamo.reset()
    compiled = torch.compile(tiny_model(), backend="neuron", dynamic=True)
    with pytest.raises(Exception, match="dynamic shapes are not supported"):
        compiled(batch(4))
    torch._dynamo.reset()


def _family(sysfs_root, name):
    arch = sysfs_root / "neuron0" / "info" / "architecture"
    arch.mkdir(parents=True, exist_ok=True)
    (arch / "device_name").write_text(name + "\n")


def test_auto_takes_compile_on_a_trn2_with_torchneuron(torchneuron, sysfs):
    _family(sysfs, "Trainium2")
    mode, why = NeuronBackend().auto_mode()
    assert mode == "compile" and why.startswith("a trn2 (sysfs neuron0/info/architecture/"
                                                "device_name = Trainium2) with TorchNeuron")


def test_auto_takes_trace_on_an_inf2_and_compile_there_is_refused(standin, sysfs):
    _family(sysfs, "Inferentia2")
    assert NeuronBackend().auto_mode() == ("trace", "an inf2 (sysfs neuron0/info/architecture/"
                                           "device_name = Inferentia2): the XLA path, "
                                           "torch_neuronx.trace")
    with pytest.raises(ParameterError, match="Parameter modes='compile' is not allowed: trace on "
                                             "an inf2"):
        NeuronBackend().rules(steps=[("compile", "float32", 4)], cores=1, options={})


def test_auto_on_a_trn2_with_the_xla_torch_neuronx_says_which_sdk_that_is(standin, sysfs):
    _family(sysfs, "Trainium2")
    mode, why = NeuronBackend().auto_mode()
    assert mode == "trace" and "up to Neuron SDK 2.33" in why


def test_auto_with_an_unknown_family_follows_the_installed_torch_neuronx(torchneuron, sysfs,
                                                                         monkeypatch):
    monkeypatch.setenv("PATH", "")  # no neuron-ls either
    mode, why = NeuronBackend().auto_mode()
    assert mode == "compile" and why.startswith("an instance of unknown family")
