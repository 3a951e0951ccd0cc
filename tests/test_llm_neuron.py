"""The Neuron Mistral paths (workbook.llm.neuron, neuron_paths) against tests/standins' stand-ins.

No Neuron SDK or hardware is here. The stand-ins for transformers_neuronx and
neuronx_distributed_inference keep the documented signatures and generate on the CPU with
transformers, so these tests check that each path calls the documented API, returns the response
shape with the right usage counts and the same greedy tokens as plain transformers, and that the
chain records every failure (the seed's import included) and never falls back unless told to.
Every number here is a CPU number; the results say so (standin=True).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_imports_without
from workbook.backends import neuron
from workbook.errors import ParameterError, WorkbookError
from workbook.llm import neuron as neuron_llm
from workbook.llm import neuron_paths
from workbook.llm.neuron import NXDI, TNX, run_chain
from workbook.models import mistral
from workbook.specs.mistral_tp import SPEC

STANDINS = Path(__file__).resolve().parent / "standins"
PROMPTS = ["Hello Neuron", "tp=2 on an inf2", "Mistral", "batch of four"]
MAX_NEW = 6


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random Mistral (hidden 64, 2 layers, 8 heads, 4 KV heads, vocab 512), no tokenizer
    files."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=4,
                        intermediate_size=128, vocab_size=512, max_position_embeddings=256)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_mistral")
    MistralForCausalLM(cfg).eval().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(ckpt):
    """Greedy new tokens from plain transformers on the CPU, one prompt at a time, cut after the
    first EOS."""
    from transformers import MistralForCausalLM

    model = MistralForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    out = {}
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([mistral.encode(p, 512)])  # the byte encoding every path shares
            new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                                 do_sample=False, pad_token_id=2)[0, ids.shape[1]:].tolist()
            out[p] = new[: new.index(2) + 1] if 2 in new else new
    return out


def _drop_sdk_modules():
    for name in [n for n in sys.modules if n.split(".")[0] in neuron_llm.NEURON_PACKAGES]:
        del sys.modules[name]


@pytest.fixture
def clean(monkeypatch):
    """No Neuron SDK module imported or importable, no core pinning; none stays imported after."""
    _drop_sdk_modules()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != STANDINS])
    monkeypatch.delenv(neuron.VISIBLE_ENV, raising=False)
    yield
    _drop_sdk_modules()


@pytest.fixture
def sysfs(neuron_tree, monkeypatch):
    """A fake neuron_device tree with 2 devices x 2 NeuronCores."""
    root = neuron_tree
    monkeypatch.setenv(neuron.SYSFS_ENV, str(root))
    return root


@pytest.fixture
def sdk(clean, sysfs, monkeypatch):
    """The stand-ins importable (sys.path of this test only) and 4 fake NeuronCores."""
    monkeypatch.syspath_prepend(str(STANDINS))
    import neuronx_distributed_inference
    import transformers_neuronx

    assert transformers_neuronx.STANDIN is True and neuronx_distributed_inference.STANDIN is True
    return transformers_neuronx, neuronx_distributed_inference


@pytest.fixture
def seen(monkeypatch):
    """The new-token ids of every generation the chain turns into a response (an encoder spy)."""
    ids = []
    real = neuron_paths._Encoder.completion

    def spy(self, new_ids):
        ids.append(list(new_ids))
        return real(self, new_ids)

    monkeypatch.setattr(neuron_paths._Encoder, "completion", spy)
    return ids


def spec(ckpt, **kw):
    base = dict(model_path=ckpt, prompts=PROMPTS[:2], max_new_tokens=MAX_NEW, amp="f32",
                tp_degree=2, n_positions=64, warmup=0)
    return {**base, **kw}


def check_generations(result, reference, prompts, seen, ckpt):
    gens = result["results"]["generations"]
    assert [g["prompt"] for g in gens] == prompts
    for g, new in zip(gens, seen[-len(prompts):]):
        ref = reference[g["prompt"]]
        assert new[: len(ref)] == ref  # the same greedy tokens as plain transformers
        assert set(g) == {"text", "prompt", "model", "usage", "finish_reason"}
        n = len(g["prompt"].encode())
        assert g["usage"] == {"prompt_tokens": n, "completion_tokens": len(ref),
                              "total_tokens": n + len(ref)}
        assert g["finish_reason"] == ("stop" if ref[-1] == 2 else "length")
        assert g["text"] == mistral.decode([t for t in ref if t != 2])
        assert g["model"] == Path(ckpt).name


# ------------------------------------------------------------------------------------ the two paths
def test_transformers_neuronx_path_through_its_standin(sdk, ckpt, reference, seen):
    tnx, _ = sdk
    r = run_chain([TNX], spec(ckpt, repeats=5))  # medians of 5: a busy CPU cannot invert 1 and 6
    assert r["path"] == TNX and r["standin"] is True and r["backend"] == "neuron-standin"
    assert r["headline"].startswith("Numbers from the transformers-neuronx path "
                                    "(transformers-neuronx MistralForSampling, legacy: Neuron SDK 2.25 and "
                                        "older) - TEST STAND-IN")
    assert r["notes"][0].startswith(neuron_llm.STANDIN_NOTE) and "fallback" not in r
    assert [(a["path"], a["ok"], a["error"]) for a in r["attempts"]] == [(TNX, True, None)]
    res = r["results"]
    assert res["load_s"] > 0 and res["compile_s"] > 0 and res["ttft_ms"] > 0
    assert res["e2e_ms"] > 0 and res["decode_steps"] == MAX_NEW
    assert res["decode_tokens_per_s"] > 0 and res["tokenizer"] == "bytes"
    check_generations(r, reference, PROMPTS[:2], seen, ckpt)
    # the documented calls, with the documented arguments
    load = [c for c in tnx.CALLS if c["fn"] == "MistralForSampling.from_pretrained"][-1]
    assert load == {"fn": "MistralForSampling.from_pretrained", "path": ckpt, "batch_size": 1,
                    "tp_degree": 2, "amp": "f32", "n_positions": 64,
                    "context_length_estimate": None}
    samples = [c for c in tnx.CALLS if c["fn"] == "MistralForSampling.sample"]
    assert {c["top_k"] for c in samples} == {1}  # greedy
    # 5 repeats x (1 one-token + 1 full) on the first prompt, then the second prompt once
    assert [c["sequence_length"] - c["shape"][1] for c in samples] == [1, MAX_NEW] * 5 + [MAX_NEW]


def test_nxdi_path_through_its_standin(sdk, ckpt, reference, seen, tmp_path):
    _, nxdi = sdk
    compiled = tmp_path / "compiled"
    r = run_chain(NXDI, spec(ckpt, prompts=PROMPTS, batch_size=2, compiled_dir=str(compiled)))
    assert r["path"] == NXDI and r["standin"] is True and r["backend"] == "neuron-standin"
    assert "NxDI NeuronMistralForCausalLM" in r["headline"]
    assert "TEST STAND-IN" in r["headline"]
    check_generations(r, reference, PROMPTS, seen, ckpt)  # two batches of two, padded on the right
    saved = json.loads((compiled / "neuron_config.json").read_text())
    assert (saved["tp_degree"], saved["batch_size"], saved["seq_len"], saved["torch_dtype"]) == (
        2, 2, 64, "float32")
    fns = [c["fn"] for c in nxdi.CALLS]
    assert (fns.index("NeuronMistralForCausalLM.compile")
            < fns.index("NeuronMistralForCausalLM.load"))
    gens = [c for c in nxdi.CALLS if c["fn"] == "HuggingFaceGenerationAdapter.generate"]
    assert {c["padding_side"] for c in gens} == {"right"}
    assert {tuple(c["shape"])[0] for c in gens} == {2}
    res = r["results"]
    assert res["batch_size"] == 2 and res["load_s"] > 0 and res["compile_s"] >= 0


def test_amp_reaches_the_sdk_calls(sdk, ckpt, tmp_path):
    """amp=bf16 is what MistralForSampling gets (the model runs in bf16) and NxDI's torch_dtype."""
    tnx, _ = sdk
    r = run_chain([TNX], spec(ckpt, amp="bf16", prompts=PROMPTS[:1]))
    assert r["results"]["amp"] == "bf16" and len(r["results"]["generations"]) == 1
    to_neuron = [c for c in tnx.CALLS if c["fn"] == "MistralForSampling.to_neuron"][-1]
    assert (to_neuron["amp"], to_neuron["dtype"]) == ("bf16", "torch.bfloat16")
    run_chain([NXDI], spec(ckpt, amp="bf16", prompts=PROMPTS[:1],
                           compiled_dir=str(tmp_path / "c")))
    saved = json.loads((tmp_path / "c" / "neuron_config.json").read_text())
    assert saved["torch_dtype"] == "bfloat16"


