"""GELU (tanh approximation, SigLIP's ``gelu_pytorch_tanh``) and its derivative for Triton
epilogues.

Written as ``x * sigmoid(2u)`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``: equal to ``0.5 x (1 +
tanh u)`` but with no libdevice ``tanh`` (absent in the interpreter) and no ``1 + tanh``
cancellation. It must be the reference's approximation: tanh and erf GELU differ by far more than
fp32 rounding.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gelu_tanh(x):
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x * tl.sigmoid(2.0 * u)


@triton.jit
def gelu_tanh_grad(x):
    """d/dx of x * sigmoid(2u): s + 2 x s (1 - s) du/dx, with ``1 - s`` taken as ``e * s``.

    ``s = 1 / (1 + e)`` for ``e = exp(-2u)``, so ``1 - s = e s`` exactly; subtracting the rounded s
    from 1 instead loses the low bits of ``1 - s`` where s is near 1 (x of about 1 to 4), enough to
    fail the fp32 2x rule. The exponent is clamped at 80 so that very negative x give a tiny s
    rather than ``inf * 0``.
    """
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    e = tl.exp(tl.minimum(-2.0 * u, 80.0))
    s = 1.0 / (1.0 + e)
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    return s + 2.0 * x * du * (e * s) * s


@triton.jit
def round_bf16(x):
    """fp32 rounded to the nearest bf16 (ties to even), kept in fp32: the interpreter truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    bits = bits & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def to_out(x, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """The fp32 value prepared for a store in the output dtype (rounded under the interpreter)."""
    if INTERPRET and OUT_BF16:
        x = round_bf16(x)
    return x


@triton.jit
def round_like_store(x, out_ptr, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """The fp32 value a store to ``out_ptr`` would keep: a pre-activation rounded as eager does."""
    if OUT_BF16 and INTERPRET:
        x = round_bf16(x)
    else:
        x = x.to(out_ptr.dtype.element_ty).to(tl.float32)
    return x
