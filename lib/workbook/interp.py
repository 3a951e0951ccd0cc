"""Position-embedding interpolation, as each codebase does it.

SigLIP-style vision towers learn an absolute position table for a square N x N patch grid (no CLS
token).  At another resolution the table is resampled, and codebases disagree on how: HF
transformers and vLLM's SigLIP use bicubic in the table's dtype, timm/open_clip upcast to float32
and antialias, vLLM's Qwen3-VL gathers four corners with ``align_corners=True`` bilinear weights.
The pos_interp experiment compares their fidelity and speed, so each implementation here reproduces
the exact semantics of the code it mimics (dtype of the arithmetic included), and two controls
(``bicubic_ac``, ``bilinear``) separate the effect of the kernel (bicubic vs bilinear) from that of
corner alignment (``align_corners`` False vs True).

Note that PyTorch's ``antialias=True`` bicubic is a different cubic (Keys a=-0.5 as in PIL, taps
past the border dropped and weights renormalised) from plain bicubic (a=-0.75, border taps
clamped), so ``timm_bicubic_aa`` differs from ``hf_bicubic`` even when upsampling, not only when
downsampling.

A table is a 2-D tensor (N*N, D), any float dtype, any device; every implementation returns
(h*w, D), row-major over (h, w), in the table's dtype on the table's device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from workbook.errors import bad_param

InterpFn = Callable[[torch.Tensor, int, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class Impl:
    """One implementation and the facts that explain its numbers in a report."""

    name: str
    kernel: str  # "bicubic" | "bilinear"
    align_corners: bool
    antialias: bool
    compute: str  # "table dtype" | "float32"
    mimics: str
    fn: InterpFn


def _resize(mode: str, align_corners: bool, antialias: bool = False,
            upcast: bool = False) -> InterpFn:
    """F.interpolate on the table seen as a (1, D, N, N) image, as HF/timm/vLLM reshape it."""

    def fn(table: torch.Tensor, n: int, out_hw: tuple[int, int]) -> torch.Tensor:
        d = table.shape[1]
        x = table.float() if upcast else table
        x = x.reshape(1, n, n, d).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=tuple(out_hw), mode=mode, align_corners=align_corners,
                          antialias=antialias)
        return x.permute(0, 2, 3, 1).reshape(-1, d).to(table.dtype)

    return fn


def _gather4(table: torch.Tensor, n: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """vLLM Qwen3-VL ``fast_pos_embed_interpolate``: bilinear, align_corners=True, one batched
    lookup.

    Coordinates and weights are float32 (as in vLLM) even for a float64 table; the weights are then
    cast to the table dtype and the four weighted corners are added in that dtype, in vLLM's order.
    """
    h, w = out_hw
    rows = torch.linspace(0, n - 1, h, dtype=torch.float32, device=table.device)
    cols = torch.linspace(0, n - 1, w, dtype=torch.float32, device=table.device)
    r0, c0 = rows.long(), cols.long()  # floor: coordinates are >= 0
    r1, c1 = (r0 + 1).clamp(max=n - 1), (c0 + 1).clamp(max=n - 1)
    dh, dw = (rows - r0)[:, None], (cols - c0)[None, :]
    w11 = dh * dw
    # corners 00, 01, 10, 11
    weights = torch.stack([1 - dh - dw + w11, dw - w11, dh - w11, w11]).reshape(4, -1)
    idx = torch.stack([
        (r0[:, None] * n + c0[None, :]), (r0[:, None] * n + c1[None, :]),
        (r1[:, None] * n + c0[None, :]), (r1[:, None] * n + c1[None, :]),
    ]).reshape(4, -1)
    p = table[idx] * weights.to(table.dtype)[:, :, None]  # (4, h*w, D)
    return p[0] + p[1] + p[2] + p[3]


IMPLEMENTATIONS: dict[str, Impl] = {i.name: i for i in [
    Impl("hf_bicubic", "bicubic", False, False, "table dtype",
         "HF transformers SiglipVisionEmbeddings.interpolate_pos_encoding; vLLM siglip.py",
         _resize("bicubic", align_corners=False)),
    Impl("timm_bicubic_aa", "bicubic", False, True, "float32",
         "timm resample_abs_pos_embed (open_clip SigLIP towers)",
         _resize("bicubic", align_corners=False, antialias=True, upcast=True)),
    Impl("bicubic_ac", "bicubic", True, False, "table dtype",
         "control: bicubic with corner alignment", _resize("bicubic", align_corners=True)),
    Impl("bilinear", "bilinear", False, False, "table dtype",
         "control: F.interpolate bilinear", _resize("bilinear", align_corners=False)),
    Impl("bilinear_ac", "bilinear", True, False, "table dtype",
         "control: F.interpolate bilinear with corner alignment",
         _resize("bilinear", align_corners=True)),
    Impl("gather4", "bilinear", True, False, "table dtype",
         "vLLM Qwen3-VL fast_pos_embed_interpolate (PR #25337)", _gather4),
]}


def _known() -> str:
    return "known implementations are " + ", ".join(IMPLEMENTATIONS)


def grid_side(table: torch.Tensor) -> int:
    """N for a (N*N, D) table; ValueError if it is not 2-D with a perfect-square row count."""
    if table.dim() != 2:
        raise ValueError(f"position table must be 2-D (N*N, D), got shape {tuple(table.shape)}")
    rows = table.shape[0]
    n = math.isqrt(rows)
    if n * n != rows or n == 0:
        raise ValueError(f"position table has {rows} rows, not a square N*N grid")
    return n


def interpolate(name: str, table: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Resample ``table`` (N*N, D) to ``out_hw`` with implementation ``name`` -> (h*w, D).

    No shortcut when ``out_hw == (N, N)``: the experiment times this call, so it always computes.
    """
    if name not in IMPLEMENTATIONS:
        raise bad_param("implementation", name, _known())
    h, w = (int(s) for s in out_hw)
    if h < 1 or w < 1:
        raise bad_param("out_hw", tuple(out_hw), "both sides must be >= 1")
    return IMPLEMENTATIONS[name].fn(table, grid_side(table), (h, w))


def grid_for(image_size: int, patch: int) -> int:
    """Patch-grid side for an image, floored as timm and HF do (a partial last patch is dropped)."""
    return image_size // patch


def random_table(n: int, d: int, *, seed: int = 0, std: float = 0.02,
                 dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """A seeded normal (N*N, D) table, like a freshly initialised embedding; same values on any
    device."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n * n, d, generator=g) * std).to(dtype=dtype, device=device)


def sincos_table(n: int, d: int, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """MAE-style 2-D sin-cos table (N*N, D): a smooth table, where interpolation error is
    meaningful.

    Channels [0, d/2) encode the row, [d/2, d) the column; each half is sin then cos of
    position * omega_i with omega_i = 1 / 10000**(i / (d/4)), i < d/4.
    """
    if d % 4:
        raise ValueError(f"sincos_table needs d divisible by 4, got d={d}")
    omega = 1.0 / 10000 ** (torch.arange(d // 4, dtype=torch.float64) / (d // 4))
    pos = torch.arange(n, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def enc(p: torch.Tensor) -> torch.Tensor:
        a = p.reshape(-1, 1) * omega
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([enc(rows), enc(cols)], dim=1).to(dtype=dtype, device=device)


def describe() -> list[dict]:
    """One row per implementation, for a report table."""
    return [{"name": i.name, "kernel": i.kernel, "align_corners": i.align_corners,
             "antialias": i.antialias, "compute": i.compute, "mimics": i.mimics}
            for i in IMPLEMENTATIONS.values()]