# ------------------------------------------------------------------------------- failures on record
def test_fallback_only_when_allowed_and_then_stated(sdk, ckpt, monkeypatch):
    tnx, _ = sdk
    monkeypatch.setitem(sys.modules, "neuronx_distributed_inference", None)  # NxDI unimportable
    r = run_chain([NXDI, TNX], spec(ckpt, prompts=PROMPTS[:1]), allow_fallback=True)
    assert r["path"] == TNX and r["standin"] is True
    failed, ok = r["attempts"]
    assert (failed["path"], failed["ok"], failed["stage"]) == (NXDI, False, "import")
    assert failed["error"].startswith(
        "ModuleNotFoundError: No module named 'neuronx_distributed_inference")
    assert failed["seconds"] >= 0 and ok["ok"] is True
    assert r["fallback"].startswith("the nxdi path failed at import (ModuleNotFoundError")
    assert r["fallback"].endswith(
        "the numbers come from the transformers-neuronx path instead.")
    assert "FALLBACK: the nxdi path failed" in r["headline"]

    n = len(tnx.CALLS)
    with pytest.raises(WorkbookError) as e:
        run_chain([NXDI, TNX], spec(ckpt, prompts=PROMPTS[:1]))  # allow_fallback defaults to False
    msg = str(e.value)
    assert msg.startswith("The nxdi path failed at import: ModuleNotFoundError")
    assert "allow_fallback=False" in msg
    assert [a["path"] for a in e.value.attempts] == [NXDI]
    assert len(tnx.CALLS) == n  # transformers-neuronx was never tried


