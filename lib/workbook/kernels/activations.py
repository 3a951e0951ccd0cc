"""GELU (tanh approximation, SigLIP's ``gelu_pytorch_tanh``) and its derivative for Triton epilogues.

Written as ``x * sigmoid(2u)`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``: equal to ``0.5 x (1 + tanh u)``
but with no libdevice ``tanh`` (absent in the interpreter) and no ``1 + tanh`` cancellation. The same
approximation as the reference matters: tanh and erf GELU differ by up to 4.7e-4 (research/triton.md 5.5).

On an NVIDIA GPU the sigmoid is ``rcp.approx(1 + exp2(-z log2 e))``: the division ``tl.sigmoid`` emits
(``div.full.f32``) costs more instructions than the reciprocal and a multiply, and in fc1's fused GEMM the
GELU is a tenth of the kernel. On an H200 at 65536 x 1152 -> 4304 (bf16, pre-activation stored) fc1+GELU took
1214 us against 1245 us, with bit-identical outputs (the same GEMM with no GELU at all: 1110 us). The
interpreter and other GPUs keep ``tl.sigmoid``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .runtime import INTERPRET


def _nvidia() -> bool:
    try:
        import torch
        return torch.version.hip is None
    except ImportError:  # pragma: no cover
        return False


_PTX = tl.constexpr(not INTERPRET and _nvidia())  # inline PTX: on an NVIDIA GPU only, never in the interpreter


@triton.jit
def _sigmoid(z):
    if _PTX:
        e = tl.math.exp2(-1.4426950408889634 * z)
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + e], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.sigmoid(z)


@triton.jit
def gelu_tanh(x):
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x * _sigmoid(2.0 * u)


@triton.jit
def gelu_tanh_grad(x):
    """d/dx of x * sigmoid(2u): s + x * 2 s (1 - s) du/dx."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    s = _sigmoid(2.0 * u)
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    return s + 2.0 * x * s * (1.0 - s) * du


@triton.jit
def round_bf16(x):
    """Round fp32 to the nearest bf16 (ties to even), kept in fp32: the interpreter's cast truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    bits = bits & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def to_out(x, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 value prepared for a store in the output dtype (rounded to nearest under the interpreter)."""
    if INTERPRET and OUT_BF16:
        x = round_bf16(x)
    return x


@triton.jit
def round_like_store(x, out_ptr, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """The fp32 value a store to ``out_ptr`` would keep: used to round a pre-activation as eager does."""
    if OUT_BF16 and INTERPRET:
        x = round_bf16(x)
    else:
        x = x.to(out_ptr.dtype.element_ty).to(tl.float32)
    return x
