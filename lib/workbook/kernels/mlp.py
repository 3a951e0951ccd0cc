"""The fused SigLIP-2 MLP and the LayerNorm-fused projections, on the Triton GEMM and LayerNorm.

What is fused, and what is recomputed instead of stored (the memory the seed report saves):

- ``linear_gelu``: fc1 + bias + GELU(tanh) in one GEMM, the GELU applied to the fp32 accumulator. It
  stores the pre-activation (needed for GELU') and not the activation.
- ``mlp``: fc1+GELU, then fc2 (cuBLAS). Backward recomputes the activation from the stored
  pre-activation for fc2's weight gradient, in the same Triton pass as GELU' and fc1's bias gradient
  (or, with ``dgrad_gemm``, in the epilogue of fc2's data-gradient GEMM). Only the pre-activation is
  kept between forward and backward: eager also keeps the activation, one more tokens x 4304 tensor
  per layer. Backward writes over its own buffers once they are spent (GELU' over fc2's data
  gradient, the recomputed activation over the pre-activation; in ``linear_gelu`` GELU' over the
  pre-activation), so a retained graph cannot be run backward twice: the second time raises
  autograd's in-place error.
- ``ln_linear`` / ``ln_mlp``: the LayerNorm in front of the QKV projection / the MLP, fused into the
  same autograd node. With ``recompute_norm`` (the default) the normalised activations are
  recomputed in backward from the block input and the saved fp32 statistics (FlashAttention's
  ``layer_norm_linear_fn`` design), so the LayerNorm output is not stored either. This is
  recomputation inside one fused operation, not activation checkpointing (no forward is re-run);
  ``recompute_norm=False`` stores it and is reported as its own variant.
- ``qkv``: the three projections as one GEMM over concatenated weights.
- ``ln_mlp(..., residual=True)``: the encoder layer's whole second half, ``x + mlp(layer_norm(x))``.

Each public function has a plain-PyTorch ``*_reference`` beside it, computing exactly what eager
transformers computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .activations import gelu_tanh, gelu_tanh_grad, to_out
from .gemm import gemm, gemm_gelu_backward
from .layernorm import add_ln_forward, ln_backward, ln_backward_residual, ln_forward, ln_output
from .runtime import INTERPRET


@triton.jit
def _gelu_bwd_kernel(dact_ptr, pre_ptr, dpre_ptr, act_ptr, n, STORE_ACT: tl.constexpr,
                     OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    """``dpre = dact * GELU'(pre)``; with ``STORE_ACT`` also the recomputed ``act = GELU(pre)``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    pre = tl.load(pre_ptr + offs, mask=m, other=0.0).to(tl.float32)
    dpre = tl.load(dact_ptr + offs, mask=m, other=0.0).to(tl.float32) * gelu_tanh_grad(pre)
    tl.store(dpre_ptr + offs, to_out(dpre, OUT_BF16, INTERPRET).to(dpre_ptr.dtype.element_ty),
             mask=m)
    if STORE_ACT:
        tl.store(act_ptr + offs,
                 to_out(gelu_tanh(pre), OUT_BF16, INTERPRET).to(act_ptr.dtype.element_ty), mask=m)


def _written_over(t: torch.Tensor) -> None:
    """Mark a tensor a Triton pass has written over (its stores do not bump autograd's version
    counter), so that a backward that saved it (a second one through a retained graph) raises
    instead of reading other values."""
    torch.autograd.graph.increment_version(t)


def _gelu_grad(pre: torch.Tensor, dact: torch.Tensor, *, over_pre: bool = False) -> torch.Tensor:
    """``dact * GELU'(pre)`` in one pass (fc1+GELU's backward when no fc2 GEMM follows it); with
    ``over_pre`` written over ``pre`` itself (each element is read before it is written, by the same
    program), for a caller that owns ``pre`` and needs it no more."""
    if over_pre and not pre.is_contiguous():
        raise ValueError("over_pre needs pre contiguous")
    pre, dact = pre.contiguous(), dact.contiguous()
    out = pre if over_pre else torch.empty_like(pre)
    n = pre.numel()
    block = 1024
    _gelu_bwd_kernel[(triton.cdiv(n, block),)](dact, pre, out, out, n, STORE_ACT=False,
                                               OUT_BF16=pre.dtype == torch.bfloat16,
                                               INTERPRET=INTERPRET, BLOCK=block)
    if over_pre:
        _written_over(pre)
    return out


