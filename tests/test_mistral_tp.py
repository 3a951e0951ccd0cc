"""The mistral_tp experiment's own logic (``workbook.experiments.mistral_tp``), no processes.

``configure`` is the first cell's checks: every rule between the parameters, the model and the
machine in one sentence before anything loads. The runs themselves are tested through torchrun in
``test_llm_launch.py`` and through the runner in ``test_report_content.py``.
"""
from __future__ import annotations

import pytest
import torch

from workbook.errors import ParameterError
from workbook.experiments.mistral_tp import configure, correctness
from workbook.specs.mistral_tp import SPEC


def _res(logits, ids, tok_s, world=1):
    return {"logits": torch.tensor(logits), "generated_ids": ids, "decode_tokens_s_total": tok_s,
            "world_size": world}


def test_correctness_reads_the_difference_against_the_logits_scale():
    one = _res([[[4.0, -2.0], [1.0, 3.0]]], [[5, 6, 7], [5, 6, 8]], 100.0)
    tp = _res([[[4.0, -2.5], [1.0, 0.5]]], [[5, 6, 7], [5, 9, 8]], 150.0, world=2)
    c = correctness(tp, one)
    assert c["logits_max_abs_diff"] == 2.5 and c["logits_max_abs"] == 4.0
    assert c["logits_max_rel_diff"] == 0.625
    assert c["fixed_forward_argmax_agree"] == 0.5  # position 0 agrees (class 0); 1 does not
    assert c["tokens_identical"] is False and c["first_differing_token"] == 1
    assert c["decode_speedup_over_one_process"] == pytest.approx(1.5) and c["tp_degree"] == 2


def test_identical_runs_have_no_differing_token():
    one = _res([[[1.0, 2.0]]], [[1, 2]], 10.0)
    c = correctness(_res([[[1.0, 2.0]]], [[1, 2]], 10.0, world=2), one)
    assert c["tokens_identical"] is True and c["first_differing_token"] is None
    assert c["logits_max_abs_diff"] == 0


# ---- configure: the first cell's checks ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from workbook.models import mistral

    return str(mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0))


def _configure(model, **kw):
    """configure after the spec's checks, as the first cell runs them (papermill's text too)."""
    return configure(SPEC.check({"model": model, "backend": "cpu", "tp_degree": 1, **kw}))


def _refusal(model, **kw) -> str:
    with pytest.raises(ParameterError) as e:
        _configure(model, **kw)
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg
    return msg


def test_booleans_given_as_text_by_plain_papermill_mean_what_they_say(tiny_path):
    """papermill passes ``-p allow_fallback false`` as the text "false"; bool() of it is True."""
    cfg = _configure(tiny_path, allow_fallback="false", compare_single="False", compile="false")
    assert cfg.p.allow_fallback is False and cfg.p.compare_single is False
    assert cfg.p.compile is False
    assert _configure(tiny_path, allow_fallback="true").p.allow_fallback is True


