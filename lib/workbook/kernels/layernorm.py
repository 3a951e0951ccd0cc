"""LayerNorm forward and backward in Triton with fp32 statistics.

:func:`add_ln_forward` also takes the residual add in front of a pre-norm block (``h = x + add``,
then LayerNorm of h), writing h beside the output.

Forward: a few rows per program (autotuned), mean and variance in fp32, ``mean``/``rstd`` saved in
fp32 (Liger saves them in the input dtype, so bf16 statistics get rounded; FlashAttention and the
Triton tutorial keep fp32, as here). Backward: each program takes a block of 64-256 rows
(autotuned), writes ``dx`` and accumulates the weight/bias gradients in fp32 registers; the
per-program partial sums are added on the host. No atomics, so the result is deterministic.
:func:`ln_backward_residual` also adds the gradient of a residual connection around the normalised
branch into ``dx`` and sums it (FlashAttention's ``dresidual``), which saves the separate add
autograd would do and the bias reduction of the branch's last layer.

:func:`ln_apply` gives a fused node's backward the LayerNorm output again from the input and the
saved statistics (no reduction), instead of storing it between forward and backward.

Rows are one power-of-two tile with the tail masked (1152 wide: a 2048 tile): two power-of-two tiles
without masked lanes made the backward slower (outputs/reference/nvidia-h200/README.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import to_out
from .runtime import INTERPRET, configs

MAX_HIDDEN = 16384  # one row must fit a program's registers


def _rows_cfg(rows, warps):
    return triton.Config({"ROWS": rows}, num_warps=warps)


# several short rows per program keep more loads in flight; which count wins depends on the GPU, M
# and N (M is in the key: a config tuned on the precision study's rows is not reused on the stack's)
_FWD_CONFIGS = [_rows_cfg(r, w) for r in (1, 2, 4, 8) for w in (4, 8)]
# rows per backward program (multiples of every ROWS), autotuned with ROWS and warps; they cover the
# configs the backward picked at the so400m shape (outputs/reference/nvidia-h200/README.md)
ROW_BLOCKS = (64, 128, 256)
_BWD_CONFIGS = [triton.Config({"ROWS": r, "RB": rb}, num_warps=w)
                for rb in ROW_BLOCKS for r in (1, 2, 4) for w in (2, 4, 8)]
_INTERP_CONFIG = _rows_cfg(2, 4)
_INTERP_BWD_CONFIG = triton.Config({"ROWS": 2, "RB": 64}, num_warps=4)


def _prune(configs, named_args, **kwargs):
    """Tiles of at most 8192 values: wide rows (up to MAX_HIDDEN) take one row at a time."""
    fit = [c for c in configs if c.kwargs["ROWS"] * kwargs["BLOCK"] <= 8192]
    return fit or [min(configs, key=lambda c: c.kwargs["ROWS"])]


@triton.autotune(configs=configs(_FWD_CONFIGS, _INTERP_CONFIG),
                 key=["M", "N", "STORE_STATS", "HAS_ADD"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _ln_fwd_kernel(x_ptr, a_ptr, h_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, N, s_x, s_a,
                   s_h, s_y, eps, HAS_ADD: tl.constexpr, STORE_STATS: tl.constexpr,
                   OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr,
                   ROWS: tl.constexpr):
    """``HAS_ADD``: normalise ``h = x + a`` (rounded to the dtype as eager's add is), stored too."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mc = cols < N
    m = (rows[:, None] < M) & mc[None, :]
    x = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_ADD:
        x += tl.load(a_ptr + rows[:, None] * s_a + cols[None, :], mask=m, other=0.0).to(tl.float32)
        h = to_out(x, OUT_BF16, INTERPRET).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * s_h + cols[None, :], h, mask=m)
        x = h.to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(m, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows[:, None] * s_y + cols[None, :],
             to_out(y, OUT_BF16, INTERPRET).to(y_ptr.dtype.element_ty), mask=m)
    if STORE_STATS:
        tl.store(mean_ptr + rows, mean, mask=rows < M)
        tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.autotune(configs=configs(_BWD_CONFIGS, _INTERP_BWD_CONFIG), key=["M", "N", "HAS_DRES"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _ln_bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dres_ptr, dx_ptr, dw_ptr, db_ptr,
                   ds_ptr, M, N, s_dy, s_x, s_r, s_dx, HAS_DRES: tl.constexpr,
                   OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr,
                   RB: tl.constexpr, ROWS: tl.constexpr):
    """Each program takes RB consecutive rows, ROWS at a time; ``dx`` (plus the residual's gradient
    ``dres`` when given) is written, and the weight/bias gradients (and ``dres``'s column sums)
    accumulate in fp32 registers, stored once per program."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mc = cols < N
    w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    ds = tl.zeros((BLOCK,), dtype=tl.float32)
    for r0 in range(pid * RB, min(pid * RB + RB, M), ROWS):
        rows = r0 + tl.arange(0, ROWS)
        mr = rows < M
        m = mr[:, None] & mc[None, :]
        x = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * s_dy + cols[None, :], mask=m, other=0.0)
        dy = dy.to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=mr, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=mr, other=0.0)
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DRES:
            r = tl.load(dres_ptr + rows[:, None] * s_r + cols[None, :], mask=m, other=0.0)
            r = r.to(tl.float32)
            dx += r
            ds += tl.sum(r, axis=0)
        tl.store(dx_ptr + rows[:, None] * s_dx + cols[None, :],
                 to_out(dx, OUT_BF16, INTERPRET).to(dx_ptr.dtype.element_ty), mask=m)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(dw_ptr + pid * N + cols, dw, mask=mc)
    tl.store(db_ptr + pid * N + cols, db, mask=mc)
    if HAS_DRES:
        tl.store(ds_ptr + pid * N + cols, ds, mask=mc)


_APPLY_CONFIGS = [triton.Config({"ROWS": r, "BC": c}, num_warps=w)
                  for r in (16, 32, 64) for c in (128, 256) for w in (4, 8)]
_INTERP_APPLY_CONFIG = triton.Config({"ROWS": 4, "BC": 32}, num_warps=4)


@triton.autotune(configs=configs(_APPLY_CONFIGS, _INTERP_APPLY_CONFIG), key=["M", "N"])
@triton.jit
def _ln_apply_kernel(x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, y_ptr, M, N, s_x, s_y,
                     OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr, ROWS: tl.constexpr,
                     BC: tl.constexpr):
    """``y = (x - mean) * rstd * w + b`` from saved statistics: 2-D tiles, no reduction."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mr, mc = rows < M, cols < N
    m = mr[:, None] & mc[None, :]
    x = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + rows, mask=mr, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=mr, other=0.0)
    w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    xc = x - mean[:, None]
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows[:, None] * s_y + cols[None, :],
             to_out(y, OUT_BF16, INTERPRET).to(y_ptr.dtype.element_ty), mask=m)


