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