def test_seed_import_fails_against_the_standin_and_the_chain_records_it(sdk, ckpt):
    from transformers_neuronx import MistralForSampling  # the documented class is there

    assert MistralForSampling.__module__ == "transformers_neuronx.mistral.model"
    with pytest.raises(ImportError, match="cannot import name 'MistralForCausalLM'"):
        from transformers_neuronx.mistral.model import MistralForCausalLM  # noqa: F401 (the seed's)

    def seed(spec, attempt):
        from transformers_neuronx.mistral.model import MistralForCausalLM

        return MistralForCausalLM.from_pretrained(spec.model_path, tp_degree=spec.tp_degree)

    r = run_chain(["seed", TNX], spec(ckpt, prompts=PROMPTS[:1]), allow_fallback=True,
                  paths={"seed": seed})
    first = r["attempts"][0]
    assert (first["path"], first["ok"], first["stage"]) == ("seed", False, "import")
    assert first["error"].startswith("ImportError: cannot import name 'MistralForCausalLM' from "
                                     "'transformers_neuronx.mistral.model'")
    assert r["path"] == TNX and r["standin"] is True
    assert "the seed path failed at import (ImportError" in r["fallback"]
    with pytest.raises(WorkbookError, match=r"The seed path failed at import: ImportError: cannot "
                                            r"import name 'MistralForCausalLM'"):
        run_chain(["seed"], spec(ckpt), paths={"seed": seed})


def test_failures_after_import_keep_their_stage(sdk, ckpt):
    # tp_degree=3 does not divide 8 heads: both SDKs refuse at load; nothing produced numbers
    r = run_chain([NXDI, TNX], spec(ckpt, tp_degree=3, prompts=PROMPTS[:1]), allow_fallback=True)
    assert r["path"] is None and r["results"] is None and r["backend"] is None
    assert "fallback" not in r
    assert [(a["path"], a["stage"]) for a in r["attempts"]] == [(NXDI, "load"), (TNX, "load")]
    assert all(a["error"].startswith("ValueError:")
               and "does not divide the 8 attention heads" in a["error"] for a in r["attempts"])
    assert r["headline"].startswith(
        "No Neuron path produced numbers: nxdi failed at load (ValueError")
    # transformers-neuronx cannot batch prompts of different lengths (sample() has no mask)
    r = run_chain([TNX, NXDI], spec(ckpt, batch_size=2), allow_fallback=True)
    assert r["attempts"][0]["stage"] == "encode"
    assert "sample() takes no attention mask" in r["attempts"][0]["error"]
    assert r["path"] == NXDI and len(r["results"]["generations"]) == 2