def ln_apply(x: torch.Tensor, weight, bias, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """The LayerNorm output from its input and the fp32 statistics the forward saved.

    The same fp32 expression as the forward kernel's, on the same mean and rstd, so the result is
    the forward's output bit for bit. Why not rerun the forward: its rows are one power-of-two tile
    with the tail masked, and it reduces every row again; this pass tiles the columns too, so every
    lane loads (the comparison: outputs/reference/nvidia-h200/README.md).
    """
    x2 = _rows(x)
    M, N = x2.shape
    y = torch.empty_like(x2)
    _ln_apply_kernel[lambda meta: (triton.cdiv(M, meta["ROWS"]), triton.cdiv(N, meta["BC"]))](
        x2, weight, bias, mean, rstd, y, M, N, x2.stride(0), y.stride(0),
        OUT_BF16=y.dtype == torch.bfloat16, INTERPRET=INTERPRET)
    return y.view(x.shape)


def _block(n: int) -> int:
    if n > MAX_HIDDEN:
        raise ValueError(f"the Triton LayerNorm supports hidden sizes up to {MAX_HIDDEN}, got {n}")
    return triton.next_power_of_2(n)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _fwd(x, add, weight, bias, eps, stats):
    x2 = _rows(x)
    M, N = x2.shape
    block = _block(N)
    y = torch.empty_like(x2)
    a2 = _rows(add) if add is not None else x2
    if a2.shape != x2.shape:
        raise ValueError(f"the tensor added before the LayerNorm has shape {tuple(add.shape)}, "
                         f"not {tuple(x.shape)}")
    h = torch.empty_like(x2) if add is not None else y
    mean = torch.empty(M, device=x.device, dtype=torch.float32) if stats else y
    rstd = torch.empty(M, device=x.device, dtype=torch.float32) if stats else y
    _ln_fwd_kernel[lambda meta: (triton.cdiv(M, meta["ROWS"]),)](
        x2, a2, h, weight, bias, y, mean, rstd, M, N, x2.stride(0), a2.stride(0), h.stride(0),
        y.stride(0), eps, HAS_ADD=add is not None, STORE_STATS=stats,
        OUT_BF16=y.dtype == torch.bfloat16, INTERPRET=INTERPRET, BLOCK=block)
    return h.view(x.shape), y.view(x.shape), (mean if stats else None), (rstd if stats else None)


def ln_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, *,
               stats: bool = True):
    """``(y, mean, rstd)`` for rows of ``x`` (the last dimension normalised); mean and rstd in
    fp32, None without ``stats``."""
    return _fwd(x, None, weight, bias, eps, stats)[1:]


