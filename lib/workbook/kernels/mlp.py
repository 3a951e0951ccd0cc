"""The fused SigLIP-2 MLP and the LayerNorm-fused projections built on the Triton GEMM and LayerNorm.

What is fused, and what is recomputed instead of stored (the memory the seed report saves):

- ``linear_gelu``: fc1 + bias + GELU(tanh) in one GEMM, the GELU applied to the fp32 accumulator. It
  stores the pre-activation (needed for GELU') and not the activation.
- ``mlp``: fc1+GELU, then fc2 (cuBLAS). Backward recomputes the activation from the stored pre-activation
  for fc2's weight gradient and fuses GELU' into fc2's data-gradient GEMM (Triton ``gelu_grad``
  epilogue). Only the pre-activation is kept between forward and backward: eager also keeps the
  activation, one more tokens x 4304 tensor per layer.
- ``ln_linear`` / ``ln_mlp``: the LayerNorm in front of the QKV projection / the MLP, fused into the same
  autograd node. With ``recompute_norm`` (the default) the normalised activations are recomputed in
  backward from the block input (FlashAttention's ``layer_norm_linear_fn`` design), so the LayerNorm output
  is not stored either. This is recomputation inside one fused operation, not activation checkpointing
  (no forward is re-run); ``recompute_norm=False`` stores it and is reported as its own variant.
- ``qkv``: the three projections as one GEMM over concatenated weights.

Each public function has a plain-PyTorch ``*_reference`` beside it, computing exactly what eager
transformers computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .activations import gelu_tanh, gelu_tanh_grad, to_out
from .gemm import gemm
from .layernorm import ln_backward, ln_forward
from .runtime import INTERPRET


@triton.jit
def _gelu_kernel(pre_ptr, dact_ptr, out_ptr, n, GRAD: tl.constexpr, OUT_BF16: tl.constexpr,
                 INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    pre = tl.load(pre_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if GRAD:
        out = tl.load(dact_ptr + offs, mask=m, other=0.0).to(tl.float32) * gelu_tanh_grad(pre)
    else:
        out = gelu_tanh(pre)
    tl.store(out_ptr + offs, to_out(out, OUT_BF16, INTERPRET).to(out_ptr.dtype.element_ty), mask=m)


def _gelu_elementwise(pre: torch.Tensor, dact: torch.Tensor | None = None) -> torch.Tensor:
    """GELU(pre), or dact * GELU'(pre) when dact is given (the recomputation in backward)."""
    pre = pre.contiguous()
    out = torch.empty_like(pre)
    n = pre.numel()
    block = 1024
    _gelu_kernel[(triton.cdiv(n, block),)](pre, dact.contiguous() if dact is not None else pre, out, n,
                                           GRAD=dact is not None, OUT_BF16=pre.dtype == torch.bfloat16,
                                           INTERPRET=INTERPRET, BLOCK=block)
    return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _bias_grad(d: torch.Tensor, bias) -> torch.Tensor | None:
    return None if bias is None else d.sum(0, dtype=torch.float32).to(bias.dtype)


# ---------------------------------------------------------------------------------------------- fc1 + GELU
class LinearGeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, round_preact):
        x2 = _flat(x)
        act, pre = gemm(x2, weight.t(), bias, epilogue="gelu_rounded" if round_preact else "gelu", store_aux=True)
        ctx.save_for_backward(x2, weight, pre)
        ctx.has_bias = bias is not None
        return act.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dact):
        x2, weight, pre = ctx.saved_tensors
        dpre = _gelu_elementwise(pre, _flat(dact))
        dx = (dpre @ weight).view(*dact.shape[:-1], weight.shape[1])
        dw = dpre.t() @ x2
        db = dpre.sum(0, dtype=torch.float32).to(weight.dtype) if ctx.has_bias else None
        return dx, dw, db, None


def linear_gelu(x, weight, bias=None, *, round_preact: bool = False):
    """``gelu_tanh(x @ weight.T + bias)`` with GELU on the fp32 accumulator (``round_preact``: eager's rounding)."""
    return LinearGeluFn.apply(x, weight, bias, round_preact)


def linear_gelu_reference(x, weight, bias=None):
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