def test_caller_errors_raise_before_any_attempt(sdk, ckpt):
    """The spec's rules are the first cell's (mistral_tp's configure, with the NeuronCores of the
    fake sysfs); run_chain itself only refuses a path or a field it does not know."""
    from workbook.experiments.mistral_tp import configure

    tnx, _ = sdk
    base = {"model": ckpt, "backend": "neuron", "tp_degree": 2, "max_tokens": 4}
    for kw, sentence in (
            ({"sequence_length": 10}, "Parameter sequence_length=10 is not allowed: at least the "
                                      "longest prompt (52 tokens, bytes) + max_tokens (4) = 56"),
            ({"prompts": ["a", "b"]}, "Parameter batch_size=1 is not allowed: at least the number "
                                      "of prompts (2)"),
            ({"tp_degree": 3}, "Parameter tp_degree=3 is not allowed: one of 1, 2, 4, 8 ("),
            ({"dtype": "fp16"}, "Parameter dtype='fp16' is not allowed: one of float32, "
                                "float16, bfloat16.")):
        with pytest.raises(ParameterError) as e:
            configure(SPEC.check({**base, **kw}))
        assert str(e.value).startswith(sentence)
    with pytest.raises(KeyError, match="cpu"):
        run_chain([TNX, "cpu"], spec(ckpt))
    with pytest.raises(TypeError, match="tp"):
        run_chain([TNX], {**spec(ckpt), "tp": 2})
    assert tnx.CALLS == []


def test_mistral_tp_first_cell_counts_the_neuroncores(sdk, ckpt):
    """On the neuron backend tp_degree is held against the visible NeuronCores before anything
    loads (4 here)."""
    from workbook.experiments.mistral_tp import configure

    p = {"model": ckpt, "backend": "neuron"}
    cfg = configure(SPEC.check({**p, "tp_degree": 4}))
    assert cfg.target.name == "neuron" and cfg.tp_mechanism == "neuron"
    with pytest.raises(ParameterError) as e:
        configure(SPEC.check({**p, "tp_degree": 8}))
    assert str(e.value) == ("Parameter tp_degree=8 is not allowed: at most the 4 NeuronCores "
                            "available.")


# ------------------------------------------------------------------------------------ availability
def test_available(clean, sysfs, monkeypatch, tmp_path):
    ok, why = neuron_llm.available(TNX)
    assert not ok and why.startswith(neuron_llm.SDK_HINT[TNX]) and "ModuleNotFoundError" in why
    ok, why = neuron_llm.available(NXDI)
    assert not ok and why.startswith(neuron_llm.SDK_HINT[NXDI])
    ok, why = neuron_llm.probe([NXDI, TNX])()
    assert not ok and why.startswith("no Neuron path can run here (nxdi: ")
    monkeypatch.syspath_prepend(str(STANDINS))
    assert neuron_llm.available(TNX) == (
        True, "the TEST STAND-IN transformers_neuronx and 4 NeuronCores visible")
    assert neuron_llm.probe([NXDI, TNX])() == (
        True, "nxdi: the TEST STAND-IN neuronx_distributed_inference and 4 NeuronCores visible")
    monkeypatch.setenv(neuron.VISIBLE_ENV, "2")
    assert neuron_llm.available(TNX)[1].endswith("and 1 NeuronCores visible")
    monkeypatch.setenv(neuron.SYSFS_ENV, str(tmp_path / "nothing"))
    assert neuron_llm.available(TNX) == (False, neuron.NO_CORES)


def test_a_trn2_without_the_libraries_is_pointed_to_vllm_neuron(clean, sysfs, monkeypatch):
    """Neither LLM library on a Trn2 (SDK 2.34 supports neither there): the sentence names the
    family, where it was read, and the way that works: vLLM-Neuron, measured by serving's url."""
    arch = sysfs / "neuron0" / "info" / "architecture"
    arch.mkdir(parents=True)
    (arch / "device_name").write_text("Trainium2\n")
    ok, why = neuron_llm.available(NXDI)
    assert not ok and why.startswith("on a trn2 (sysfs neuron0/info/architecture/device_name = "
                                     "Trainium2), Neuron SDK 2.34 and later support neither")
    assert "vllm serve MODEL" in why and "workbook run serving -p url" in why
    ok, why = neuron_llm.probe([NXDI, TNX])()
    assert not ok and why.count("vLLM-Neuron") == 2
    with pytest.raises(ParameterError, match="path='cpu'"):
        neuron_llm.available("cpu")


