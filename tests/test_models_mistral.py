"""The Mistral helpers (``workbook.models.mistral``): configs, the tiny checkpoint, prompt encoding.

No processes: ``load_config`` accepting a causal LM and refusing anything else in one sentence,
the byte-level encoding a checkpoint without tokenizer files gets, and the marker that says so.
"""
from __future__ import annotations

import os

import pytest

from workbook.errors import ParameterError
from workbook.models import mistral


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "mistral", seed=0))


def test_load_config_accepts_the_tiny_checkpoint(tiny):
    cfg = mistral.load_config(tiny)
    assert cfg.model_type == "mistral" and cfg.num_key_value_heads == 4


def test_load_config_rejects_a_non_causal_model(tmp_path):
    from transformers import BertConfig, ViTConfig

    BertConfig(architectures=["BertModel"]).save_pretrained(tmp_path / "bert")
    ViTConfig().save_pretrained(tmp_path / "vit")
    for name, what in (("bert", "BertModel"), ("vit", "vit")):
        with pytest.raises(ParameterError,
                           match=rf"Parameter model=.*causal language model .*{what}"):
            mistral.load_config(tmp_path / name)


def test_load_config_rejects_a_missing_path(tmp_path):
    with pytest.raises(ParameterError, match=r"Parameter model=.*nowhere.*config\.json"):
        mistral.load_config(str(tmp_path / "nowhere"))


def test_byte_encoding_round_trips_and_needs_room():
    ids = mistral.encode("héllo", 512)
    assert ids == [b + 3 for b in "héllo".encode()] and mistral.decode(ids) == "héllo"
    assert mistral.decode([0, 1, 2]) == "\ufffd" * 3
    with pytest.raises(ParameterError, match="vocab_size=100"):
        mistral.encode("x", 100)


def test_tiny_checkpoint_has_weights_and_the_encoding_marker(tiny):
    names = set(os.listdir(tiny))
    assert {"config.json", "model.safetensors", mistral.BYTE_MARKER} <= names
    assert mistral.encoder_for(tiny, mistral.load_config(tiny)).kind == "bytes"


def test_config_only_folder_has_its_seed_and_no_weights(tmp_path):
    p = mistral.create_config_only(tmp_path / "m", seed=1)
    assert mistral.random_init_seed(p) == 1 and not list(p.glob("*.safetensors"))
    assert mistral.random_init_seed(tmp_path) is None
