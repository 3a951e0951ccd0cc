"""What a rank does, in-process (``workbook.llm.decode``): the decode loop, the bytes a step reads.

The same loop under torchrun, against one process, is in ``test_llm_launch.py``.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from workbook.llm.decode import cache_keyword, generate, weight_bytes_per_step
from workbook.llm.launch import RunSpec
from workbook.models import mistral

PROMPTS = ["Hello there", "Tensor parallel!"]
NEW = 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_passes_the_cache_under_the_keyword_the_model_takes(model, cache):
    """The decode loop gives the KV cache under the name this transformers' forward declares
    (``cache`` where ``past_key_values`` is deprecated), so no deprecated keyword reaches it, and
    it decodes the same tokens with either cache."""

    class Old:
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_keyword(Old()) == "past_key_values"
    assert cache_keyword(model) in ("cache", "past_key_values")
    prompts = [mistral.encode(p, 512) for p in PROMPTS]
    cpu = torch.device("cpu")
    dynamic, _, _ = generate(model, prompts, RunSpec(model="m", prompts=PROMPTS), cpu, NEW)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*deprecated")
        ids, _, _ = generate(model, prompts, RunSpec(model="m", prompts=PROMPTS, cache=cache), cpu,
                             NEW)
    assert ids == dynamic and len(ids[0]) == NEW


def test_weight_bytes_per_step_leaves_out_the_input_embedding(model):
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    assert weight_bytes_per_step(model) == total - emb.numel() * emb.element_size()
