"""Accuracy metrics shared by the experiments: how far an output is from a reference.

All comparisons are done in float64 so the metric itself adds no rounding; per-row cosine is over
the last dimension (one row = one position, one image embedding, one token).
"""
from __future__ import annotations


def compare(out, ref, *, eps: float = 1e-12) -> dict:
    """Max/mean absolute difference, max relative error and per-row cosine of ``out`` vs ``ref``."""
    import torch

    if out.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(out.shape)} vs {tuple(ref.shape)}")
    a = out.detach().to("cpu", torch.float64)
    b = ref.detach().to("cpu", torch.float64)
    diff = (a - b).abs()
    rel = diff / b.abs().clamp_min(eps)
    cos = cosine_rows(a, b)
    return {
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "max_rel_err": rel.max().item(),
        "rel_l2_err": (torch.linalg.vector_norm(a - b)
                       / torch.linalg.vector_norm(b).clamp_min(eps)).item(),
        "cosine_min": cos.min().item(),
        "cosine_mean": cos.mean().item(),
    }


def cosine_rows(a, b):
    """Cosine similarity of matching rows (last dimension) of two tensors, as float64."""
    import torch

    a = a.detach().to("cpu", torch.float64).reshape(-1, a.shape[-1])
    b = b.detach().to("cpu", torch.float64).reshape(-1, b.shape[-1])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
    both_zero = (a == 0).all(dim=-1) & (b == 0).all(dim=-1)
    return torch.where(both_zero, torch.ones_like(cos), cos)  # two zero rows agree exactly
