"""workbook.llm.neuron_export and the NxD Inference try: which Neuron path the export search takes.

No Neuron SDK is here. NxD Inference and optimum-neuron are tests/standins' stand-ins (the latter a
registry of the text-generation architectures optimum-neuron's documentation lists today); each test
writes the ``optimum-cli`` TEST STAND-IN script it needs (``neuron cache lookup``). The instance family comes
from a fake sysfs tree. Nothing here runs on Neuron and no figure comes from it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from workbook.backends import neuron
from workbook.errors import ParameterError
from workbook.llm import attempts, neuron_export
from workbook.llm import neuron as neuron_llm

STANDINS = Path(__file__).resolve().parent / "standins"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from workbook.models import mistral

    return str(mistral.create_tiny(tmp_path_factory.mktemp("lm") / "m", seed=0))


def _drop_sdk_modules():
    for name in [n for n in sys.modules
                 if n.split(".")[0] in (*neuron_llm.NEURON_PACKAGES, "optimum")]:
        del sys.modules[name]


@pytest.fixture
def machine(neuron_tree, monkeypatch, tmp_path):
    """A fake Neuron machine: 4 NeuronCores in sysfs, no SDK importable, nothing on PATH but a
    folder this test fills; ``machine(family)`` names the instance type the driver reports."""
    _drop_sdk_modules()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != STANDINS])
    monkeypatch.setenv(neuron.SYSFS_ENV, str(neuron_tree))
    monkeypatch.delenv(neuron.VISIBLE_ENV, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")

    def family(name: str):
        for dev in neuron_tree.iterdir():
            arch = dev / "info" / "architecture"
            arch.mkdir(parents=True, exist_ok=True)
            (arch / "instance_type").write_text(name + "\n")
        return bin_dir

    yield family
    _drop_sdk_modules()


@pytest.fixture
def nxdi(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))


@pytest.fixture
def optimum(monkeypatch):
    """optimum-neuron 0.4.5's TEST STAND-IN (tests/standins/optimum_neuron) importable."""
    monkeypatch.syspath_prepend(str(STANDINS / "optimum_neuron"))


def _cli(bin_dir: Path, script: str) -> None:
    exe = bin_dir / "optimum-cli"
    exe.write_text("#!/bin/sh\n# TEST STAND-IN for optimum-cli\n" + script)
    exe.chmod(0o755)


LOOKUP = ('if [ "$1 $2 $3" = "neuron cache lookup" ]; then echo "2 entries found for $4:"; '
          'echo "  tp 2, batch 1, seq 4096, bf16, inf2"; echo "  tp 8, batch 4, seq 8192, bf16, '
          'trn1"; exit 0; fi\necho "usage: optimum-cli" >&2; exit 2\n')


def test_optimum_refuses_mistral_in_one_sentence_naming_its_version_and_the_alternative(
        machine, optimum, tiny_lm, tmp_path):
    from workbook.experiments.export_search import configure
    from workbook.specs.export_search import SPEC

    _cli(machine("Inf2"), LOOKUP)
    P = SPEC.check({"model": tiny_lm, "validator": "neuron", "neuron_path": "optimum",
                    "batch_sizes": [1], "min_seq": 2048, "state_dir": str(tmp_path / "s")})
    with pytest.raises(ParameterError) as e:
        configure(P)
    msg = str(e.value)
    assert msg.startswith("Parameter neuron_path='optimum' is not allowed: nxdi (NxD Inference")
    assert "optimum-neuron 0.4.5 (the TEST STAND-IN) does not export mistral" in msg
    assert "0.1.0" in msg
    assert "llama" in msg and msg.endswith(".") and "\n" not in msg
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())  # nothing tried


def test_an_architecture_optimum_exports_takes_optimum_and_its_cache_is_looked_up(
        machine, optimum):
    _cli(machine("Trn1"), LOOKUP)
    path, why = neuron_export.choose("auto", "llama")
    assert path == "optimum" and why.startswith("optimum-neuron 0.4.5 (the TEST STAND-IN) exports llama")
    assert "NxD Inference: the export search builds mistral" in why
    note = neuron_export.cache_lookup("meta-llama/Llama-3.1-8B")
    assert note.startswith("optimum-neuron cache lookup: 2 entries found for meta-llama/")
    assert "tp 8, batch 4" in note
    assert "not looked up" in neuron_export.cache_lookup(str(Path(__file__).parent))


def test_a_failing_cache_lookup_is_a_note_not_a_stop(machine, optimum):
    _cli(machine("Inf2"), 'echo "ConnectionError: the hub is unreachable" >&2; exit 1\n')
    note = neuron_export.cache_lookup("meta-llama/Llama-3.1-8B")
    assert "exited 1 (ConnectionError: the hub is unreachable); every try compiles" in note


def test_mistral_on_inf2_takes_nxd_inference(machine, nxdi):
    machine("Inf2")
    path, why = neuron_export.choose("auto", "mistral")
    assert path == "nxdi" and "TEST STAND-IN neuronx_distributed_inference" in why
    assert neuron_export.family() == ("inf2", "sysfs neuron0/info/architecture/instance_type = Inf2")


