"""Accuracy metrics against hand-computed values on small tensors."""
import math

import pytest
import torch

from workbook import metrics


def test_compare_hand_computed():
    ref = torch.tensor([[1.0, 2.0], [4.0, -1.0]])
    out = torch.tensor([[1.5, 2.0], [4.0, -2.0]])
    m = metrics.compare(out, ref)
    assert m["max_abs_diff"] == pytest.approx(1.0)
    assert m["mean_abs_diff"] == pytest.approx((0.5 + 0 + 0 + 1.0) / 4)
    assert m["max_rel_err"] == pytest.approx(1.0)  # |-2 - -1| / |-1|
    assert m["rel_l2_err"] == pytest.approx(math.sqrt(0.25 + 1.0) / math.sqrt(1 + 4 + 16 + 1))
    cos0 = (1.5 * 1 + 2 * 2) / (math.hypot(1.5, 2) * math.hypot(1, 2))
    cos1 = (16 + 2) / (math.hypot(4, -2) * math.hypot(4, -1))
    assert m["cosine_min"] == pytest.approx(min(cos0, cos1))
    assert m["cosine_mean"] == pytest.approx((cos0 + cos1) / 2)
    assert set(m) == {"max_abs_diff", "mean_abs_diff", "max_rel_err", "rel_l2_err", "cosine_min",
                      "cosine_mean"}
    assert all(isinstance(v, float) for v in m.values())


def test_identical_tensors_give_zero_diff_and_cosine_one():
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    m = metrics.compare(x, x.clone())
    assert m["max_abs_diff"] == 0 and m["mean_abs_diff"] == 0
    assert m["max_rel_err"] == 0 and m["rel_l2_err"] == 0
    assert m["cosine_min"] == pytest.approx(1.0) and m["cosine_mean"] == pytest.approx(1.0)


def test_orthogonal_rows_give_cosine_zero():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    b = torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    m = metrics.compare(a, b)
    assert m["cosine_min"] == pytest.approx(0.0, abs=1e-15)
    assert m["cosine_mean"] == pytest.approx(0.0, abs=1e-15)
    cos = metrics.cosine_rows(a, b)
    assert cos.dtype == torch.float64 and cos.shape == (2,)


def test_opposite_rows_give_cosine_minus_one():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert metrics.compare(-a, a)["cosine_min"] == pytest.approx(-1.0)


def test_cosine_rows_are_over_last_dimension():
    a = torch.ones(2, 3, 4)
    b = torch.ones(2, 3, 4)
    b[1, 2] = -1.0  # one row (of 6) flipped
    cos = metrics.cosine_rows(a, b)
    assert cos.shape == (6,)
    assert cos.tolist() == pytest.approx([1, 1, 1, 1, 1, -1])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.compare(torch.zeros(2, 3), torch.zeros(3, 2))


def test_bf16_inputs_computed_in_float64():
    ref = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.bfloat16)
    out = torch.tensor([[1.0078125, 2.0, 4.0]], dtype=torch.bfloat16)  # 1 + 2**-7, exact in bf16
    m = metrics.compare(out, ref)
    assert m["max_abs_diff"] == 2 ** -7  # exact: no bf16 rounding in the metric itself
    assert m["max_rel_err"] == 2 ** -7
    assert m["mean_abs_diff"] == pytest.approx(2 ** -7 / 3, rel=1e-12)
    assert isinstance(m["cosine_min"], float) and m["cosine_min"] <= 1.0


def test_grad_tensors_are_accepted():
    a = torch.ones(2, 2, requires_grad=True)
    assert metrics.compare(a * 2, torch.full((2, 2), 2.0))["max_abs_diff"] == 0


def test_identical_tensors_with_a_zero_row_give_cosine_one():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert metrics.compare(x, x.clone())["cosine_min"] == pytest.approx(1.0)
