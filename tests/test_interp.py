"""Each interpolation implementation against an independent computation (numpy, F.interpolate,
timm)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbook import interp as I
from workbook.errors import ParameterError

# (N, out_hw): upsample, downsample, non-square, size 1, same size, odd ratios.
CASES = [(4, (7, 7)), (7, (4, 4)), (5, (9, 9)), (4, (5, 9)), (6, (1, 1)), (6, (1, 5)), (5, (5, 5)),
         (3, (16, 11))]


# ---- numpy reference: separable interpolation as two (out, in) matrices --------------------------

def src_coords(n_in: int, n_out: int, align_corners: bool, clamp_negative: bool) -> np.ndarray:
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        return dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    src = (dst + 0.5) * (n_in / n_out) - 0.5
    return np.maximum(src, 0.0) if clamp_negative else src


def keys(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def matrix(kernel: str, n_in: int, src: np.ndarray) -> np.ndarray:
    m = np.zeros((len(src), n_in))
    for i, x in enumerate(src):
        x0 = math.floor(x)
        t = x - x0
        if kernel == "bilinear":
            taps = {x0: 1 - t, x0 + 1: t}
        else:  # Keys cubic on 4 taps; taps clamped to the border, the coordinate is not
            taps = {}
            for k in (-1, 0, 1, 2):
                taps[x0 + k] = taps.get(x0 + k, 0.0) + float(keys(np.array(t - k)))
        for j, wt in taps.items():
            m[i, min(max(j, 0), n_in - 1)] += wt
    return m


def aa_matrix(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
    """PyTorch antialias=True cubic (PIL style): Keys a=-0.5, support widened by the downscale
    factor, taps outside the input dropped and the weights renormalised (not clamped to the
    border)."""
    scale = n_in / n_out
    fs = max(1.0, scale)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        c = (i + 0.5) * scale
        lo, hi = max(int(c - 2 * fs + 0.5), 0), min(int(c + 2 * fs + 0.5), n_in)
        w = keys((np.arange(lo, hi) - c + 0.5) / fs, a)
        m[i, lo:hi] = w / w.sum()
    return m


def reference(table: np.ndarray, n: int, out_hw, kernel: str, align_corners: bool, *,
              clamp: bool | None = None) -> np.ndarray:
    """Separable interpolation; by default PyTorch clamps negative src for linear modes, not
    cubic."""
    d = table.shape[1]
    clamp = (kernel == "bilinear") if clamp is None else clamp
    mh, mw = (matrix(kernel, n, src_coords(n, s, align_corners, clamp)) for s in out_hw)
    return np.einsum("hi,ijd,wj->hwd", mh, table.reshape(n, n, d), mw).reshape(-1, d)


def table64(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    return I.random_table(n, d, seed=seed, std=1.0, dtype=torch.float64)


# ---- F.interpolate-based implementations vs numpy ------------------------------------------------

@pytest.mark.parametrize("name,kernel,ac", [
    ("hf_bicubic", "bicubic", False), ("bicubic_ac", "bicubic", True),
    ("bilinear", "bilinear", False), ("bilinear_ac", "bilinear", True),
])
@pytest.mark.parametrize("n,out", CASES)
def test_matches_numpy_reference(name, kernel, ac, n, out):
    t = table64(n)
    got = I.interpolate(name, t, out)
    assert got.shape == (out[0] * out[1], t.shape[1]) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference(t.numpy(), n, out, kernel, ac), atol=1e-10,
                               rtol=0)


def test_reference_border_conventions_matter():
    """Bicubic (align_corners=False) must NOT clamp a negative source coordinate; for bilinear the
    clamp PyTorch applies is equivalent to clamping the taps, so both references agree."""
    n, out = 4, (9, 9)  # upsample with align_corners=False: the first src coordinate is negative
    t = table64(n)
    assert src_coords(n, 9, False, False)[0] < 0
    wrong = reference(t.numpy(), n, out, "bicubic", False, clamp=True)
    assert np.abs(I.interpolate("hf_bicubic", t, out).numpy() - wrong).max() > 1e-3
    np.testing.assert_allclose(reference(t.numpy(), n, out, "bilinear", False, clamp=False),
                               I.interpolate("bilinear", t, out).numpy(), atol=1e-10, rtol=0)


# ---- gather4 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,out", CASES)
def test_gather4_is_bilinear_align_corners(n, out):
    t = table64(n)
    got = I.interpolate("gather4", t, out)
    x = t.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    want = F.interpolate(x, size=out, mode="bilinear", align_corners=True)
    want = want.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    # Coordinates are float32 (as in vLLM), so agreement is ~1e-7 unless they are dyadic.
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    np.testing.assert_allclose(got.numpy(), reference(t.numpy(), n, out, "bilinear", True),
                               atol=2e-6, rtol=0)


def test_gather4_exact_when_coordinates_are_dyadic():
    t = table64(5)  # 5 -> 9: step 0.5, exact in float32
    got = I.interpolate("gather4", t, (9, 9))
    np.testing.assert_allclose(got.numpy(), reference(t.numpy(), 5, (9, 9), "bilinear", True),
                               atol=1e-12, rtol=0)
    # 3 -> 16: step 2/15 is not dyadic; float32 coordinates (as in vLLM) show up in a float64 table.
    t3 = table64(3)
    want = reference(t3.numpy(), 3, (16, 16), "bilinear", True)
    err = np.abs(I.interpolate("gather4", t3, (16, 16)).numpy() - want).max()
    assert 1e-10 < err < 2e-6


# ---- timm ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,out", [(4, (7, 7)), (7, (4, 4)), (4, (5, 9)), (6, (1, 1)), (5, (3, 8))])
def test_timm_bicubic_aa_matches_timm(n, out):
    layers = pytest.importorskip("timm.layers")
    t = I.random_table(n, 8, seed=1, std=1.0)
    got = I.interpolate("timm_bicubic_aa", t, out)
    want = layers.resample_abs_pos_embed(t[None], list(out), num_prefix_tokens=0)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    bf = t.bfloat16()  # timm upcasts: same path, output cast back to bf16
    want_bf = layers.resample_abs_pos_embed(bf[None], list(out), num_prefix_tokens=0)[0]
    assert want_bf.dtype == torch.bfloat16
    assert torch.equal(I.interpolate("timm_bicubic_aa", bf, out), want_bf)


@pytest.mark.parametrize("n,out", CASES)
def test_timm_bicubic_aa_matches_numpy_pil_cubic(n, out):
    t = table64(n)
    want = np.einsum("hi,ijd,wj->hwd", aa_matrix(n, out[0]), t.numpy().reshape(n, n, -1),
                     aa_matrix(n, out[1]))
    got = I.interpolate("timm_bicubic_aa", t, out)
    assert got.dtype == torch.float64  # cast back to the table dtype after float32 compute
    np.testing.assert_allclose(got.numpy(), want.reshape(-1, t.shape[1]), atol=2e-6, rtol=0)


def test_antialias_bicubic_differs_even_when_upsampling():
    """antialias=True is a different cubic (a=-0.5, renormalised borders), not just a low-pass."""
    t = table64(5)
    aa, hf = (I.interpolate(name, t, (9, 9)) for name in ("timm_bicubic_aa", "hf_bicubic"))
    diff = (aa - hf).abs().max()
    assert diff > 1e-2


# ---- dtypes and identity -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(I.IMPLEMENTATIONS))
def test_bf16_in_bf16_out(name):
    t = I.random_table(5, 8).bfloat16()
    got = I.interpolate(name, t, (7, 3))
    assert got.dtype == torch.bfloat16 and got.shape == (21, 8) and got.device == t.device


def test_gather4_bf16_close_to_float64():
    t = table64(6, d=16)
    exact = I.interpolate("gather4", t, (11, 9))
    bf = I.interpolate("gather4", t.bfloat16(), (11, 9))
    err = (bf.double() - exact).abs().max().item()
    assert 0 < err < 2e-2 * max(1.0, exact.abs().max().item())


def test_timm_computes_in_float32():
    t = I.random_table(6, 8, std=1.0).bfloat16()
    got = I.interpolate("timm_bicubic_aa", t, (11, 9))
    assert torch.equal(got, I.interpolate("timm_bicubic_aa", t.float(), (11, 9)).bfloat16())


@pytest.mark.parametrize("name", ["bicubic_ac", "bilinear_ac", "gather4", "bilinear", "hf_bicubic",
                                  "timm_bicubic_aa"])
def test_same_size_is_identity(name):
    t = I.random_table(6, 8, std=1.0)
    torch.testing.assert_close(I.interpolate(name, t, (6, 6)), t, atol=1e-6, rtol=0)


def test_non_square_table_rejected():
    with pytest.raises(ValueError, match="10 rows"):
        I.interpolate("bilinear", torch.zeros(10, 4), (3, 3))
    with pytest.raises(ValueError, match="2-D"):
        I.interpolate("bilinear", torch.zeros(1, 9, 4), (3, 3))


def test_interpolate_unknown_name():
    with pytest.raises(ParameterError, match="nearest"):
        I.interpolate("nearest", torch.zeros(9, 4), (3, 3))


# ---- names, helpers ------------------------------------------------------------------------------

def test_names_are_the_specs():
    """The names the pos_interp spec lets through (which checks them) are the implementations."""
    from workbook.specs.pos_interp import IMPLEMENTATIONS

    assert IMPLEMENTATIONS == tuple(I.IMPLEMENTATIONS)


def test_describe_and_registry():
    rows = I.describe()
    names = ["hf_bicubic", "timm_bicubic_aa", "bicubic_ac", "bilinear", "bilinear_ac", "gather4"]
    assert [r["name"] for r in rows] == names
    by = {r["name"]: r for r in rows}
    assert by["timm_bicubic_aa"]["compute"] == "float32" and by["timm_bicubic_aa"]["antialias"]
    assert by["gather4"]["kernel"] == "bilinear" and by["gather4"]["align_corners"]
    assert set(rows[0]) == {"name", "kernel", "align_corners", "antialias", "compute", "mimics"}


def test_grid_for_and_random_table():
    assert I.grid_for(384, 14) == 27 and I.grid_for(224, 16) == 14
    a, b = I.random_table(4, 8, seed=3), I.random_table(4, 8, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, I.random_table(4, 8, seed=4))
    assert a.shape == (16, 8) and 0.01 < a.std().item() < 0.03
    assert I.random_table(4, 8, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_sincos_table():
    t = I.sincos_table(16, 64)
    assert t.shape == (256, 64) and t.dtype == torch.float32
    with pytest.raises(ValueError, match="divisible by 4"):
        I.sincos_table(4, 30)
    g = t.reshape(16, 16, 64)
    near_r = F.cosine_similarity(g[:-1].reshape(-1, 64), g[1:].reshape(-1, 64))
    near_c = F.cosine_similarity(g[:, :-1].reshape(-1, 64), g[:, 1:].reshape(-1, 64))
    assert near_r.min() > 0.95 and near_c.min() > 0.95
    assert F.cosine_similarity(t[:1], t).min() < 0.6  # far positions are distinguishable
    # channel halves: first half depends on the row only, second on the column only
    assert torch.equal(g[3, 0, :32], g[3, 15, :32]) and torch.equal(g[0, 5, 32:], g[15, 5, 32:])
    assert torch.allclose(t[0], torch.tensor([0.0, 1.0]).repeat_interleave(16).repeat(2))