def gelu_backward_recompute(dact: torch.Tensor, pre: torch.Tensor, *, overwrite: bool = False,
                            act_over_pre: bool = False):
    """One pass: ``dpre = dact * GELU'(pre)`` and the recomputed ``act = GELU(pre)``; plus fc1's
    bias gradient ``sum(dpre, 0)`` in fp32. With ``overwrite`` dpre is written over ``dact``, with
    ``act_over_pre`` act over ``pre`` (each element is read before it is written, by the same
    program), for a caller that owns them: with both the MLP backward holds two tokens x
    intermediate tensors at its peak rather than four (eager's holds three). The bias gradient is a
    torch reduction after this flat pass: column sums inside it, or through fc1's weight-gradient
    GEMM, were slower (outputs/reference/nvidia-h200/README.md)."""
    like_pre = dact.is_contiguous() and dact.shape == pre.shape and dact.dtype == pre.dtype
    if overwrite and not like_pre:
        raise ValueError("overwrite needs dact contiguous and of pre's shape and dtype")
    if act_over_pre and not pre.is_contiguous():
        raise ValueError("act_over_pre needs pre contiguous")
    dact, pre = dact.contiguous(), pre.contiguous()
    dpre = dact if overwrite else torch.empty_like(pre)
    act = pre if act_over_pre else torch.empty_like(pre)
    n = pre.numel()
    block = 256 if INTERPRET else 2048
    _gelu_bwd_kernel[(triton.cdiv(n, block),)](dact, pre, dpre, act, n, STORE_ACT=True,
                                               OUT_BF16=pre.dtype == torch.bfloat16,
                                               INTERPRET=INTERPRET, BLOCK=block, num_warps=8)
    for t, written in ((dact, overwrite), (pre, act_over_pre)):
        if written:
            _written_over(t)
    return dpre, act, dpre.reshape(-1, pre.shape[-1]).sum(0, dtype=torch.float32)


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


# ----------------------------------------------------------------------------------- fc1 + GELU
class LinearGeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, round_preact):
        x2 = _flat(x)
        act, pre = gemm(x2, weight.t(), bias, epilogue="gelu_rounded" if round_preact else "gelu",
                        store_aux=True)
        ctx.save_for_backward(x2, weight, pre)
        ctx.has_bias = bias is not None
        return act.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dact):
        x2, weight, pre = ctx.saved_tensors
        # pre is this node's own and needed no more
        dpre = _gelu_grad(pre, _flat(dact), over_pre=True)
        dx = (dpre @ weight).view(*dact.shape[:-1], weight.shape[1])
        dw = dpre.t() @ x2
        db = dpre.sum(0, dtype=torch.float32).to(weight.dtype) if ctx.has_bias else None
        return dx, dw, db, None


def linear_gelu(x, weight, bias=None, *, round_preact: bool = False):
    """``gelu_tanh(x @ weight.T + bias)``, GELU on the fp32 accumulator (``round_preact``: eager's
    rounding)."""
    return LinearGeluFn.apply(x, weight, bias, round_preact)


def linear_gelu_reference(x, weight, bias=None):
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