def add_ln_forward(x: torch.Tensor, add: torch.Tensor, weight, bias, eps: float):
    """``(h, y, mean, rstd)`` with ``h = x + add`` and ``y = layer_norm(h)`` in one pass
    (FlashAttention's ``residual`` + ``prenorm``): a pre-norm block's residual add costs no pass of
    its own."""
    return _fwd(x, add, weight, bias, eps, True)


def ln_output(x: torch.Tensor, stored: torch.Tensor | None, weight, bias, mean: torch.Tensor,
              rstd: torch.Tensor) -> torch.Tensor:
    """The LayerNorm output a fused node's backward needs: the one it stored, or (when it stored
    none) recomputed from its input and the saved fp32 statistics by :func:`ln_apply`, bit for bit
    the forward's."""
    return stored if stored is not None else ln_apply(x, weight, bias, mean, rstd)


def _ln_bwd(dy, x, weight, mean, rstd, dres):
    x2 = _rows(x)
    dy2 = _rows(dy)
    r2 = _rows(dres) if dres is not None else dy2
    M, N = x2.shape
    block = _block(N)
    max_progs = triton.cdiv(M, min(ROW_BLOCKS))
    dx = torch.empty_like(x2)
    part = torch.empty((3 if dres is not None else 2, max_progs, N), device=x.device,
                       dtype=torch.float32)
    _ln_bwd_kernel[lambda meta: (triton.cdiv(M, meta["RB"]),)](
        dy2, x2, weight, mean, rstd, r2, dx, part[0], part[1], part[-1], M, N, dy2.stride(0),
        x2.stride(0), r2.stride(0), dx.stride(0), HAS_DRES=dres is not None,
        OUT_BF16=dx.dtype == torch.bfloat16, INTERPRET=INTERPRET, BLOCK=block)
    # only the programs the chosen block size launched wrote partial sums
    sums = part[:, :triton.cdiv(M, _ln_bwd_kernel.best_config.kwargs["RB"])].sum(1)
    dres_sum = sums[2] if dres is not None else None
    return dx.view(x.shape), sums[0].to(weight.dtype), sums[1].to(weight.dtype), dres_sum


def ln_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                rstd: torch.Tensor):
    """``(dx, dweight, dbias)`` of LayerNorm; weight and bias grads summed in fp32, returned in
    weight's dtype."""
    return _ln_bwd(dy, x, weight, mean, rstd, None)[:3]


def ln_backward_residual(dy, x, weight, mean, rstd, dres):
    """LayerNorm's backward for ``out = x + f(layer_norm(x))``: ``dx = dres + LN'(dy)``, one pass.

    ``dres`` is the gradient reaching ``out`` (it passes the residual unchanged). Returns ``(dx,
    dweight, dbias, dres_sum)`` where ``dres_sum`` is ``dres.sum(0)`` in fp32: the bias gradient of
    the last linear layer of ``f``, which would otherwise be one more pass over ``dres``.
    """
    return _ln_bwd(dy, x, weight, mean, rstd, dres)


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
