"""LayerNorm + fused QKV projection + head split as one autograd node, around torch SDPA.

Why it exists: SDPA takes q, k, v as ``[B, H, S, D]`` while the fused projection writes
``[B, S, 3*H*D]``. The forward split is free (views), but backward must put dq, dk and dv back into
one ``[B*S, 3*H*D]`` gradient for the projection's two GEMMs. autograd's unbind/permute backward
stacks and copies (most of the device copies of transformers' tower in a so400m training step), and
three strided ``copy_`` calls into one buffer still cost much of that. :func:`pack_heads` is one
Triton pass that writes the three head gradients into the projection's layout and sums the bias
gradient in fp32 on the way (fixed per-program partial sums, so it is deterministic), which also
saves the separate reduction over that gradient.

The LayerNorm output is recomputed in backward from the block input and its fp32 statistics unless
``recompute_norm=False`` (see :mod:`workbook.kernels.mlp`). The node also owns the attention half's
residual connection (see :func:`ln_qkv_heads`): the previous block's residual add happens in its
LayerNorm pass, and the residual's gradient and out_proj's bias gradient are taken in its LayerNorm
backward pass, so neither residual add of an encoder layer, nor the sum of the two gradients
reaching a block's input, costs a pass over memory of its own.

q, k and v stay interleaved views of the projection's output: handing cuDNN each of them contiguous
in ``[B, H, S, D]`` order (a copy after the GEMM) made both attention and the packing of its
gradients slower (outputs/reference/nvidia-h200/README.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import QKV_PROJECTIONS
from .gemm import gemm
from .layernorm import add_ln_forward, ln_backward, ln_backward_residual, ln_forward, ln_output
from .runtime import sm_count


@triton.jit
def _pack_kernel(q_ptr, k_ptr, v_ptr, out_ptr, sum_ptr, M, HD, s_q, s_k, s_v, s_out,
                 COLSUM: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """Rows of three ``[M, HD]`` matrices side by side into ``[M, 3*HD]``; column sums per program
    in fp32."""
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mc = cols < HD
    acc_q = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_k = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK,), dtype=tl.float32)
    for rb in range(pid, tl.cdiv(M, ROWS), progs):
        rows = rb * ROWS + tl.arange(0, ROWS)
        m = (rows[:, None] < M) & mc[None, :]
        dst = out_ptr + rows[:, None] * s_out + cols[None, :]
        g = tl.load(q_ptr + rows[:, None] * s_q + cols[None, :], mask=m, other=0.0)
        tl.store(dst, g, mask=m)
        acc_q += tl.sum(g.to(tl.float32), axis=0)
        g = tl.load(k_ptr + rows[:, None] * s_k + cols[None, :], mask=m, other=0.0)
        tl.store(dst + HD, g, mask=m)
        acc_k += tl.sum(g.to(tl.float32), axis=0)
        g = tl.load(v_ptr + rows[:, None] * s_v + cols[None, :], mask=m, other=0.0)
        tl.store(dst + 2 * HD, g, mask=m)
        acc_v += tl.sum(g.to(tl.float32), axis=0)
    if COLSUM:
        base = sum_ptr + pid * 3 * HD + cols
        tl.store(base, acc_q, mask=mc)
        tl.store(base + HD, acc_k, mask=mc)
        tl.store(base + 2 * HD, acc_v, mask=mc)


def pack_heads(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, *, bias_grad: bool = True):
    """``[B*S, 3*H*D]`` from three ``[B, H, S, D]`` tensors, and their column sums in fp32.

    Returns ``(packed, sums)``; ``sums`` (the QKV bias gradient, ``[3*H*D]`` fp32) is None without
    ``bias_grad``. Values are copied exactly (the dtype is kept). cuDNN's SDPA backward returns its
    gradients in ``[B, S, H, D]`` memory order, where each is a plain ``[B*S, H*D]`` matrix and the
    pass reads it in wide vector loads; any other layout is first made so (one more copy).
    """
    if not (dq.shape == dk.shape == dv.shape) or dq.dim() != 4:
        raise ValueError(f"pack_heads needs three [B, H, S, D] tensors of one shape, got "
                         f"{tuple(dq.shape)}, {tuple(dk.shape)}, {tuple(dv.shape)}")
    B, H, S, D = dq.shape
    M, HD = B * S, H * D
    gs = []
    for g in (dq, dk, dv):
        g = g.transpose(1, 2).reshape(M, HD)  # a view for [B, S, H, D] memory order, else a copy
        gs.append(g if g.stride(1) == 1 else g.contiguous())
    out = torch.empty((M, 3 * HD), device=dq.device, dtype=dq.dtype)
    block = triton.next_power_of_2(HD)
    rows = max(1, min(8, 8192 // block))
    progs = max(1, min(triton.cdiv(M, rows), sm_count(dq.device) * 4))
    sums = torch.empty((progs, 3 * HD), device=dq.device, dtype=torch.float32) if bias_grad else out
    _pack_kernel[(progs,)](*gs, out, sums, M, HD, *(g.stride(0) for g in gs), out.stride(0),
                           COLSUM=bias_grad, BLOCK=block, ROWS=rows,
                           num_warps=8 if block >= 1024 else 4)
    return out, (sums.sum(0) if bias_grad else None)


def _project(y, weight, bias, heads, b, s, projection):
    """q, k, v ``[B, H, S, D]`` views of the projection of y, computed as ``projection`` says."""
    n3 = weight.shape[0]
    hd, d = n3 // 3, n3 // (3 * heads)
    # "planes": three cuBLAS GEMMs into three contiguous planes, so SDPA gets transformers' strides
    if projection == "planes":
        out = torch.empty((3, y.shape[0], hd), device=y.device, dtype=y.dtype)
        for i in range(3):
            w = weight[i * hd:(i + 1) * hd].t()
            if bias is None:
                torch.mm(y, w, out=out[i])
            else:
                torch.addmm(bias[i * hd:(i + 1) * hd], y, w, out=out[i])
        return tuple(out[i].view(b, s, heads, d).transpose(1, 2) for i in range(3))
    out = gemm(y, weight.t(), bias)[0] if projection == "triton" else F.linear(y, weight, bias)
    return out.view(b, s, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)


class LNQKVHeadsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, branch, ln_w, ln_b, eps, weight, bias, heads, recompute_norm, projection,
                res_bias):
        b, s, n = x.shape
        x2 = x.reshape(b * s, n)
        if branch is not None:  # the previous block's deferred residual add, in this LayerNorm pass
            x2, y, mean, rstd = add_ln_forward(x2, branch.reshape(b * s, n), ln_w, ln_b, eps)
        else:
            y, mean, rstd = ln_forward(x2, ln_w, ln_b, eps)
        q, k, v = _project(y, weight, bias, heads, b, s, projection)
        ctx.save_for_backward(x2, None if recompute_norm else y, mean, rstd, ln_w, ln_b, weight)
        ctx.eps, ctx.has_bias, ctx.has_branch = eps, bias is not None, branch is not None
        ctx.residual, ctx.projection = res_bias is not None, projection
        if not ctx.residual:
            return q, k, v
        return q, k, v, (x2.view(b, s, n) if branch is not None else x)

    @staticmethod
    def backward(ctx, dq, dk, dv, dres=None):
        x2, y, mean, rstd, ln_w, ln_b, weight = ctx.saved_tensors
        y = ln_output(x2, y, ln_w, ln_b, mean, rstd)
        b, h, s, _ = dq.shape
        # "planes": three GEMMs per gradient on the head gradients as SDPA returns them (views, for
        # its [B, S, H, D] memory order)
        if ctx.projection == "planes":
            gs = [g.transpose(1, 2).reshape(b * s, -1) for g in (dq, dk, dv)]
            hd = gs[0].shape[1]
            dw = torch.empty_like(weight)
            for i, g in enumerate(gs):
                torch.mm(g.t(), y, out=dw[i * hd:(i + 1) * hd])
            db = torch.cat([g.sum(0, dtype=torch.float32) for g in gs]) if ctx.has_bias else None
            dy = gs[0] @ weight[:hd]
            dy.addmm_(gs[1], weight[hd:2 * hd])
            dy.addmm_(gs[2], weight[2 * hd:])
            del gs
        else:  # one [B*S, 3*H*D] gradient (and the bias gradient) from pack_heads, two GEMMs
            d2, db = pack_heads(dq, dk, dv, bias_grad=ctx.has_bias)
            dw = d2.t() @ y
            dy = d2 @ weight
            del d2
        db = None if db is None else db.to(weight.dtype)
        dres_sum = None
        # dx = dres + LN'(dy); dres's column sum is the residual branch's output bias grad
        if ctx.residual:
            dx, dln_w, dln_b, dres_sum = ln_backward_residual(dy, x2, ln_w, mean, rstd,
                                                              dres.reshape(x2.shape))
            dres_sum = dres_sum.to(weight.dtype)
        else:
            dx, dln_w, dln_b = ln_backward(dy, x2, ln_w, mean, rstd)
        dx = dx.view(b, s, -1)
        return (dx, dx if ctx.has_branch else None, dln_w, dln_b, None, dw, db, None, None, None,
                dres_sum)


def ln_qkv_heads(x, ln_w, ln_b, eps, weight, bias, heads: int, *, recompute_norm: bool = True,
                 projection: str = "concat", residual_bias: torch.Tensor | None = None,
                 branch: torch.Tensor | None = None):
    """q, k, v ``[B, H, S, D]`` of ``linear(layer_norm(x), weight, bias)``, one autograd node, for
    x ``[B, S, hidden]`` and the ``[3*hidden, hidden]`` concatenated weight (q, k, v order).

    ``projection``: "planes" (three cuBLAS GEMMs writing q, k and v each contiguous, as
    transformers' separate projections do; backward runs three GEMMs per gradient straight on SDPA's
    head gradients), "concat" (one cuBLAS GEMM over the concatenated weights, q/k/v interleaved
    views; backward through :func:`pack_heads`) or "triton" (that one GEMM in Triton). The so400m
    step was a little faster with "concat" than with "planes", hence the default
    (outputs/reference/nvidia-h200/README.md); the Triton GEMM is slower than cuBLAS at this shape
    (the notebook's kernel-speed table).

    With ``branch`` the input is ``x + branch``, added in the LayerNorm pass (the previous block's
    residual add, deferred by :func:`workbook.kernels.mlp.add_ln_mlp`). With ``residual_bias`` (the
    bias of the attention's output projection) it returns ``(q, k, v, res)``: ``res`` is the input
    (x, or x + branch) for the residual connection ``res + out_proj(attention)``. Its gradient then
    reaches this node's backward, which adds it to dx inside the LayerNorm backward pass (no
    separate accumulation of the input's two gradients) and returns its column sum as
    ``residual_bias``'s gradient; the caller must therefore add that bias without recording its
    gradient (``F.linear(o, w, b.detach())``), or it would be counted twice.
    """
    if x.dim() != 3:
        raise ValueError(f"ln_qkv_heads needs x as [batch, seq, hidden], got {tuple(x.shape)}")
    if weight.shape[0] % (3 * heads):
        raise ValueError(f"weight's {weight.shape[0]} rows are not 3 x heads ({heads}) x head_dim")
    if projection not in QKV_PROJECTIONS:
        raise ValueError(f"projection must be one of {QKV_PROJECTIONS}, got {projection!r}")
    return LNQKVHeadsFn.apply(x.contiguous(), branch, ln_w, ln_b, eps, weight, bias, heads,
                              recompute_norm, projection, residual_bias)


def ln_qkv_heads_reference(x, ln_w, ln_b, eps, weight, bias, heads: int):
    """What transformers computes: LayerNorm, the q/k/v projections, ``view``, ``transpose``."""
    b, s, n = x.shape
    y = F.layer_norm(x, (n,), ln_w, ln_b, eps)
    ws, bs = weight.chunk(3, 0), (bias.chunk(3, 0) if bias is not None else (None,) * 3)
    return tuple(F.linear(y, w, bb).view(b, s, heads, -1).transpose(1, 2) for w, bb in zip(ws, bs))