# ------------------------------------------------------------------------- (LayerNorm +) fc1 + GELU + fc2
def _norm(ctx, x2, y, mean, rstd, ln_w, ln_b):
    """The LayerNorm output for backward: stored, or recomputed from the block input and fp32 statistics."""
    if y is not None:
        return y
    return ln_forward(x2, ln_w, ln_b, ctx.eps, stats=False)[0]


class MLPFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, w1, b1, w2, b2, recompute_norm):
        x2 = _flat(x)
        has_ln = ln_w is not None
        if has_ln:
            y, mean, rstd = ln_forward(x2, ln_w, ln_b, eps)
        else:
            y, mean, rstd = x2, None, None
        act, pre = gemm(y, w1.t(), b1, epilogue="gelu", store_aux=True)
        out = F.linear(act, w2, b2)
        del act  # not saved: recomputed from ``pre`` in backward
        keep_y = None if (has_ln and recompute_norm) else y
        ctx.save_for_backward(x2, keep_y, mean, rstd, ln_w, ln_b, w1, w2, pre)
        ctx.eps, ctx.has_ln, ctx.has_b = eps, has_ln, (b1 is not None, b2 is not None)
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, dout):
        x2, y, mean, rstd, ln_w, ln_b, w1, w2, pre = ctx.saved_tensors
        d2 = _flat(dout)
        y = _norm(ctx, x2, y, mean, rstd, ln_w, ln_b)
        act = _gelu_elementwise(pre)  # recomputed, not stored
        dw2 = d2.t() @ act
        del act
        db2 = d2.sum(0, dtype=torch.float32).to(w2.dtype) if ctx.has_b[1] else None
        dpre, _ = gemm(d2, w2, epilogue="gelu_grad", aux=pre)  # (dout @ W2) * GELU'(pre) in one GEMM
        dw1 = dpre.t() @ y
        db1 = dpre.sum(0, dtype=torch.float32).to(w1.dtype) if ctx.has_b[0] else None
        dy = dpre @ w1
        del dpre
        dln_w = dln_b = None
        if ctx.has_ln:
            dx, dln_w, dln_b = ln_backward(dy, x2, ln_w, mean, rstd)
        else:
            dx = dy
        return (dx.view(*dout.shape[:-1], x2.shape[1]), dln_w, dln_b, None, dw1, db1, dw2, db2, None)


def mlp(x, w1, b1, w2, b2):
    """SigLIP-2 MLP ``fc2(gelu_tanh(fc1(x)))`` with the fused fc1 epilogue and the recomputing backward."""
    return MLPFn.apply(x, None, None, 0.0, w1, b1, w2, b2, True)


def mlp_reference(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


def ln_mlp(x, ln_w, ln_b, eps, w1, b1, w2, b2, *, recompute_norm: bool = True):
    """``mlp(layer_norm(x))`` as one autograd node (the second half of an encoder layer, before the residual)."""
    return MLPFn.apply(x, ln_w, ln_b, eps, w1, b1, w2, b2, recompute_norm)


# ------------------------------------------------------------------------------ LayerNorm + linear (QKV)
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
        y = _norm(ctx, x2, y, mean, rstd, ln_w, ln_b)
        dw = d2.t() @ y
        db = d2.sum(0, dtype=torch.float32).to(weight.dtype) if ctx.has_bias else None
        dx, dln_w, dln_b = ln_backward(d2 @ weight, x2, ln_w, mean, rstd)
        return dx.view(*dout.shape[:-1], x2.shape[1]), dln_w, dln_b, None, dw, db, None, None


def ln_linear(x, ln_w, ln_b, eps, weight, bias, *, recompute_norm: bool = True, triton_gemm: bool = False):
    """``linear(layer_norm(x))`` as one autograd node; ``triton_gemm`` runs the projection in the Triton GEMM."""
    return LNLinearFn.apply(x, ln_w, ln_b, eps, weight, bias, recompute_norm, triton_gemm)


def qkv_weights(q, k, v):
    """One ``[3*hidden, hidden]`` weight and ``[3*hidden]`` bias from three ``nn.Linear`` (differentiable)."""
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