def test_modules_import_without_torch_or_the_sdk():
    assert_imports_without(["workbook.llm.neuron", "workbook.llm.neuron_paths"],
                           {"torch", "transformers", "transformers_neuronx",
                            "neuronx_distributed_inference"})


# ------------------------------------------------------------------------------------ the stand-ins
def test_standins_enforce_documented_signatures(sdk, ckpt, tmp_path):
    from neuronx_distributed_inference.models.config import NeuronConfig
    from neuronx_distributed_inference.models.mistral.modeling_mistral import (
        MistralInferenceConfig,
        NeuronMistralForCausalLM,
    )
    from neuronx_distributed_inference.utils.hf_adapter import (
        HuggingFaceGenerationAdapter,
        load_pretrained_config,
    )
    from transformers_neuronx import MistralForSampling

    with pytest.raises(ValueError, match="amp='fp16'"):
        MistralForSampling.from_pretrained(ckpt, amp="fp16")
    with pytest.raises(TypeError, match="n_position"):
        MistralForSampling.from_pretrained(ckpt, n_position=64)
    with pytest.raises(ValueError, match="n_positions.*context_length_estimate"):
        MistralForSampling.from_pretrained(ckpt, n_positions=64, context_length_estimate=128)
    m = MistralForSampling.from_pretrained(ckpt, batch_size=1, tp_degree=4, amp="f32",
                                           n_positions=32)
    x = torch.tensor([[5, 6, 7]])
    with pytest.raises(RuntimeError, match="to_neuron"):
        m.sample(x, sequence_length=8)
    m.to_neuron()
    with pytest.raises(ValueError, match=r"Model not compiled for batch_size : 2"):
        m.sample(torch.cat([x, x]), sequence_length=8)
    with pytest.raises(ValueError, match="n_positions=32"):
        m.sample(x, sequence_length=33)
    assert m.sample(x, sequence_length=8, top_k=1).shape == (1, 8)  # prompt included

    with pytest.raises(TypeError, match="seq_length"):
        NeuronConfig(tp_degree=2, seq_length=64)
    nc = NeuronConfig(tp_degree=2, batch_size=1, seq_len=16, torch_dtype=torch.float32)
    config = MistralInferenceConfig(nc, load_config=load_pretrained_config(ckpt))
    assert config.num_key_value_heads == 4
    assert nc.torch_dtype == torch.float32  # the user's dtype wins
    model = NeuronMistralForCausalLM(ckpt, config)
    with pytest.raises(FileNotFoundError, match="holds no compiled model"):
        model.load(str(tmp_path / "empty"))
    model.compile(str(tmp_path / "c"))
    model.load(str(tmp_path / "c"))
    adapter = HuggingFaceGenerationAdapter(model)
    with pytest.raises(ValueError, match="does not fit seq_len=16"):
        adapter.generate(x, max_new_tokens=14)
    with pytest.raises(TypeError, match="num_beams"):
        adapter.generate(x, max_new_tokens=2, num_beams=2)
    assert adapter.generate(x, max_new_tokens=2).shape == (1, 5)


def test_prompt_encoding_tokenizer_or_bytes(tmp_path):
    """AutoTokenizer when the model folder has tokenizer files; else the shared byte encoding
    (byte + 3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 300, "eos_token_id": 2}))
    enc = neuron_paths._Encoder(str(tmp_path))
    assert enc.kind == "bytes" and enc.encode("hé") == [104 + 3, 0xC3 + 3, 0xA9 + 3]
    assert enc.pad_id == 2
    assert enc.decode([104 + 3, 105 + 3, 33 + 3]) == "hi!"
    assert enc.completion([104 + 3, 2, 105 + 3]) == ([104 + 3, 2], "h", "stop")
    assert enc.completion([104 + 3, 105 + 3]) == ([104 + 3, 105 + 3], "hi", "length")

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "neuron": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>",
                            eos_token="</s>").save_pretrained(tmp_path)
    enc = neuron_paths._Encoder(str(tmp_path))
    assert enc.kind == "AutoTokenizer" and enc.encode("hello neuron") == [3, 4]
    assert enc.completion([4, 3, 2, 4]) == ([4, 3, 2], "neuron hello", "stop")
