"""The mistral_tp experiment's own logic (``workbook.experiments.mistral_tp``), on hand-made run results.

The runs themselves are tested through torchrun in ``test_tp.py`` and through papermill in ``test_notebooks.py``.
"""
from __future__ import annotations

import pytest
import torch

from workbook.experiments.mistral_tp import correctness


def _res(logits, ids, tok_s, world=1):
    return {"logits": torch.tensor(logits), "generated_ids": ids, "decode_tokens_s_total": tok_s, "world_size": world}


def test_correctness_reads_the_difference_against_the_logits_scale():
    one = _res([[[4.0, -2.0], [1.0, 3.0]]], [[5, 6, 7], [5, 6, 8]], 100.0)
    tp = _res([[[4.0, -2.5], [1.0, 0.5]]], [[5, 6, 7], [5, 9, 8]], 150.0, world=2)
    c = correctness(tp, one)
    assert c["logits_max_abs_diff"] == 2.5 and c["logits_max_abs"] == 4.0 and c["logits_max_rel_diff"] == 0.625
    assert c["fixed_forward_argmax_agree"] == 0.5  # position 0 agrees (class 0); position 1 does not
    assert c["tokens_identical"] is False and c["first_differing_token"] == 1
    assert c["decode_speedup_over_one_process"] == pytest.approx(1.5) and c["tp_degree"] == 2


def test_identical_runs_have_no_differing_token():
    one = _res([[[1.0, 2.0]]], [[1, 2]], 10.0)
    c = correctness(_res([[[1.0, 2.0]]], [[1, 2]], 10.0, world=2), one)
    assert c["tokens_identical"] is True and c["first_differing_token"] is None and c["logits_max_abs_diff"] == 0


# ---- configure: the first cell's checks ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from workbook.models import mistral

    return str(mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0))


def _params(model, **kw):
    from workbook.params import notebook_parameters
    from workbook.paths import notebooks_dir

    p = {n: q.default for n, q in notebook_parameters(notebooks_dir() / "mistral_tp.ipynb").items()}
    p.update(model=model, backend="cpu", tp_degree=1)
    p.update(kw)
    return p


def _refusal(model, **kw) -> str:
    from workbook.errors import ParameterError
    from workbook.experiments.mistral_tp import configure

    with pytest.raises(ParameterError) as e:
        configure(**_params(model, **kw))
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg
    return msg


def test_booleans_given_as_text_by_plain_papermill_mean_what_they_say(tiny_path):
    """papermill passes ``-p allow_fallback false`` as the text "false"; bool() of it would be True."""
    from workbook.experiments.mistral_tp import configure

    cfg = configure(**_params(tiny_path, allow_fallback="false", compare_single="False", compile="false"))
    assert cfg.allow_fallback is False and cfg.compare_single is False and cfg.compile is False
    assert configure(**_params(tiny_path, allow_fallback="true")).allow_fallback is True


@pytest.mark.parametrize("kw, sentence", [
    (dict(allow_fallback="maybe"), "Parameter allow_fallback='maybe' is not allowed: true or false."),
    (dict(compare_single=1), "Parameter compare_single=1 is not allowed: true or false."),
    (dict(compile="yes"), "Parameter compile='yes' is not allowed: true or false."),
    (dict(seed=-1), "Parameter seed=-1 is not allowed: an integer from 0 to 4294967295."),
    (dict(seed="abc"), "Parameter seed='abc' is not allowed: an integer from 0 to 4294967295."),
    (dict(max_tokens=0), "Parameter max_tokens=0 is not allowed: an integer of at least 1."),
    (dict(top_k=-1), "Parameter top_k=-1 is not allowed: an integer of at least 0."),
    (dict(temperature=0), "Parameter temperature=0 is not allowed: a positive number."),
    (dict(prompts=[]), "Parameter prompts=[] is not allowed: a non-empty list of non-empty strings."),
    (dict(prompts=["hi", ""]), "Parameter prompts=['hi', ''] is not allowed: a non-empty list of non-empty strings."),
    (dict(neuron_paths=["tnx"]), "Parameter neuron_paths=['tnx'] is not allowed: a non-empty list from nxdi, "
                                 "transformers-neuronx."),
    (dict(cache="paged"), "Parameter cache='paged' is not allowed: dynamic or static."),
    # the default prompt is 52 bytes (the tiny model's byte-level encoding)
    (dict(sequence_length=60, max_tokens=16), "Parameter sequence_length=60 is not allowed: at least the longest "
                                              "prompt (52 tokens, bytes) + max_tokens (16) = 68, or fewer max_tokens."),
])
def test_bad_values_are_one_sentence_before_loading(tiny_path, kw, sentence):
    assert _refusal(tiny_path, **kw) == sentence


def test_tp_plan_that_would_need_replicated_kv_heads_is_refused_in_the_first_cell(tmp_path):
    from workbook.models import mistral

    mqa = str(mistral.create_tiny(tmp_path / "mqa", seed=1, num_attention_heads=4, num_key_value_heads=1))
    msg = _refusal(mqa, tp_degree=2, tp_mechanism="tp_plan")
    assert msg.startswith("Parameter tp_mechanism='tp_plan' is not allowed: auto or parallelize_module at "
                          "tp_degree=2") and "cannot replicate the model's 1 KV heads over 2 ranks" in msg
