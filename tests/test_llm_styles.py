"""The plain-tensor parallel styles (``workbook.llm.styles``) on one process.

A stand-in mesh (rank and size only) shows what each rank keeps; that two ranks together compute
what one process computes is checked through torchrun in ``test_llm_launch.py``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from workbook.llm.styles import LocalColwiseParallel, LocalRowwiseParallel


class StandInMesh:
    """Stand-in for a 1-D DeviceMesh: the two things the styles read."""

    def __init__(self, rank, size):
        self.rank, self._size = rank, size

    def get_local_rank(self):
        return self.rank

    def size(self):
        return self._size


def _linear(i, o, bias=True):
    torch.manual_seed(0)
    return nn.Linear(i, o, bias=bias)


@pytest.mark.parametrize("rank", [0, 1])
def test_colwise_keeps_this_ranks_rows_and_their_outputs(rank):
    full = _linear(6, 8)
    x = torch.randn(3, 6)
    want = full(x)[:, rank * 4:(rank + 1) * 4]
    part = LocalColwiseParallel()._apply(_linear(6, 8), StandInMesh(rank, 2))
    assert part.weight.shape == (4, 6) and part.out_features == 4
    assert type(part.weight) is nn.Parameter  # a plain tensor, not a DTensor
    torch.testing.assert_close(part(x), want)


def test_rowwise_partial_outputs_sum_to_the_full_layer(monkeypatch):
    """Each rank's columns times its slice of the input, bias counted once: their sum is the full
    layer."""
    import torch.distributed._functional_collectives as funcol

    # one process: see each partial sum
    monkeypatch.setattr(funcol, "all_reduce", lambda t, op, group: t)
    full = _linear(8, 5)
    x = torch.randn(3, 8)
    parts = []
    for rank in (0, 1):
        layer = LocalRowwiseParallel()._apply(_linear(8, 5), StandInMesh(rank, 2))
        assert layer.weight.shape == (5, 4) and layer.in_features == 4
        parts.append(layer(x[:, rank * 4:(rank + 1) * 4]))
    torch.testing.assert_close(parts[0] + parts[1], full(x))


def test_a_dimension_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="cannot split dimension 0 of size 7 evenly over 2 ranks"):
        LocalColwiseParallel()._apply(_linear(4, 7), StandInMesh(0, 2))


def test_only_linear_layers_are_sharded():
    with pytest.raises(TypeError, match="nn.Linear only, not Embedding"):
        LocalRowwiseParallel()._apply(nn.Embedding(4, 4), StandInMesh(0, 2))
