"""Fused projections (``workbook.llm.fuse``): the same model, fewer weight products a layer."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from workbook.llm import fuse
from workbook.llm.decode import generate, weight_bytes_per_step
from workbook.models import mistral


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def test_fused_mistral_computes_what_the_original_does(model):
    """q/k/v become one product and gate/up another in every layer; the logits of a prefill match
    and greedy decoding makes the same tokens with either KV cache."""
    fused = copy.deepcopy(model)
    assert fuse.fuse_projections(fused) == fuse.FUSED_WHAT
    for layer in fused.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert not hasattr(attn, "q_proj") and not hasattr(mlp, "gate_proj")
        assert isinstance(attn, type(model.model.layers[0].self_attn))  # still HF's attention
        assert attn.qkv_proj.out_features == sum(attn.qkv_sizes)
        assert mlp.gate_up_proj.out_features == 2 * model.config.intermediate_size
    ids = torch.randint(3, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fused(input_ids=ids).logits, model(input_ids=ids).logits)
    prompts = [list(range(5, 20)), list(range(7, 15))]
    for cache in ("dynamic", "static"):
        spec = SimpleNamespace(cache=cache, do_sample=False, seed=0)
        want = generate(model, prompts, spec, torch.device("cpu"), 10)[0]
        assert generate(fused, prompts, spec, torch.device("cpu"), 10)[0] == want


def test_fusing_keeps_the_weights_and_the_bytes_a_step_reads(model):
    """The fused weights are the originals side by side: no parameter more or less, the same
    bytes read a step, and the first rows of qkv are q's."""
    fused = copy.deepcopy(model)
    fuse.fuse_projections(fused)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(fused) == count(model)
    assert weight_bytes_per_step(fused) == weight_bytes_per_step(model)
    q = model.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(fused.model.layers[1].self_attn.qkv_proj.weight[:q.shape[0]], q)


def test_llama_fuses_the_same_way():
    """Llama's layers have the same projections: fused, and the same logits."""
    llama = _llama()
    fused = copy.deepcopy(llama)
    assert fuse.fuse_projections(fused) == fuse.FUSED_WHAT
    ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(fused(input_ids=ids).logits, llama(input_ids=ids).logits)


def test_layers_that_are_not_plain_linears_are_left_and_said(model):
    """A projection with a bias (or any module not a bias-free Linear) is left as it is, and the
    sentence counts the layers fused; a model without decoder layers is named."""
    odd = copy.deepcopy(model)
    attn = odd.model.layers[0].self_attn
    attn.q_proj = torch.nn.Linear(attn.q_proj.in_features, attn.q_proj.out_features, bias=True)
    said = fuse.fuse_projections(odd)
    n = len(odd.model.layers)
    assert said.startswith(f"projections fused in {n - 1} of {n} layers")
    assert hasattr(odd.model.layers[0].self_attn, "q_proj")
    assert hasattr(odd.model.layers[1].self_attn, "qkv_proj")
    assert fuse.fuse_projections(torch.nn.Linear(2, 2)) == \
        "projections not fused: Linear has no model.layers"


def test_the_engine_serves_fused_projections_and_says_so(tmp_path):
    """One process serves the fused model, and its description (which the report shows) says so."""
    from workbook.serve.engine import Engine, EngineConfig

    path = mistral.create_tiny(tmp_path / "m", seed=0)
    engine = Engine(EngineConfig(model=str(path)), log=lambda *_: None)
    assert engine.describe()["projections"] == fuse.FUSED_WHAT
    assert hasattr(engine.model.model.layers[0].self_attn, "qkv_proj")
