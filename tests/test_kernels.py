"""Triton kernels (``workbook.kernels``): GEMM and epilogues, LayerNorm, fused MLP and projections.

On a CPU they run under the Triton interpreter (``TRITON_INTERPRET=1``, set by conftest before
anything imports the kernels), so these tests check the real kernel numerics at tiny, odd shapes.
Precision rule for fp16/bf16 (FlashAttention/quack style): from the same rounded inputs compute an
fp64 reference and the eager PyTorch result in the same dtype, and require ``max|triton - ref64| <=
2 * max|eager - ref64| + atol`` for the output and every gradient. fp32 is held to a tight absolute
bound as well (the GEMM uses IEEE dots; tf32 would be ~1e-3 off). Tests marked ``gpu`` repeat the
checks on CUDA at SigLIP-2 so400m sizes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="triton is an optional extra ('.[triton]')")

from workbook.kernels import runtime  # noqa: E402
from workbook.kernels.gemm import gemm, gemm_gelu_backward  # noqa: E402
from workbook.kernels.heads import ln_qkv_heads, ln_qkv_heads_reference, pack_heads  # noqa: E402
from workbook.kernels.layernorm import (MAX_HIDDEN, add_ln_forward, layer_norm,  # noqa: E402
                                       layer_norm_reference, ln_apply, ln_backward,
                                       ln_backward_residual, ln_forward, ln_output)
from workbook.kernels.mlp import (add_ln_mlp, add_ln_mlp_reference,  # noqa: E402
                                  gelu_backward_recompute, linear_gelu, linear_gelu_reference,
                                  ln_linear, ln_mlp, mlp, mlp_reference, qkv, qkv_reference,
                                  qkv_weights)

# Where the small tests run: the interpreter on a CPU, or the GPU when there is one (conftest sets
# the interpreter only without CUDA).
DEVICE = "cuda" if torch.cuda.is_available() and not runtime.INTERPRET else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS = 1e-6

# Skip (not fail) when the kernels cannot run here, e.g. TRITON_INTERPRET was not set before import.
WHY_NOT = runtime.unavailable_reason(DEVICE)
pytestmark = pytest.mark.skipif(WHY_NOT is not None,
                                reason=f"Triton kernels unavailable: {WHY_NOT}")


# ------------------------------------------------------------------------------------------ helpers
def rand(*shape, dtype=torch.float32, scale=1.0, shift=0.0, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype)


def linear_params(n_out, n_in, dtype, seed, device=DEVICE):
    """nn.Linear-like weight (scaled by 1/sqrt(fan_in)) and bias (~0.02 randn)."""
    return (rand(n_out, n_in, dtype=dtype, scale=n_in ** -0.5, seed=seed, device=device),
            rand(n_out, dtype=dtype, scale=0.02, seed=seed + 1, device=device))


def ln_params(n, dtype, seed, device=DEVICE):
    return (rand(n, dtype=dtype, scale=0.1, shift=1.0, seed=seed, device=device),
            rand(n, dtype=dtype, scale=0.1, seed=seed + 1, device=device))


def ulp(ref: torch.Tensor, dtype) -> torch.Tensor:
    """One unit in the last place of ``dtype`` at each value of ``ref`` (floored at 1e-3 of rms)."""
    ref = ref.double()
    floor = 1e-3 * ref.pow(2).mean().sqrt()
    top = torch.maximum(ref.abs(), floor)
    return torch.exp2(torch.floor(torch.log2(top))) * torch.finfo(dtype).eps


def run(fn, inputs, dout, *, dtype=None):
    """``fn(*inputs)`` and the gradients of ``<out, dout>`` w.r.t. every floating input (None stays
    None).

    With ``dtype`` the inputs are first cast (e.g. to fp64 for the reference); otherwise they are
    used as they are, strides included (``detach`` keeps a non-contiguous view non-contiguous).
    """
    leaves = [t if not isinstance(t, torch.Tensor)
              else (t.to(dtype) if dtype else t).detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    if isinstance(out, (tuple, list)):
        out = torch.cat(out, -1)
    out.backward(dout.to(out.dtype))
    return [out.detach()] + [t.grad if isinstance(t, torch.Tensor) else None for t in leaves]


def check_rule(name, tri, eager, ref, dtype):
    """``max|tri - ref| <= 2 max|eager - ref| + atol``; fp32 also within an absolute bound."""
    assert tri.shape == ref.shape and tri.dtype == eager.dtype, (
        name, tri.shape, ref.shape, tri.dtype, eager.dtype)
    assert torch.isfinite(tri).all(), f"{name}: non-finite values"
    ref = ref.double()
    scale = ref.abs().max().item()
    err_tri = (tri.double() - ref).abs().max().item()
    err_eager = (eager.double() - ref).abs().max().item()
    atol = torch.finfo(dtype).eps * max(scale, 1e-3)  # one ulp at the largest magnitude
    assert err_tri <= 2 * err_eager + atol, (
        f"{name} ({dtype}): triton err {err_tri:.3g} > 2 * eager err {err_eager:.3g} + "
        f"{atol:.3g} (scale {scale:.3g})")
    if dtype == torch.float32:
        assert err_tri <= 1e-5 * max(scale, 1.0), (
            f"{name}: fp32 error {err_tri:.3g} at scale {scale:.3g}")


def assert_same_values(name, p, q, dtype):
    """p and q computed from the same values by one kernel, on paths that may reduce otherwise.

    Under the interpreter (one config, numpy) they must be the same bits. On a GPU, Triton compiles
    a kernel again for another autotune key or for strides that are or are not multiples of 16, and
    a row reduction (``tl.sum``) can then add in another tree. In fp32 the statistics then differ in
    their last bits, which moves every output of the row by a few units of the row's largest terms
    (a LayerNorm output near zero is the difference of such terms): allowed up to 4 units at the
    tensor's largest value. 16-bit outputs may differ by one unit where the fp32 value lies near a
    rounding boundary. Nothing more is allowed.
    """
    assert p.shape == q.shape and p.dtype == q.dtype, (name, p.shape, q.shape, p.dtype, q.dtype)
    if DEVICE == "cpu":
        assert torch.equal(p, q), f"{name}: not bit-identical under the interpreter"
        return
    diff = (p.double() - q.double()).abs()
    if dtype == torch.float32:
        unit = torch.finfo(dtype).eps * q.abs().max().item()
        assert diff.max().item() <= 4 * unit, (
            f"{name}: {diff.max().item() / unit:.1f} units of the largest value apart")
    else:
        off = diff > ulp(q, dtype)
        assert not off.any(), f"{name}: {int(off.sum())} values differ by more than one ulp"


def check_fwd_bwd(names, fn_tri, fn_ref, inputs, dout, dtype):
    """Triton vs eager (same dtype) vs fp64 reference, for the output and every gradient in
    ``names``."""
    tri = run(fn_tri, inputs, dout)
    eager = run(fn_ref, inputs, dout)
    ref = run(fn_ref, inputs, dout, dtype=torch.float64)
    assert len(names) == len(tri)
    for name, t, e, r in zip(names, tri, eager, ref):
        if name is None:
            continue
        assert t is not None and t.dtype == dtype, (name, None if t is None else t.dtype)
        check_rule(name, t, e, r, dtype)
    return tri


def gelu_grad_ref(dact, pre):
    return torch.ops.aten.gelu_backward(dact, pre, approximate="tanh")


# --------------------------------------------------------------------------------------------- GEMM
GEMM_SHAPES = [(37, 24, 40), (5, 72, 100), (70, 40, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", GEMM_SHAPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gemm_plain(dtype, M, K, N, bias):
    a = rand(M, K, dtype=dtype, seed=1)
    w, b = linear_params(N, K, dtype, seed=2)
    b = b if bias else None
    c, aux = gemm(a, w.t(), b)
    assert aux is None and c.shape == (M, N) and c.dtype == dtype
    ref = F.linear(a.double(), w.double(), None if b is None else b.double())
    check_rule("c", c, F.linear(a, w, b), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_strided_operands(dtype):
    """Any strides: a non-contiguous A (every other column) and B both as a transposed view and
    contiguous."""
    M, K, N = 33, 24, 40
    a_full = rand(M, 2 * K, dtype=dtype, seed=3)
    a = a_full[:, ::2]
    assert not a.is_contiguous()
    w, b = linear_params(N, K, dtype, seed=4)
    c_view, _ = gemm(a, w.t(), b)
    c_cont, _ = gemm(a.contiguous(), w.t().contiguous(), b)
    assert torch.equal(c_view, c_cont)
    ref = F.linear(a.double(), w.double(), b.double())
    check_rule("c", c_view, F.linear(a, w, b), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", [(37, 24, 40), (9, 72, 100)])
def test_gemm_gelu_epilogue_and_stored_preactivation(dtype, M, K, N):
    a = rand(M, K, dtype=dtype, seed=5)
    w, b = linear_params(N, K, dtype, seed=6)
    c, pre = gemm(a, w.t(), b, epilogue="gelu", store_aux=True)
    lin64 = F.linear(a.double(), w.double(), b.double())
    check_rule("gelu", c, linear_gelu_reference(a, w, b), F.gelu(lin64, approximate="tanh"), dtype)
    # the stored pre-activation is F.linear rounded once to the dtype
    assert pre.shape == (M, N) and pre.dtype == dtype
    lin32 = F.linear(a.float(), w.float(), b.float())
    if dtype == torch.float32:
        assert (pre.double() - lin64).abs().max().item() < 1e-5
    else:
        # only sums within fp32 summation noise of a rounding tie may differ
        diff = pre != lin32.to(dtype)
        assert diff.float().mean().item() < 5e-3
        assert ((pre.float() - lin32).abs() <= ulp(lin32, dtype).float())[diff].all()
    # without store_aux nothing is returned and the output is the same
    c2, none = gemm(a, w.t(), b, epilogue="gelu")
    assert none is None and torch.equal(c, c2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", [(37, 40, 24), (9, 72, 100)])
def test_gemm_gelu_grad_epilogue(dtype, M, K, N):
    """``(dout @ W2) * GELU'(pre)``: fc1's activation backward fused into fc2's data-gradient
    GEMM."""
    dout = rand(M, K, dtype=dtype, seed=7)
    # fc2.weight is [out, in]: dact = dout @ fc2.weight
    w2 = rand(K, N, dtype=dtype, scale=N ** -0.5, seed=8)
    pre = rand(M, N, dtype=dtype, scale=1.5, seed=9)
    c, aux = gemm(dout, w2, epilogue="gelu_grad", aux=pre)
    assert aux is None and c.shape == (M, N) and c.dtype == dtype
    ref = gelu_grad_ref(dout.double() @ w2.double(), pre.double())
    check_rule("dpre", c, gelu_grad_ref(dout @ w2, pre), ref, dtype)


def check_gelu_backward(dpre, act, db, dout, w2, pre, dtype):
    """gemm_gelu_backward's three outputs against fp64, beside eager (2x rule; fp32: a few ulp,
    since eager is within about one rounding there and GELU' in sigmoid form is a few ulp off)."""
    ref = gelu_grad_ref(dout.double() @ w2.double(), pre.double())
    eager = gelu_grad_ref(dout @ w2, pre)
    act_ref = F.gelu(pre.double(), approximate="tanh")
    if dtype == torch.float32:
        for name, t, r in (("dpre", dpre, ref), ("act", act, act_ref), ("db", db, ref.sum(0))):
            err = (t.double() - r).abs().max().item()
            assert err <= 16 * torch.finfo(dtype).eps * r.abs().max().item(), (name, err)
    else:
        check_rule("dpre", dpre, eager, ref, dtype)
        check_rule("act", act, F.gelu(pre, approximate="tanh"), act_ref, dtype)
        check_rule("db", db.to(dtype), eager.sum(0), ref.sum(0), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", [(70, 40, 24), (9, 72, 100)])
@pytest.mark.parametrize("kmajor", [False, True], ids=["w2", "w2-kmajor"])
def test_gemm_gelu_backward(dtype, M, K, N, kmajor):
    """dpre, the recomputed activation and fc1's bias gradient (column sums over row bands, 70 rows
    = two full 32-row bands and a part) from one GEMM, each within the 2x rule of eager against
    fp64."""
    dout = rand(M, K, dtype=dtype, seed=7)
    w2 = rand(K, N, dtype=dtype, scale=N ** -0.5, seed=8)
    if kmajor:
        w2 = w2.t().contiguous().t()
    pre = rand(M, N, dtype=dtype, scale=1.5, seed=9)
    dpre, act, db = gemm_gelu_backward(dout, w2, pre)
    assert dpre.dtype == act.dtype == dtype and db.dtype == torch.float32 and db.shape == (N,)
    check_gelu_backward(dpre, act, db, dout, w2, pre, dtype)
    with pytest.raises(ValueError, match="pre"):
        gemm_gelu_backward(dout, w2, pre[:-1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gelu_backward_recompute_overwrite(dtype):
    """The one-pass GELU backward the MLP uses: dpre, the recomputed activation and fc1's bias
    gradient by the same checks as the fused GEMM; with ``overwrite`` dpre lands in dact's own
    buffer with the same values."""
    dout = rand(70, 40, dtype=dtype, seed=7)
    w2 = rand(40, 100, dtype=dtype, scale=0.1, seed=8)
    pre = rand(70, 100, dtype=dtype, scale=1.5, seed=9)
    dpre, act, db = gelu_backward_recompute(dout @ w2, pre)
    check_gelu_backward(dpre, act, db, dout, w2, pre, dtype)
    dact = dout @ w2
    dpre2, act2, db2 = gelu_backward_recompute(dact, pre, overwrite=True)
    assert dpre2.data_ptr() == dact.data_ptr()
    assert torch.equal(dpre2, dpre) and torch.equal(act2, act) and torch.equal(db2, db)
    with pytest.raises(ValueError, match="overwrite"):
        gelu_backward_recompute((dout @ w2).t().contiguous().t(), pre, overwrite=True)
    # act_over_pre: the recomputed activation lands in pre's buffer, the values unchanged
    own = pre.clone()
    dpre3, act3, db3 = gelu_backward_recompute(dout @ w2, own, overwrite=True, act_over_pre=True)
    assert act3.data_ptr() == own.data_ptr()
    assert torch.equal(dpre3, dpre) and torch.equal(act3, act) and torch.equal(db3, db)
    with pytest.raises(ValueError, match="act_over_pre"):
        gelu_backward_recompute(dout @ w2, pre.t().contiguous().t(), act_over_pre=True)


@pytest.mark.parametrize("fused", ["linear_gelu", "mlp"])
def test_backward_that_writes_over_its_saved_tensors_runs_once(fused):
    """linear_gelu and the MLP write GELU' and the recomputed activation over their spent saved
    buffers; a second backward through a retained graph must then raise autograd's in-place error,
    not use other values."""
    dtype = torch.float32
    x = rand(24, 40, dtype=dtype, seed=1).requires_grad_(True)
    w1, b1 = rand(56, 40, dtype=dtype, scale=0.2, seed=2), rand(56, dtype=dtype, scale=0.1, seed=3)
    w2, b2 = rand(40, 56, dtype=dtype, scale=0.2, seed=4), rand(40, dtype=dtype, scale=0.1, seed=5)
    out = linear_gelu(x, w1, b1) if fused == "linear_gelu" else mlp(x, w1, b1, w2, b2)
    if fused == "linear_gelu":
        ref = linear_gelu_reference(x, w1, b1)
    else:
        ref = mlp_reference(x, w1, b1, w2, b2)
    dy = rand(*out.shape, dtype=dtype, seed=6)
    (g_ref,) = torch.autograd.grad(ref, x, dy)
    (g,) = torch.autograd.grad(out, x, dy, retain_graph=True)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out, x, dy)


# under the interpreter tl.sigmoid's numpy exp overflows to inf there, and 1 / (1 + inf) = 0 is the
# right limit
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gelu_grad_tails(dtype):
    """GELU' where the sigmoid saturates: pre-activations out to +-60 (``exp(-2u)`` would overflow
    past about -10 without the clamp, and ``1 - s`` cancels for s near 1), through the one-pass
    kernel and fc2's fused GEMM epilogue, finite and within the 2x rule of eager against fp64 (fp16
    cannot hold 60^3, so it stops at 30)."""
    top = 30.0 if dtype == torch.float16 else 60.0
    pre = torch.linspace(-top, top, 70 * 100).reshape(70, 100).to(device=DEVICE, dtype=dtype)
    dout = rand(70, 40, dtype=dtype, seed=7)
    w2 = rand(40, 100, dtype=dtype, scale=0.1, seed=8)
    dact = dout @ w2
    ref = gelu_grad_ref(dout.double() @ w2.double(), pre.double())
    dpre, act, _ = gelu_backward_recompute(dact, pre)
    fused, _ = gemm(dout, w2, epilogue="gelu_grad", aux=pre)
    for name, t in (("one pass", dpre), ("GEMM epilogue", fused)):
        check_rule(name, t, gelu_grad_ref(dact, pre), ref, dtype)
    check_rule("act", act, F.gelu(pre, approximate="tanh"),
               F.gelu(pre.double(), approximate="tanh"), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gelu_rounded_reproduces_eager_and_gelu_beats_it(dtype):
    """``gelu_rounded`` rounds the pre-activation as eager does and so has eager's error; ``gelu``
    (GELU on the fp32 accumulator, one rounding) has a lower mean ULP error against fp64 (the seed
    report's claim)."""
    M, K, N = 64, 128, 96
    a = rand(M, K, dtype=dtype, seed=10)
    w, b = linear_params(N, K, dtype, seed=11)
    eager = linear_gelu_reference(a, w, b)
    ref = F.gelu(F.linear(a.double(), w.double(), b.double()), approximate="tanh")
    rounded, pre_r = gemm(a, w.t(), b, epilogue="gelu_rounded", store_aux=True)
    fused, _ = gemm(a, w.t(), b, epilogue="gelu")

    u = ulp(ref, dtype)
    err = {k: ((v.double() - ref).abs() / u).mean().item() for k, v in
           dict(eager=eager, rounded=rounded, fused=fused).items()}
    # same pre-activation as eager up to rare ties: both round an fp32 sum, summed in another order
    # (eager's CPU GEMM also differs between CPU instruction sets), so they may differ where that
    # sum cancels; there by no more than an ulp plus the a-priori bound of fp32 summation, K * eps32
    # * sum|a||w| + |b|
    lin = F.linear(a, w, b)
    differ = pre_r != lin
    assert differ.float().mean().item() < 2e-3
    bound = (ulp(lin, dtype) + K * torch.finfo(torch.float32).eps
             * (a.double().abs() @ w.double().abs().t() + b.double().abs()))
    assert ((pre_r.double() - lin.double()).abs() <= bound)[differ].all()
    # from the same pre-activation the output agrees with eager except for rare 1-ulp flips, where
    # the fp32 values of x*sigmoid(2u) and eager's 0.5x(1+tanh u) straddle a rounding boundary
    same = pre_r == lin
    bits = (rounded.view(torch.int16).int() - eager.view(torch.int16).int()).abs()[same]
    assert bits.max().item() <= 1 and (bits > 0).float().mean().item() < 2e-3
    assert err["rounded"] == pytest.approx(err["eager"], rel=0.02)
    # one rounding beats two by a clear margin (about 0.25 vs 0.39 ulp on average)
    assert err["fused"] < 0.8 * err["eager"], err
    assert err["fused"] < 0.3, err


def test_gemm_rejects_bad_arguments():
    a = torch.zeros(4, 8, device=DEVICE)
    b = torch.zeros(8, 6, device=DEVICE)
    with pytest.raises(ValueError, match="epilogue"):
        gemm(a, b, epilogue="relu")
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        gemm(a, torch.zeros(7, 6, device=DEVICE))  # K mismatch
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        gemm(a.view(2, 2, 8), b)  # 3-D A
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        gemm(a, b[0])  # 1-D B
    with pytest.raises(ValueError, match="dtype"):
        gemm(a, b.to(torch.bfloat16))
    with pytest.raises(ValueError, match="aux"):
        gemm(a, b, epilogue="gelu_grad")  # needs the pre-activation
    with pytest.raises(ValueError, match="aux"):
        gemm(a, b, epilogue="gelu_grad", aux=torch.zeros(4, 5, device=DEVICE))


# ---------------------------------------------------------------------------------------- LayerNorm
LN_SHAPES = [(37, 72), (2, 9, 72), (5, 100)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", LN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_layer_norm_forward_backward(dtype, shape):
    x = rand(*shape, dtype=dtype, scale=2.0, shift=0.5, seed=12)
    w, b = ln_params(shape[-1], dtype, seed=13)
    dy = rand(*shape, dtype=dtype, seed=14)
    check_fwd_bwd(["y", "dx", "dw", "db", None], layer_norm, layer_norm_reference, [x, w, b, EPS],
                  dy, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layer_norm_non_contiguous_input(dtype):
    x = rand(4, 18, 72, dtype=dtype, seed=15)[:, ::2]
    assert not x.is_contiguous()
    w, b = ln_params(72, dtype, seed=16)
    dy = rand(4, 9, 72, dtype=dtype, seed=17)
    tri = check_fwd_bwd(["y", "dx", "dw", "db", None], layer_norm, layer_norm_reference,
                        [x, w, b, EPS], dy, dtype)
    assert tri[1].shape == x.shape
    # the values of a contiguous copy (the same bits under the interpreter)
    tri_c = run(layer_norm, [x.contiguous(), w, b, EPS], dy)
    for name, p, q in zip(["y", "dx", "dw", "db"], tri[:4], tri_c[:4]):
        assert_same_values(name, p, q, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ln_forward_statistics_are_fp32(dtype):
    x = rand(37, 72, dtype=dtype, scale=3.0, shift=1.0, seed=18)
    w, b = ln_params(72, dtype, seed=19)
    y, mean, rstd = ln_forward(x, w, b, EPS)
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == rstd.shape == (37,)
    x64 = x.double()
    mean64 = x64.mean(-1)
    rstd64 = (x64.var(-1, unbiased=False) + EPS).rsqrt()
    # fp32 statistics of the (rounded) input: far tighter than the input dtype's resolution
    assert (mean.double() - mean64).abs().max().item() < 1e-6 * x64.abs().max().item()
    assert ((rstd.double() - rstd64) / rstd64).abs().max().item() < 1e-6
    y2, m2, r2 = ln_forward(x, w, b, EPS, stats=False)
    assert m2 is None and r2 is None
    assert_same_values("y without statistics", y2, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 72), (5, 100), (3, 1152)],
                         ids=lambda s: "x".join(map(str, s)))
def test_ln_apply_reproduces_the_forward_output_bit_for_bit(dtype, shape):
    """The backward's recompute from saved statistics must be the forward's output exactly, or
    gradients taken with recompute_norm would differ from those with the output stored."""
    x = rand(*shape, dtype=dtype, scale=3.0, shift=1.0, seed=23)
    w, b = ln_params(shape[-1], dtype, seed=24)
    y, mean, rstd = ln_forward(x, w, b, EPS)
    assert torch.equal(ln_apply(x, w, b, mean, rstd), y)
    assert torch.equal(ln_output(x, None, w, b, mean, rstd), y)
    assert ln_output(x, y, w, b, mean, rstd) is y  # a stored output is used as it is
    wide = rand(shape[0], 2 * shape[1], dtype=dtype, scale=3.0, shift=1.0, seed=23)
    wide = wide[:, ::2]  # strided rows
    yw, mw, rw = ln_forward(wide, w, b, EPS)
    assert torch.equal(ln_apply(wide, w, b, mw, rw), yw)


@pytest.mark.parametrize("dtype,M", [(torch.bfloat16, 320), (torch.float32, 64)],
                         ids=["bf16", "fp32"])
def test_ln_backward_weight_bias_grads_are_summed_in_fp32(dtype, M):
    """dweight/dbias are the fp64 sums over rows up to the final rounding to the weight's dtype.

    In bf16 they must equal the correctly rounded fp64 sums exactly (an fp32 accumulator is ~1e-6
    off, far below half a bf16 ulp); dy in [0.75, 1) makes a bf16 accumulator stall at 256, as the
    control shows.
    """
    N = 8
    x = rand(M, N, dtype=dtype, seed=20)
    g = torch.Generator().manual_seed(21)
    dy = (0.75 + 0.25 * torch.rand(M, N, generator=g)).to(device=DEVICE, dtype=dtype)
    w, b = ln_params(N, dtype, seed=22)
    _, mean, rstd = ln_forward(x, w, b, EPS)
    dx, dw, db = ln_backward(dy, x, w, mean, rstd)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    xhat64 = (x.double() - mean.double()[:, None]) * rstd.double()[:, None]
    dw64 = (dy.double() * xhat64).sum(0)
    db64 = dy.double().sum(0)
    if dtype == torch.float32:
        assert ((dw.double() - dw64).abs() <= 1e-6 * dw64.abs().max()).all()
        assert ((db.double() - db64).abs() <= 1e-6 * db64.abs()).all()
    else:
        assert torch.equal(dw, dw64.to(dtype)), (dw, dw64)
        assert torch.equal(db, db64.to(dtype)), (db, db64)
        # control: the same sum accumulated in bf16 stalls far below, so the check above
        # discriminates
        acc = torch.zeros(N, dtype=dtype, device=DEVICE)
        for row in dy:
            acc = acc + row
        assert ((acc.double() - db64).abs() > 5 * ulp(db64, dtype)).all(), (acc, db64)
    # the backward uses no atomics: deterministic bits
    again = ln_backward(dy, x, w, mean, rstd)
    assert all(torch.equal(p, q) for p, q in zip((dx, dw, db), again))


def test_layer_norm_hidden_limit():
    # the largest supported row works (one row per program) ...
    x = rand(2, MAX_HIDDEN, seed=23)
    w, b = ln_params(MAX_HIDDEN, torch.float32, seed=24)
    y = layer_norm(x, w, b, EPS)
    assert (y - layer_norm_reference(x, w, b, EPS)).abs().max().item() < 1e-5
    # ... one more is refused with a ValueError naming the limit
    big = torch.zeros(2, MAX_HIDDEN + 1, device=DEVICE)
    wb = torch.ones(MAX_HIDDEN + 1, device=DEVICE)
    with pytest.raises(ValueError, match=str(MAX_HIDDEN)):
        layer_norm(big, wb, wb, EPS)
    with pytest.raises(ValueError, match=str(MAX_HIDDEN)):
        ln_forward(big, wb, wb, EPS)
    with pytest.raises(ValueError, match=str(MAX_HIDDEN)):
        ln_backward(big, big, wb, torch.zeros(2, device=DEVICE), torch.ones(2, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ln_backward_residual_adds_and_sums_the_residual_gradient(dtype):
    M, N = 70, 72  # more than one 64-row program
    x = rand(M, N, dtype=dtype, scale=2.0, seed=25)
    w, b = ln_params(N, dtype, seed=26)
    dy = rand(M, N, dtype=dtype, seed=27)
    dres = rand(M, N, dtype=dtype, seed=28)
    _, mean, rstd = ln_forward(x, w, b, EPS)
    dx0, dw0, db0 = ln_backward(dy, x, w, mean, rstd)
    dx, dw, db, ds = ln_backward_residual(dy, x, w, mean, rstd, dres)
    assert torch.equal(dw, dw0) and torch.equal(db, db0) and ds.dtype == torch.float32
    # dx = dres + the LayerNorm gradient, rounded once (not twice, as a separate add would)
    exact = (dx0.double() + dres.double())
    top = exact.abs().max().item()
    assert (dx.double() - exact).abs().max().item() <= 2 * torch.finfo(dtype).eps * top
    col = dres.double().abs().sum(0).max().item()
    assert (ds.double() - dres.double().sum(0)).abs().max().item() <= 1e-5 * col


# ---------------------------------------------------------------------------------------- fused MLP
T, D, I = 37, 72, 100  # tokens, hidden, intermediate: odd sizes that exercise every mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(T, D), (2, 9, D)], ids=["2d", "3d"])
def test_linear_gelu(dtype, shape):
    x = rand(*shape, dtype=dtype, seed=30)
    w, b = linear_params(I, D, dtype, seed=31)
    dout = rand(*shape[:-1], I, dtype=dtype, seed=32)
    tri = check_fwd_bwd(["out", "dx", "dw", "db"], linear_gelu, linear_gelu_reference, [x, w, b],
                        dout, dtype)
    assert tri[0].shape == (*shape[:-1], I)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_gelu_no_bias_and_rounded_preactivation(dtype):
    x = rand(T, D, dtype=dtype, seed=33)
    w, _ = linear_params(I, D, dtype, seed=34)
    dout = rand(T, I, dtype=dtype, seed=35)
    tri = check_fwd_bwd(["out", "dx", "dw", None], linear_gelu, linear_gelu_reference, [x, w, None],
                        dout, dtype)
    assert tri[3] is None
    # round_preact=True follows eager's double rounding, and stays within the rule too
    rounded = lambda x, w, b: linear_gelu(x, w, b, round_preact=True)  # noqa: E731
    check_fwd_bwd(["out", "dx", "dw", None], rounded, linear_gelu_reference, [x, w, None], dout,
                  dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(T, D), (2, 9, D)], ids=["2d", "3d"])
def test_mlp(dtype, shape):
    x = rand(*shape, dtype=dtype, seed=40)
    w1, b1 = linear_params(I, D, dtype, seed=41)
    w2, b2 = linear_params(D, I, dtype, seed=43)
    dout = rand(*shape, dtype=dtype, seed=45)
    tri = check_fwd_bwd(["out", "dx", "dw1", "db1", "dw2", "db2"], mlp, mlp_reference,
                        [x, w1, b1, w2, b2], dout, dtype)
    assert tri[0].shape == shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mlp_non_contiguous_input(dtype):
    x = rand(T, 2 * D, dtype=dtype, seed=46)[:, ::2]
    assert not x.is_contiguous()
    w1, b1 = linear_params(I, D, dtype, seed=47)
    w2, b2 = linear_params(D, I, dtype, seed=48)
    dout = rand(T, D, dtype=dtype, seed=49)
    tri = check_fwd_bwd(["out", "dx", "dw1", "db1", "dw2", "db2"], mlp, mlp_reference,
                        [x, w1, b1, w2, b2], dout, dtype)
    assert tri[1].shape == x.shape


def ln_mlp_reference(x, ln_w, ln_b, eps, w1, b1, w2, b2):
    return mlp_reference(F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps), w1, b1, w2, b2)


def ln_mlp_inputs(dtype, shape=(T, D), device=DEVICE, hidden=D, inter=I):
    x = rand(*shape, dtype=dtype, scale=2.0, shift=0.3, seed=50, device=device)
    ln_w, ln_b = ln_params(hidden, dtype, seed=51, device=device)
    w1, b1 = linear_params(inter, hidden, dtype, seed=53, device=device)
    w2, b2 = linear_params(hidden, inter, dtype, seed=55, device=device)
    dout = rand(*shape, dtype=dtype, seed=57, device=device)
    return [x, ln_w, ln_b, EPS, w1, b1, w2, b2], dout


LN_MLP_NAMES = ["out", "dx", "dln_w", "dln_b", None, "dw1", "db1", "dw2", "db2"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("recompute_norm", [True, False], ids=["recompute", "store"])
def test_ln_mlp(dtype, recompute_norm):
    inputs, dout = ln_mlp_inputs(dtype, shape=(2, 9, D) if recompute_norm else (T, D))
    fn = lambda *a: ln_mlp(*a, recompute_norm=recompute_norm)  # noqa: E731
    check_fwd_bwd(LN_MLP_NAMES, fn, ln_mlp_reference, inputs, dout, dtype)


def ln_mlp_residual_reference(x, ln_w, ln_b, eps, w1, b1, w2, b2):
    return x + ln_mlp_reference(x, ln_w, ln_b, eps, w1, b1, w2, b2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ln_mlp_residual(dtype):
    """``x + mlp(layer_norm(x))`` as one node: the residual's gradient and fc2's bias gradient come
    from the LayerNorm backward pass."""
    inputs, dout = ln_mlp_inputs(dtype, shape=(2, 37, D))
    fn = lambda *a: ln_mlp(*a, residual=True)  # noqa: E731
    check_fwd_bwd(LN_MLP_NAMES, fn, ln_mlp_residual_reference, inputs, dout, dtype)


def ln_linear_reference(x, ln_w, ln_b, eps, w, b):
    return F.linear(F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps), w, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("triton_gemm", [False, True], ids=["cublas", "triton"])
def test_ln_linear(dtype, triton_gemm):
    x = rand(2, 9, D, dtype=dtype, scale=2.0, seed=60)
    ln_w, ln_b = ln_params(D, dtype, seed=61)
    w, b = linear_params(3 * D, D, dtype, seed=63)
    dout = rand(2, 9, 3 * D, dtype=dtype, seed=65)
    fn = lambda *a: ln_linear(*a, triton_gemm=triton_gemm)  # noqa: E731
    check_fwd_bwd(["out", "dx", "dln_w", "dln_b", None, "dw", "db"], fn, ln_linear_reference,
                  [x, ln_w, ln_b, EPS, w, b], dout, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_recompute_norm_gives_identical_gradients(dtype):
    """Recomputing the LayerNorm output in backward gives the stored one's bits: same outputs, same
    grads."""
    inputs, dout = ln_mlp_inputs(dtype)
    a = run(lambda *t: ln_mlp(*t, recompute_norm=True), inputs, dout)
    b = run(lambda *t: ln_mlp(*t, recompute_norm=False), inputs, dout)
    assert all((p is None and q is None) or torch.equal(p, q) for p, q in zip(a, b))

    x, ln_w, ln_b = inputs[:3]
    w, bias = linear_params(3 * D, D, dtype, seed=66)
    d = rand(T, 3 * D, dtype=dtype, seed=67)
    args = [x, ln_w, ln_b, EPS, w, bias]
    for triton_gemm in (False, True):
        a = run(lambda *t: ln_linear(*t, recompute_norm=True, triton_gemm=triton_gemm), args, d)
        b = run(lambda *t: ln_linear(*t, recompute_norm=False, triton_gemm=triton_gemm), args, d)
        assert all((p is None and q is None) or torch.equal(p, q) for p, q in zip(a, b))


def qkv_split_reference(x, w, b):
    wq, wk, wv = w.chunk(3, 0)
    bq, bk, bv = b.chunk(3, 0)
    return qkv_reference(x, wq, bq, wk, bk, wv, bv)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("triton_gemm", [True, False], ids=["triton", "cublas"])
def test_qkv(dtype, triton_gemm):
    x = rand(2, 9, D, dtype=dtype, seed=70)
    w, b = linear_params(3 * D, D, dtype, seed=71)
    dout = rand(2, 9, 3 * D, dtype=dtype, seed=73)
    fn = lambda x, w, b: qkv(x, w, b, triton_gemm=triton_gemm)  # noqa: E731
    q, k, v = fn(x, w, b)
    assert q.shape == k.shape == v.shape == (2, 9, D)
    check_fwd_bwd(["qkv", "dx", "dw", "db"], fn, qkv_split_reference, [x, w, b], dout, dtype)


def test_qkv_weights_concatenates_and_is_differentiable():
    torch.manual_seed(0)
    q, k, v = (torch.nn.Linear(D, D, device=DEVICE) for _ in range(3))
    w, b = qkv_weights(q, k, v)
    assert w.shape == (3 * D, D) and b.shape == (3 * D,)
    assert torch.equal(w, torch.cat([q.weight, k.weight,
                                     v.weight])) and torch.equal(b[D:2 * D], k.bias)
    x = rand(T, D, seed=74)
    outs = qkv(x, w, b)
    for o, ref in zip(outs, qkv_reference(x, q.weight, q.bias, k.weight, k.bias, v.weight, v.bias)):
        assert (o - ref).abs().max().item() < 1e-5
    # a different weight per projection
    sum(o.pow(2).sum() * (i + 1) for i, o in enumerate(outs)).backward()
    gx = [2 * (i + 1) * (x @ m.weight.t() + m.bias) for i, m in enumerate((q, k, v))]
    for m, g in zip((q, k, v), gx):
        assert (m.weight.grad - g.t() @ x).abs().max().item() < 1e-3 * g.abs().max().item()
        assert (m.bias.grad - g.sum(0)).abs().max().item() < 1e-3 * g.abs().max().item()
    qn, kn, vn = (torch.nn.Linear(D, D, bias=False) for _ in range(3))
    w, b = qkv_weights(qn, kn, vn)
    assert b is None and w.shape == (3 * D, D)


# -------------------------------------------------------------- heads: LN + QKV + split, pack_heads
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pack_heads_copies_exactly_and_sums_in_fp32(layout, dtype):
    B, H, S, Dh = 2, 3, 5, 24
    g = [rand(B, S, H, Dh, dtype=dtype, seed=100 + i) for i in range(3)]
    heads = [t.transpose(1, 2) for t in g]  # [B, H, S, D] views in cuDNN's [B, S, H, D] order
    if layout == "bhsd":
        heads = [t.contiguous() for t in heads]
    packed, sums = pack_heads(*heads)
    expect = torch.cat([t.reshape(B * S, H * Dh) for t in g], -1)
    assert packed.dtype == dtype and torch.equal(packed, expect)
    assert sums.dtype == torch.float32
    col = expect.abs().sum(0).max().item()
    assert (sums.double() - expect.double().sum(0)).abs().max().item() < 1e-5 * col
    packed2, none = pack_heads(*heads, bias_grad=False)
    assert none is None and torch.equal(packed2, packed)
    with pytest.raises(ValueError, match=r"\[B, H, S, D\]"):
        pack_heads(heads[0], heads[1], heads[2][:, :, :-1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("recompute_norm,projection",
                         [(True, "planes"), (False, "planes"), (True, "concat"), (False, "concat"),
                          (True, "triton")],
                         ids=["planes-recompute", "planes-store", "concat-recompute",
                              "concat-store", "triton"])
def test_ln_qkv_heads(dtype, recompute_norm, projection):
    H = 3
    x = rand(2, 9, D, dtype=dtype, scale=2.0, seed=110)
    ln_w, ln_b = ln_params(D, dtype, seed=111)
    w, b = linear_params(3 * D, D, dtype, seed=113)
    dout = rand(2, H, 9, 3 * (D // H), dtype=dtype, seed=115)  # q, k, v concatenated, last dim

    def fn(*a):
        return ln_qkv_heads(*a, recompute_norm=recompute_norm, projection=projection)

    tri = check_fwd_bwd(["qkv", "dx", "dln_w", "dln_b", None, "dw", "db", None], fn,
                        ln_qkv_heads_reference, [x, ln_w, ln_b, EPS, w, b, H], dout, dtype)
    assert tri[1].shape == x.shape
    with pytest.raises(ValueError, match="3 x heads"):
        ln_qkv_heads(x, ln_w, ln_b, EPS, w[:-1], b, H)
    with pytest.raises(ValueError, match="projection must be one of"):
        ln_qkv_heads(x, ln_w, ln_b, EPS, w, b, H, projection="fused")


def attention_half(x, branch, ln_w, ln_b, eps, w, b, heads, wo, bo):
    """``h + out_proj(SDPA(q, k, v))`` for ``h = x + branch`` on the fused node (the first half of
    an encoder layer): the node adds branch in its LayerNorm pass, passes h through and owns
    out_proj's bias gradient."""
    B, S, n = x.shape
    q, k, v, res = ln_qkv_heads(x, ln_w, ln_b, eps, w, b, heads, residual_bias=bo, branch=branch)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, S, n)
    return res + F.linear(o, wo, bo.detach())


def attention_half_reference(x, branch, ln_w, ln_b, eps, w, b, heads, wo, bo):
    h = x + branch if branch is not None else x
    q, k, v = ln_qkv_heads_reference(h, ln_w, ln_b, eps, w, b, heads)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(*x.shape)
    return h + F.linear(o, wo, bo)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_branch", [False, True], ids=["x", "x+branch"])
def test_ln_qkv_heads_residual(dtype, with_branch):
    """The residual's gradient added to dx in LN1's backward, out_proj's bias gradient taken there,
    and (with a branch) the previous block's residual add done in the LayerNorm pass."""
    H = 3
    x = rand(2, 9, D, dtype=dtype, scale=2.0, seed=116)
    branch = rand(2, 9, D, dtype=dtype, seed=121) if with_branch else None
    ln_w, ln_b = ln_params(D, dtype, seed=117)
    w, b = linear_params(3 * D, D, dtype, seed=118)
    wo, bo = linear_params(D, D, dtype, seed=119)
    dout = rand(2, 9, D, dtype=dtype, seed=120)
    names = ["out", "dx", "dbranch" if with_branch else None, "dln_w", "dln_b", None, "dw", "db",
             None, "dwo", "dbo"]
    tri = check_fwd_bwd(names, attention_half, attention_half_reference,
                        [x, branch, ln_w, ln_b, EPS, w, b, H, wo, bo], dout, dtype)
    if with_branch:  # x and branch reach the sum alike: one gradient
        assert torch.equal(tri[1], tri[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_ln_forward(dtype):
    """h = x + a rounded as eager's add, and LayerNorm of that h: both within the 2x rule of
    eager."""
    x = rand(37, D, dtype=dtype, scale=2.0, shift=0.3, seed=122)
    a = rand(37, D, dtype=dtype, seed=123)
    ln_w, ln_b = ln_params(D, dtype, seed=124)
    h, y, mean, rstd = add_ln_forward(x, a, ln_w, ln_b, EPS)
    assert torch.equal(h, x + a)
    y_plain, mean_plain, rstd_plain = ln_forward(x + a, ln_w, ln_b, EPS)
    assert torch.equal(y, y_plain) and torch.equal(mean, mean_plain)
    assert torch.equal(rstd, rstd_plain)
    with pytest.raises(ValueError, match="added before the LayerNorm"):
        add_ln_forward(x, a[:-1], ln_w, ln_b, EPS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("recompute_norm", [True, False], ids=["recompute", "store"])
def test_add_ln_mlp(dtype, recompute_norm):
    """``(h, mlp(layer_norm(h)))`` for h = x + branch, consumed as a sum (as the next layer does)
    and as two separate outputs with different gradients (fc2's bias gradient then is not dres's
    column sum)."""
    inputs, dout = ln_mlp_inputs(dtype, shape=(2, 37, D))
    branch = rand(2, 37, D, dtype=dtype, seed=125)
    args = [inputs[0], branch] + inputs[1:]
    fn = lambda *a: add_ln_mlp(*a, recompute_norm=recompute_norm)  # noqa: E731
    names = ["out", "dx", "dbranch", "dln_w", "dln_b", None, "dw1", "db1", "dw2", "db2"]
    check_fwd_bwd(names, lambda *a: sum(fn(*a)), lambda *a: sum(add_ln_mlp_reference(*a)), args,
                  dout, dtype)
    # out = cat(h, mlp): h and the MLP output get their own gradients
    dh = rand(2, 37, D, dtype=dtype, seed=126)
    check_fwd_bwd(names, fn, add_ln_mlp_reference, args, torch.cat([dh, dout], -1), dtype)


# --------------------------------------------------------------------- GPU: so400m sizes, bf16/fp32
TOKENS, HIDDEN, MLP_DIM = 4096, 1152, 4304
GPU_DTYPES = [torch.bfloat16, torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_ln_mlp(dtype):
    inputs, dout = ln_mlp_inputs(dtype, shape=(TOKENS, HIDDEN), device="cuda", hidden=HIDDEN,
                                 inter=MLP_DIM)
    for recompute in (True, False):
        fn = lambda *a: ln_mlp(*a, recompute_norm=recompute)  # noqa: E731
        check_fwd_bwd(LN_MLP_NAMES, fn, ln_mlp_reference, inputs, dout, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_mlp_and_linear_gelu(dtype):
    x = rand(TOKENS, HIDDEN, dtype=dtype, seed=80, device="cuda")
    w1, b1 = linear_params(MLP_DIM, HIDDEN, dtype, seed=81, device="cuda")
    w2, b2 = linear_params(HIDDEN, MLP_DIM, dtype, seed=83, device="cuda")
    dout = rand(TOKENS, HIDDEN, dtype=dtype, seed=85, device="cuda")
    check_fwd_bwd(["out", "dx", "dw1", "db1", "dw2", "db2"], mlp, mlp_reference,
                  [x, w1, b1, w2, b2], dout, dtype)
    d1 = rand(TOKENS, MLP_DIM, dtype=dtype, seed=86, device="cuda")
    check_fwd_bwd(["out", "dx", "dw", "db"], linear_gelu, linear_gelu_reference, [x, w1, b1], d1,
                  dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_layer_norm_and_qkv(dtype):
    x = rand(TOKENS, HIDDEN, dtype=dtype, scale=2.0, seed=90, device="cuda")
    ln_w, ln_b = ln_params(HIDDEN, dtype, seed=91, device="cuda")
    dy = rand(TOKENS, HIDDEN, dtype=dtype, seed=93, device="cuda")
    check_fwd_bwd(["y", "dx", "dw", "db", None], layer_norm, layer_norm_reference,
                  [x, ln_w, ln_b, EPS], dy, dtype)
    w, b = linear_params(3 * HIDDEN, HIDDEN, dtype, seed=94, device="cuda")
    d = rand(TOKENS, 3 * HIDDEN, dtype=dtype, seed=96, device="cuda")
    check_fwd_bwd(["qkv", "dx", "dw", "db"], lambda *a: qkv(*a, triton_gemm=True),
                  qkv_split_reference, [x, w, b], d, dtype)
    check_fwd_bwd(["out", "dx", "dln_w", "dln_b", None, "dw", "db"],
                  lambda *a: ln_linear(*a, triton_gemm=True), ln_linear_reference,
                  [x, ln_w, ln_b, EPS, w, b], d, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_ln_apply_is_the_forward_output(dtype):
    x = rand(TOKENS, HIDDEN, dtype=dtype, scale=2.0, shift=0.5, seed=99, device="cuda")
    w, b = ln_params(HIDDEN, dtype, seed=100, device="cuda")
    y, mean, rstd = ln_forward(x, w, b, EPS)
    assert torch.equal(ln_apply(x, w, b, mean, rstd), y)


@pytest.mark.gpu
def test_gpu_gelu_epilogue_ulp():
    a = rand(TOKENS, HIDDEN, dtype=torch.bfloat16, seed=97, device="cuda")
    w, b = linear_params(MLP_DIM, HIDDEN, torch.bfloat16, seed=98, device="cuda")
    ref = F.gelu(F.linear(a.double(), w.double(), b.double()), approximate="tanh")
    u = ulp(ref, torch.bfloat16)
    eager = ((linear_gelu_reference(a, w, b).double() - ref).abs() / u).mean().item()
    fused = ((gemm(a, w.t(), b, epilogue="gelu")[0].double() - ref).abs() / u).mean().item()
    rounded = ((gemm(a, w.t(), b,
                     epilogue="gelu_rounded")[0].double() - ref).abs() / u).mean().item()
    assert fused < 0.8 * eager and rounded == pytest.approx(eager, rel=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_gemm_gelu_backward_and_ln_mlp_residual(dtype):
    d = rand(TOKENS, HIDDEN, dtype=dtype, seed=120, device="cuda")
    w2 = rand(HIDDEN, MLP_DIM, dtype=dtype, scale=MLP_DIM ** -0.5, seed=121, device="cuda")
    pre = rand(TOKENS, MLP_DIM, dtype=dtype, scale=1.5, seed=122, device="cuda")
    for b in (w2, w2.t().contiguous().t()):  # both TMA operand layouts on Hopper
        check_gelu_backward(*gemm_gelu_backward(d, b, pre), d, b, pre, dtype)
    inputs, dout = ln_mlp_inputs(dtype, shape=(TOKENS, HIDDEN), device="cuda", hidden=HIDDEN,
                                 inter=MLP_DIM)
    for dgrad in (False, True):
        fn = lambda *a: ln_mlp(*a, residual=True, dgrad_gemm=dgrad)  # noqa: E731
        check_fwd_bwd(LN_MLP_NAMES, fn, ln_mlp_residual_reference, inputs, dout, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("projection", ["planes", "concat"])
def test_gpu_ln_qkv_heads_through_sdpa(dtype, projection):
    """so400m widths, the gradients SDPA (cuDNN on Hopper) hands back, used as views or packed by
    pack_heads."""
    H = 16
    x = rand(16, 256, HIDDEN, dtype=dtype, scale=2.0, seed=130, device="cuda")
    ln_w, ln_b = ln_params(HIDDEN, dtype, seed=131, device="cuda")
    w, b = linear_params(3 * HIDDEN, HIDDEN, dtype, seed=133, device="cuda")
    dout = rand(16, 256, HIDDEN, dtype=dtype, seed=135, device="cuda")

    def attn(fn):
        def f(*a):
            q, k, v = fn(*a)
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(16, 256, HIDDEN)
        return f

    check_fwd_bwd(["out", "dx", "dln_w", "dln_b", None, "dw", "db", None],
                  attn(lambda *a: ln_qkv_heads(*a, projection=projection)),
                  attn(ln_qkv_heads_reference), [x, ln_w, ln_b, EPS, w, b, H], dout, dtype)