# -------------------------------------------------------------- (LayerNorm +) fc1 + GELU + fc2
class MLPFn(torch.autograd.Function):
    """``mode``: "plain" (``mlp(ln(x))``), "residual" (``x + mlp(ln(x))``) or "deferred" (the
    input is ``x + branch``, added inside the LayerNorm pass, and ``(h, mlp(ln(h)))`` is returned
    unsummed)."""

    @staticmethod
    def forward(ctx, x, branch, ln_w, ln_b, eps, w1, b1, w2, b2, recompute_norm, dgrad_gemm, mode):
        x2 = _flat(x)
        has_ln = ln_w is not None
        if branch is not None:
            x2, y, mean, rstd = add_ln_forward(x2, _flat(branch), ln_w, ln_b, eps)
        elif has_ln:
            y, mean, rstd = ln_forward(x2, ln_w, ln_b, eps)
        else:
            y, mean, rstd = x2, None, None
        act, pre = gemm(y, w1.t(), b1, epilogue="gelu", store_aux=True)
        out = F.linear(act, w2, b2)
        del act  # not saved: recomputed from ``pre`` in backward
        if mode == "residual":
            out += x2
        keep_y = None if (has_ln and recompute_norm) else y
        ctx.save_for_backward(x2, keep_y, mean, rstd, ln_w, ln_b, w1, w2, pre)
        ctx.eps, ctx.has_ln, ctx.dgrad_gemm = eps, has_ln, dgrad_gemm
        ctx.has_b = (b1 is not None, b2 is not None)
        ctx.mode, ctx.has_branch, ctx.shape = mode, branch is not None, x.shape
        out = out.view(*x.shape[:-1], w2.shape[0])
        return (x2.view(x.shape), out) if mode == "deferred" else out

    @staticmethod
    def backward(ctx, *grads):
        x2, y, mean, rstd, ln_w, ln_b, w1, w2, pre = ctx.saved_tensors
        dres = None
        if ctx.mode == "deferred":  # grads of h (the stream) and of the MLP's output
            dres, dout = (_flat(g) for g in grads)
        else:
            dout = grads[0]
        d2 = _flat(dout)
        if ctx.mode == "residual":
            dres = d2
        y = ln_output(x2, y, ln_w, ln_b, mean, rstd)
        # GELU', the recomputed activation and fc1's bias grad: in fc2's data-gradient GEMM, or
        # after a cuBLAS one in one Triton pass (dpre over its own product d2 @ w2, act over this
        # node's saved pre)
        if ctx.dgrad_gemm:  # a K-major B: TMA's fast side
            dpre, act, db1 = gemm_gelu_backward(d2, w2.t().contiguous().t(), pre)
        else:
            dpre, act, db1 = gelu_backward_recompute(d2 @ w2, pre, overwrite=True,
                                                     act_over_pre=True)
        dw2 = d2.t() @ act
        del act
        dw1 = dpre.t() @ y
        db1 = db1.to(w1.dtype) if ctx.has_b[0] else None
        dy = dpre @ w1
        del dpre
        dln_w = dln_b = dres_sum = None
        # dx = dres + LN'(dy), and dres's column sum, in the LayerNorm pass
        if ctx.has_ln and dres is not None:
            dx, dln_w, dln_b, dres_sum = ln_backward_residual(dy, x2, ln_w, mean, rstd, dres)
        elif ctx.has_ln:
            dx, dln_w, dln_b = ln_backward(dy, x2, ln_w, mean, rstd)
        else:
            dx = dy + dres if dres is not None else dy
        db2 = None
        # fc2's bias grad is dres's column sum when dres is the output's gradient itself
        if ctx.has_b[1]:
            same = (dres_sum is not None and dres.data_ptr() == d2.data_ptr()
                    and dres.stride() == d2.stride())
            db2 = (dres_sum if same else d2.sum(0, dtype=torch.float32)).to(w2.dtype)
        dx = dx.view(ctx.shape)
        return (dx, dx if ctx.has_branch else None, dln_w, dln_b, None, dw1, db1, dw2, db2,
                None, None, None)


def mlp(x, w1, b1, w2, b2, *, dgrad_gemm: bool = False):
    """SigLIP-2 MLP ``fc2(gelu_tanh(fc1(x)))``: the fused fc1 epilogue, the recomputing backward.

    ``dgrad_gemm`` fuses GELU', the activation recompute and fc1's bias gradient into fc2's
    data-gradient GEMM in Triton (:func:`gemm_gelu_backward`); by default that GEMM is cuBLAS and
    the three share one Triton pass, which was faster: the fused GEMM's epilogue (a load, two stores
    and column sums) is not hidden behind its main loop (outputs/reference/nvidia-h200/README.md).
    """
    return MLPFn.apply(x, None, None, None, 0.0, w1, b1, w2, b2, True, dgrad_gemm, "plain")