def test_nxd_inference_on_trn2_with_sdk_2_34_is_refused_and_points_to_vllm_neuron(machine):
    machine("Trn2")  # SDK 2.34 on a Trn2: no NxD Inference to import
    with pytest.raises(ParameterError) as e:
        neuron_export.choose("nxdi", "mistral")
    msg = str(e.value)
    assert msg.startswith("Parameter neuron_path='nxdi' is not allowed: optimum (or auto) here")
    assert "on a trn2 (sysfs neuron0/info/architecture/instance_type = Trn2), Neuron SDK 2.34" in msg
    assert "vllm serve MODEL --tensor-parallel-size N" in msg
    with pytest.raises(ParameterError) as e:  # auto: neither path, both reasons in one sentence
        neuron_export.choose("auto", "mistral")
    assert "NxD Inference cannot (on a trn2" in str(e.value)
    assert "optimum-cli (optimum-neuron) is not installed" in str(e.value)


def test_nxd_inference_where_it_is_installed_on_trn2_runs(machine, nxdi):
    machine("Trn2")  # SDK 2.33 and older on a Trn2 still ship NxD Inference
    assert neuron_export.choose("auto", "mistral")[0] == "nxdi"


def test_the_validator_auto_skips_neuron_with_the_reason(machine, tiny_lm, tmp_path):
    from workbook.experiments.export_search import configure
    from workbook.specs.export_search import SPEC

    machine("Inf2")  # no SDK importable, no optimum-cli
    P = SPEC.check({"model": tiny_lm, "validator": "auto", "batch_sizes": [1], "min_seq": 2048,
                    "state_dir": str(tmp_path / "s")})
    cfg = configure(P)
    assert cfg.validator in ("cuda", "cpu") and "neuron: NxD Inference cannot (" in \
        cfg.target.reason


def test_an_nxdi_try_compiles_in_one_process_and_loads_in_another(machine, tiny_lm, tmp_path,
                                                                    monkeypatch):
    """The try's contract: tp, batch and seq reach NeuronConfig; the compile step writes the
    folder the load step (a new process) reads; the load takes the cores it is pinned to."""
    machine("Inf2")
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv(neuron.VISIBLE_ENV, "2-3")
    v = attempts.NxdiValidator("float32", keep_compiled=True)
    rec = attempts.run_attempt(v, tiny_lm, 2, 2, 64, tmp_path / "try", timeout_s=240)
    log = Path(rec["log"]).read_text()
    assert rec["status"] == "valid", log
    assert [s.split()[3] for s in rec["steps"]] == ["compile", "load"]
    assert "compiled tp=2 batch=2 seq=64" in log
    assert "one token for 2 prompts of 63 tokens" in log
    saved = json.loads((tmp_path / "try" / "compiled" / "neuron_config.json").read_text())
    assert (saved["tp_degree"], saved["batch_size"], saved["seq_len"]) == (2, 2, 64)

    monkeypatch.setenv(neuron.VISIBLE_ENV, "3")  # one core pinned: tp 2 cannot load
    rec = attempts.run_attempt(v, tiny_lm, 2, 2, 64, tmp_path / "try1", timeout_s=240)
    assert rec["status"] == "failed" and rec["detail"] == "step 2 exited with code 1"
    assert any("needs that many NeuronCores but 1 are visible" in ln for ln in rec["log_tail"])


def test_export_search_records_the_neuron_path_and_family(machine, nxdi, tiny_lm, tmp_path):
    from workbook.experiments import export_search as exp
    from workbook.specs.export_search import SPEC

    machine("Inf2")
    P = SPEC.check({"model": tiny_lm, "validator": "neuron", "batch_sizes": [1],
                    "min_seq": 2048, "dtype": "bfloat16", "state_dir": str(tmp_path / "s")})
    cfg = exp.configure(P)
    v = exp.validator(cfg)
    assert isinstance(v, attempts.NxdiValidator) and v.dtype == "bfloat16"

    class Rec:
        data, notes = {}, []

        def set(self, **kw):
            self.data.update(kw)

        def note(self, n):
            self.notes.append(n)

    rec = Rec()
    exp.start_record(cfg, rec)
    assert rec.data["neuron_path"] == "nxdi" and rec.data["instance_family"] == "inf2"
    assert "instance_type = Inf2" in rec.data["instance_family_source"]
    assert any(n.startswith("neuron path: nxdi on inf2 (sysfs neuron0") and "NxD Inference: the TEST STAND-IN" in n for n in
               rec.notes)


def test_the_search_command_line_takes_the_same_neuron_paths(machine, optimum, tiny_lm, tmp_path,
                                                             capsys):
    from workbook.llm import search_cli

    _cli(machine("Inf2"), LOOKUP)
    state = tmp_path / "state"
    base = ["run", "--model", tiny_lm, "--validator", "neuron", "--state-dir", str(state),
            "--total-cores", "2", "--cores-per-device", "1", "--heads", "8",
            "--max-positions", "4096", "--batch-sizes", "1", "--timeout", "60"]
    assert search_cli.main(base + ["--neuron-path", "optimum"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Parameter neuron_path='optimum' is not allowed: nxdi")
    assert "optimum-neuron 0.4.5 (the TEST STAND-IN) does not export mistral" in err
    assert err.count("\n") == 1
    assert not state.exists()  # refused before any try
