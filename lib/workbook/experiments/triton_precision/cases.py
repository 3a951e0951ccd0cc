"""The seeded inputs the sections share: one fp64 case per kernel and one encoder layer.

Every case is built in fp64 on the CPU from the run's seed, so the precision study, the error
histograms and the per-kernel speed sweep see the same weights (scaled by 1/sqrt(fan_in)) and the
same input statistics.
"""
from __future__ import annotations

import torch

from workbook.specs.triton_precision import DTYPES, KERNELS

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}
SPEED_KERNELS = ("layernorm", "linear_gelu", "mlp", "qkv")  # "block" is timed as the whole stack
EPS = 1e-6  # SigLIP-2's LayerNorm epsilon


def gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + salt)


def rand(shape, g, scale=1.0, shift=0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def _split3(w, b):
    ws, bs = w.chunk(3, 0), b.chunk(3, 0)
    return ws[0], bs[0], ws[1], bs[1], ws[2], bs[2]


def kernel_case(p, kernel: str):
    """``(inputs in fp64, triton fn, reference fn)`` for one kernel at ``p``'s tokens and sizes."""
    from workbook.kernels import layernorm as LN
    from workbook.kernels import mlp as K

    g = gen(p.seed, KERNELS.index(kernel))
    t, h, i = p.tokens, p.hidden, p.intermediate
    if kernel == "layernorm":
        ins = dict(x=rand((t, h), g, 2.0, 0.5), w=rand((h,), g, 0.1, 1.0), b=rand((h,), g, 0.1))
        return (ins, (lambda x, w, b: LN.layer_norm(x, w, b, EPS)),
                (lambda x, w, b: LN.layer_norm_reference(x, w, b, EPS)))
    if kernel == "linear_gelu":
        ins = dict(x=rand((t, h), g), w=rand((i, h), g, h ** -0.5), b=rand((i,), g, 0.02))
        return ins, K.linear_gelu, K.linear_gelu_reference
    if kernel == "mlp":
        ins = dict(x=rand((t, h), g), w1=rand((i, h), g, h ** -0.5), b1=rand((i,), g, 0.02),
                   w2=rand((h, i), g, i ** -0.5), b2=rand((h,), g, 0.02))
        return ins, K.mlp, K.mlp_reference
    if kernel == "qkv":
        ins = dict(x=rand((t, h), g), w=rand((3 * h, h), g, h ** -0.5), b=rand((3 * h,), g, 0.02))
        return (ins, (lambda x, w, b: torch.cat(K.qkv(x, w, b, triton_gemm=True), -1)),
                (lambda x, w, b: torch.cat(K.qkv_reference(x, *_split3(w, b)), -1)))
    raise ValueError(kernel)


def block_case(p):
    """transformers' ``Siglip2EncoderLayer`` in fp64 at ``p``'s sizes, its config and an input."""
    from transformers.models.siglip2.modeling_siglip2 import Siglip2EncoderLayer

    from workbook.models.siglip2 import config

    c = config("tiny", hidden_size=p.hidden, intermediate_size=p.intermediate,
               num_attention_heads=p.heads)
    c._attn_implementation = "sdpa"
    torch.manual_seed(p.seed)
    hf = Siglip2EncoderLayer(c).double()
    # transformers initialises LayerNorm to (1, 0): perturb to exercise its grads
    with torch.no_grad():
        for ln in (hf.layer_norm1, hf.layer_norm2):
            ln.weight.add_(0.1 * torch.randn_like(ln.weight))
            ln.bias.add_(0.1 * torch.randn_like(ln.bias))
    seq = 16
    x = rand((max(1, p.tokens // seq), seq, p.hidden), gen(p.seed, 99))
    return c, hf, x