@pytest.mark.parametrize("kw, sentence", [
    (dict(allow_fallback="maybe"), "Parameter allow_fallback='maybe' is not allowed: true or "
                                   "false."),
    (dict(compare_single=1), "Parameter compare_single=1 is not allowed: true or false."),
    (dict(compile="yes"), "Parameter compile='yes' is not allowed: true or false."),
    (dict(seed=-1), "Parameter seed=-1 is not allowed: an integer from 0 to 4294967295."),
    (dict(seed="abc"), "Parameter seed='abc' is not allowed: an integer from 0 to 4294967295."),
    (dict(max_tokens=0), "Parameter max_tokens=0 is not allowed: an integer of at least 1."),
    (dict(top_k=-1), "Parameter top_k=-1 is not allowed: an integer of at least 0."),
    (dict(top_p=1.5), "Parameter top_p=1.5 is not allowed: a number in (0, 1]."),
    (dict(temperature=0), "Parameter temperature=0 is not allowed: a positive number."),
    (dict(prompts=[]), "Parameter prompts=[] is not allowed: a non-empty list of non-empty "
                       "strings."),
    (dict(prompts=["hi", ""]), "Parameter prompts=['hi', ''] is not allowed: a non-empty list of "
                               "non-empty strings."),
    (dict(neuron_paths=["tnx"]), "Parameter neuron_paths=['tnx'] is not allowed: a non-empty "
                                 "list of names from nxdi, transformers-neuronx."),
    (dict(cache="paged"), "Parameter cache='paged' is not allowed: one of dynamic, static."),
    (dict(backend="tpu"), "Parameter backend='tpu' is not allowed: one of auto, neuron, cuda, "
                          "cpu."),
    (dict(tp_mechanism="magic"), "Parameter tp_mechanism='magic' is not allowed: one of "
                                 "parallelize_module, local_shards, tp_plan, auto."),
    (dict(allreduce="mpi"), "Parameter allreduce='mpi' is not allowed: one of nccl, symm_mem."),
    (dict(compile=True), "Parameter compile=True is not allowed: False here: a compiled decode "
                         "step needs backend cuda and cache static."),
    (dict(allreduce="symm_mem"), "Parameter allreduce='symm_mem' is not allowed: nccl here: "
                                 "symm_mem needs backend cuda, compile True and tp_degree > 1."),
    # the default prompt is 52 bytes (the tiny model's byte-level encoding)
    (dict(sequence_length=60, max_tokens=16), "Parameter sequence_length=60 is not allowed: at "
     "least the longest prompt (52 tokens, bytes) + max_tokens (16) = 68, or fewer max_tokens."),
    (dict(prompts=["a", "b"]), "Parameter batch_size=1 is not allowed: at least the number of "
     "prompts (2): one generation runs batch_size sequences, the prompts cycled to fill it."),
])
def test_bad_values_are_one_sentence_before_loading(tiny_path, kw, sentence):
    assert _refusal(tiny_path, **kw) == sentence


def test_prompts_are_cycled_to_fill_the_batch(tiny_path):
    cfg = _configure(tiny_path, prompts=["a", "b"], batch_size=3)
    assert cfg.prompts == ["a", "b", "a"]


def test_a_degree_that_does_not_split_the_mlp_is_refused_in_the_first_cell(tmp_path):
    """The issue's case: heads and KV heads split over 3 ranks, intermediate_size 200 does not."""
    from workbook.models import mistral

    odd = str(mistral.create_tiny(tmp_path / "odd", seed=0, hidden_size=48, num_attention_heads=6,
                                  num_key_value_heads=6, intermediate_size=200))
    msg = _refusal(odd, tp_degree=3)
    assert msg.startswith("Parameter tp_degree=3 is not allowed: one of 1, 2 (") and \
        "MLP width (intermediate_size=200)" in msg


def test_tp_plan_that_would_need_replicated_kv_heads_is_refused_in_the_first_cell(tmp_path):
    from workbook.models import mistral

    mqa = str(mistral.create_tiny(tmp_path / "mqa", seed=1, num_attention_heads=4,
                                  num_key_value_heads=1))
    msg = _refusal(mqa, tp_degree=2, tp_mechanism="tp_plan")
    assert msg == ("Parameter tp_mechanism='tp_plan' is not allowed: parallelize_module or "
                   "local_shards at tp_degree=2: transformers' tp_plan cannot replicate the "
                   "model's 1 key/value heads over 2 ranks.")
    cfg = _configure(mqa, tp_degree=2, tp_mechanism="auto")
    assert cfg.tp_mechanism == "parallelize_module"
    assert any(n.startswith("tp_mechanism auto: parallelize_module, since") for n in cfg.notes)


def test_more_gloo_ranks_than_cpu_cores_run_with_a_note(tiny_path, monkeypatch):
    """tp 4 on one usable core: the run goes ahead (gloo ranks share the core), said in a note."""
    from workbook import targets

    monkeypatch.setattr(targets, "usable_cpus", lambda: 1)
    cfg = _configure(tiny_path, tp_degree=4)
    assert cfg.layout.tp_degree == 4
    assert any("4 ranks on 1 CPU cores: the ranks share cores, so the timings are oversubscribed"
               in n for n in cfg.notes)