def mlp_reference(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


def ln_mlp(x, ln_w, ln_b, eps, w1, b1, w2, b2, *, recompute_norm: bool = True,
           dgrad_gemm: bool = False, residual: bool = False):
    """``mlp(layer_norm(x))`` as one autograd node (the second half of an encoder layer); with
    ``residual`` ``x + mlp(layer_norm(x))``, whose backward adds the residual's gradient and sums
    fc2's bias gradient in the LayerNorm backward pass instead of two more passes over memory."""
    return MLPFn.apply(x, None, ln_w, ln_b, eps, w1, b1, w2, b2, recompute_norm, dgrad_gemm,
                       "residual" if residual else "plain")


def add_ln_mlp(x, branch, ln_w, ln_b, eps, w1, b1, w2, b2, *, recompute_norm: bool = True,
               dgrad_gemm: bool = False):
    """``(h, mlp(layer_norm(h)))`` for ``h = x + branch``, as one node, the sum left to the
    consumer.

    The encoder layer's second half with both residual adds moved into LayerNorm passes: ``x +
    branch`` (the attention half) is added in this node's LayerNorm, and ``h + mlp(...)`` is left
    for the next layer's LayerNorm (:func:`workbook.kernels.heads.ln_qkv_heads` takes it as
    ``branch``). Backward adds h's gradient to dx in the LayerNorm backward pass and returns dx for
    both x and branch; when h's gradient and the output's are one tensor (as when a sum consumes
    them) its column sum there is fc2's bias grad.
    """
    return MLPFn.apply(x, branch, ln_w, ln_b, eps, w1, b1, w2, b2, recompute_norm, dgrad_gemm,
                       "deferred")


def add_ln_mlp_reference(x, branch, ln_w, ln_b, eps, w1, b1, w2, b2):
    h = x + branch
    return h, mlp_reference(F.layer_norm(h, (h.shape[-1],), ln_w, ln_b, eps), w1, b1, w2, b2)


# ------------------------------------------------------------------------------ LayerNorm + linear
# (QKV)
class LNLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, weight, bias, recompute_norm, triton_gemm):
        x2 = _flat(x)
        y, mean, rstd = ln_forward(x2, ln_w, ln_b, eps)
        out = gemm(y, weight.t(), bias)[0] if triton_gemm else F.linear(y, weight, bias)
        ctx.save_for_backward(x2, None if recompute_norm else y, mean, rstd, ln_w, ln_b, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dout):
        x2, y, mean, rstd, ln_w, ln_b, weight = ctx.saved_tensors
        d2 = _flat(dout)
        y = ln_output(x2, y, ln_w, ln_b, mean, rstd)
        dw = d2.t() @ y
        db = d2.sum(0, dtype=torch.float32).to(weight.dtype) if ctx.has_bias else None
        dx, dln_w, dln_b = ln_backward(d2 @ weight, x2, ln_w, mean, rstd)
        return dx.view(*dout.shape[:-1], x2.shape[1]), dln_w, dln_b, None, dw, db, None, None


def ln_linear(x, ln_w, ln_b, eps, weight, bias, *, recompute_norm: bool = True,
              triton_gemm: bool = False):
    """``linear(layer_norm(x))`` as one autograd node; ``triton_gemm`` runs the projection in the
    Triton GEMM."""
    return LNLinearFn.apply(x, ln_w, ln_b, eps, weight, bias, recompute_norm, triton_gemm)


def qkv_weights(q, k, v):
    """One ``[3*hidden, hidden]`` weight and ``[3*hidden]`` bias from three ``nn.Linear``
    (differentiable)."""
    w = torch.cat([q.weight, k.weight, v.weight], 0)
    b = torch.cat([q.bias, k.bias, v.bias], 0) if q.bias is not None else None
    return w, b


def qkv(x, weight, bias, *, triton_gemm: bool = True):
    """The fused QKV projection: one GEMM over concatenated weights, split into q, k, v."""
    x2 = _flat(x)
    out = _GemmFn.apply(x2, weight, bias) if triton_gemm else F.linear(x2, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0]).chunk(3, dim=-1)


def qkv_reference(x, wq, bq, wk, bk, wv, bv):
    return F.linear(x, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)


class _GemmFn(torch.autograd.Function):
    """The Triton GEMM as a differentiable linear layer (backward through cuBLAS)."""

    @staticmethod
    def forward(ctx, x2, weight, bias):
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        return gemm(x2, weight.t(), bias)[0]

    @staticmethod
    def backward(ctx, d):
        x2, weight = ctx.saved_tensors
        db = d.sum(0, dtype=torch.float32).to(weight.dtype) if ctx.has_bias else None
        return d @ weight, d.t() @ x2, db

