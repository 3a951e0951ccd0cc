"""Error statistics against an fp64 reference, in units that show rounding quality (ULP).

Why: a kernel that rounds once (GELU on the fp32 accumulator) and eager PyTorch (which rounds the
pre-activation too) have nearly the same *max* error; the difference shows in the mean ULP error and
the share of outputs more than half an ULP off. The verdict is the rule FlashAttention and PyTorch
use: ``err_kernel <= k * err_eager_same_dtype + atol`` with k = 2.

ULP of a reference value ``r`` in dtype ``d``: ``2**floor(log2 |r|) * eps(d)``, with ``|r|`` clamped
below at ``floor * rms(ref)`` so that outputs near zero (GELU's negative tail) do not dominate.
"""
from __future__ import annotations

import torch

FLOOR = 1e-3
HIST_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, float("inf"))


def ulp(ref: torch.Tensor, dtype: torch.dtype, floor: float = FLOOR) -> torch.Tensor:
    """Unit in the last place of ``dtype`` at each reference value (float64)."""
    r = ref.detach().to(torch.float64).abs()
    rms = r.square().mean().sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    r = torch.maximum(r, floor * rms).clamp_min(torch.finfo(dtype).tiny)
    return torch.exp2(torch.floor(torch.log2(r))) * torch.finfo(dtype).eps


def ulp_errors(out: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """|out - ref| in ULPs of ``dtype``, flattened (float64, on the reference's device)."""
    diff = (out.detach().to(ref64.device, torch.float64) - ref64.detach().to(torch.float64)).abs()
    return (diff / ulp(ref64, dtype)).flatten()


def stats(out: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype) -> dict:
    """max/mean abs error, mean/p99 ULP and the share of outputs more than 0.5 ULP off."""
    if out.shape != ref64.shape:
        raise ValueError(f"shapes differ: {tuple(out.shape)} vs {tuple(ref64.shape)}")
    diff = (out.detach().to(ref64.device, torch.float64) - ref64.detach().to(torch.float64)).abs()
    u = (diff / ulp(ref64, dtype)).flatten()
    k = max(1, int(round(0.99 * u.numel())))
    return {
        "max_abs": diff.max().item(),
        "mean_abs": diff.mean().item(),
        "mean_ulp": u.mean().item(),
        "p99_ulp": u.kthvalue(k).values.item(),
        "share_gt_half_ulp": (u > 0.5).double().mean().item(),
    }


def verdict(kernel: dict, eager: dict, *, k: float = 2.0, atol: float = 0.0) -> bool:
    """The 2x rule on max abs error: the kernel is no worse than k times eager's, plus atol."""
    return kernel["max_abs"] <= k * eager["max_abs"] + atol


def histogram(out: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
              edges=HIST_EDGES) -> list[float]:
    """Share of outputs in each ULP-error bin (``edges`` are bin boundaries)."""
    u = ulp_errors(out, ref64, dtype)
    e = torch.tensor(edges, dtype=torch.float64, device=u.device)
    idx = torch.bucketize(u, e[1:-1], right=True)
    counts = torch.bincount(idx, minlength=len(edges) - 1).double()
    return (counts / max(1, u.numel())).tolist()


def bin_labels(edges=HIST_EDGES) -> list[str]:
    return [f"{a:g}-{b:g}" if b != float("inf") else f">{a:g}"
            for a, b in zip(edges[:-1], edges[1:])]
