"""LayerNorm forward and backward in Triton with fp32 statistics.

Forward: one program per row, mean and variance in fp32, ``mean``/``rstd`` saved in fp32 (Liger saves
them in the input dtype, so bf16 statistics get rounded; FlashAttention and the Triton tutorial keep
fp32, as here). Backward: a fixed grid of programs walks the rows, writes ``dx`` and accumulates the
weight/bias gradients in fp32 registers; the per-program partial sums are added on the host. No atomics,
so the result is deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import to_out
from .runtime import INTERPRET, sm_count

MAX_HIDDEN = 16384  # one row must fit a program's registers


@triton.jit
def _ln_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, N, s_x, s_y, eps,
                   STORE_STATS: tl.constexpr, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr,
                   BLOCK: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mc = cols < N
    m = (rows[:, None] < M) & mc[None, :]
    x = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(m, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows[:, None] * s_y + cols[None, :], to_out(y, OUT_BF16, INTERPRET).to(y_ptr.dtype.element_ty),
             mask=m)
    if STORE_STATS:
        tl.store(mean_ptr + rows, mean, mask=rows < M)
        tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def _ln_bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, M, N,
                   s_dy, s_x, s_dx, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    for row in range(pid, M, progs):
        x = tl.load(x_ptr + row * s_x + cols, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * s_dy + cols, mask=m, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        xhat = tl.where(m, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        c2 = tl.sum(wdy, axis=0) / N
        dx = (wdy - (xhat * c1 + c2)) * rstd
        tl.store(dx_ptr + row * s_dx + cols, to_out(dx, OUT_BF16, INTERPRET).to(dx_ptr.dtype.element_ty), mask=m)
        dw += dy * xhat
        db += dy
    tl.store(dw_ptr + pid * N + cols, dw, mask=m)
    tl.store(db_ptr + pid * N + cols, db, mask=m)


def _block(n: int) -> tuple[int, int]:
    if n > MAX_HIDDEN:
        raise ValueError(f"the Triton LayerNorm supports hidden sizes up to {MAX_HIDDEN}, got {n}")
    block = triton.next_power_of_2(n)
    return block, min(max(block // 256, 1), 8)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def ln_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, *, stats: bool = True):
    """``(y, mean, rstd)`` for rows of ``x`` (last dimension normalised); mean/rstd fp32, None if not stats."""
    x2 = _rows(x)
    M, N = x2.shape
    block, warps = _block(N)
    y = torch.empty_like(x2)
    mean = torch.empty(M, device=x.device, dtype=torch.float32) if stats else y
    rstd = torch.empty(M, device=x.device, dtype=torch.float32) if stats else y
    rows = max(1, min(4, 4096 // block))  # several short rows per program keep the loads wide
    _ln_fwd_kernel[(triton.cdiv(M, rows),)](x2, weight, bias, y, mean, rstd, M, N, x2.stride(0), y.stride(0), eps,
                                            STORE_STATS=stats, OUT_BF16=y.dtype == torch.bfloat16,
                                            INTERPRET=INTERPRET, BLOCK=block, ROWS=rows, num_warps=warps)
    return y.view(x.shape), (mean if stats else None), (rstd if stats else None)


def ln_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor):
    """``(dx, dweight, dbias)`` of LayerNorm; weight/bias grads summed in fp32, returned in weight's dtype."""
    x2 = _rows(x)
    dy2 = _rows(dy)
    M, N = x2.shape
    block, warps = _block(N)
    progs = max(1, min(M, sm_count(x.device) * 8))
    dx = torch.empty_like(x2)
    dw = torch.empty((progs, N), device=x.device, dtype=torch.float32)
    db = torch.empty((progs, N), device=x.device, dtype=torch.float32)
    _ln_bwd_kernel[(progs,)](dy2, x2, weight, mean, rstd, dx, dw, db, M, N, dy2.stride(0), x2.stride(0),
                             dx.stride(0), OUT_BF16=dx.dtype == torch.bfloat16, INTERPRET=INTERPRET,
                             BLOCK=block, num_warps=warps)
    return dx.view(x.shape), dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)


class LayerNormFn(torch.autograd.Function):
    """Triton LayerNorm with autograd: saves the input and the fp32 statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = ln_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = ln_backward(dy, x, weight, mean, rstd)
        return dx, dw, db, None


def layer_norm(x, weight, bias, eps: float = 1e-6):
    """Drop-in for ``F.layer_norm(x, (hidden,), weight, bias, eps)`` over the last dimension."""
    return LayerNormFn.apply(x, weight, bias, eps)


def layer_norm_reference(x, weight, bias, eps: float = 1e-6):
    """The plain PyTorch operation the kernel replaces."""
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)
