"""A tiled Triton GEMM with the epilogues the fused MLP needs.

``C = A @ B (+ bias)`` with the fp32 accumulator handed to an epilogue before the single rounding to the
output dtype:

- ``none``: plain (used for the fused QKV projection when asked to run in Triton);
- ``gelu``: GELU(tanh) on the fp32 accumulator, optionally storing the pre-activation for backward;
- ``gelu_rounded``: the control that rounds the pre-activation to the output dtype first, as eager
  ``F.gelu(F.linear(...))`` does (it must reproduce eager's error statistics);
- ``gelu_grad``: multiply the accumulator (dL/d activation) by GELU'(pre-activation) read from ``aux``,
  which is the backward of fc1's activation fused into fc2's data-gradient GEMM.

fp32 operands use ``input_precision="ieee"`` (Triton's default for fp32 is tf32, 4e-3 off).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import gelu_tanh, gelu_tanh_grad, round_like_store, to_out
from .runtime import INTERPRET, configs

EPILOGUES = ("none", "gelu", "gelu_rounded", "gelu_grad")


def _cfg(bm, bn, bk, warps, stages, group=8):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": group}, num_warps=warps, num_stages=stages)


_GPU_CONFIGS = [
    _cfg(128, 256, 64, 8, 3),
    _cfg(256, 128, 64, 8, 3),
    _cfg(128, 128, 64, 8, 4),
    _cfg(128, 128, 64, 4, 4),
    _cfg(128, 256, 64, 8, 4),
    _cfg(64, 256, 64, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 64, 32, 4, 4),  # small problems and fp32 (IEEE dot runs on CUDA cores)
]
_INTERP_CONFIG = _cfg(32, 64, 32, 4, 1, group=4)


def _prune(configs, named_args, **kwargs):
    """fp32 (IEEE dot, CUDA cores): only the small tiles; large ones spill and take long to compile."""
    if named_args["a_ptr"].dtype == torch.float32:
        small = [c for c in configs if c.kwargs["BM"] * c.kwargs["BN"] <= 128 * 64]
        return small or configs
    return configs


@triton.autotune(configs=configs(_GPU_CONFIGS, _INTERP_CONFIG), key=["M", "N", "K", "EPILOGUE", "STORE_AUX"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _gemm_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, aux_ptr, M, N, K,
                 s_am, s_ak, s_bk, s_bn, s_cm, s_cn, s_xm, s_xn,
                 HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, STORE_AUX: tl.constexpr,
                 IEEE: tl.constexpr, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n  # grouped ordering keeps a band of A rows hot in L2
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % size_m)
    pid_n = (pid % group) // size_m

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    am = offs_m % M  # wrapped rows/cols are computed and discarded by the store mask
    bn = offs_n % N
    a_ptrs = a_ptr + am[:, None] * s_am + offs_k[None, :] * s_ak
    b_ptrs = b_ptr + offs_k[:, None] * s_bk + bn[None, :] * s_bn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        k_left = K - k * BK
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if INTERPRET:  # the interpreter multiplies bf16 bit patterns; fp32 products of bf16 are exact
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BK * s_ak
        b_ptrs += BK * s_bk

    _epilogue(acc, offs_m, offs_n, M, N, bias_ptr, c_ptr, aux_ptr, s_cm, s_cn, s_xm, s_xn,
              HAS_BIAS, EPILOGUE, STORE_AUX, OUT_BF16, INTERPRET)


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, bias_ptr, c_ptr, aux_ptr, s_cm, s_cn, s_xm, s_xn,
              HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, STORE_AUX: tl.constexpr,
              OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """Bias, the activation epilogue on the fp32 accumulator, and the single rounding at the store."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    aux_ptrs = aux_ptr + offs_m[:, None] * s_xm + offs_n[None, :] * s_xn
    if EPILOGUE == "gelu":
        if STORE_AUX:
            tl.store(aux_ptrs, to_out(acc, OUT_BF16, INTERPRET).to(aux_ptr.dtype.element_ty), mask=mask)
        acc = gelu_tanh(acc)
    elif EPILOGUE == "gelu_rounded":
        acc = round_like_store(acc, c_ptr, OUT_BF16, INTERPRET)
        if STORE_AUX:
            tl.store(aux_ptrs, acc.to(aux_ptr.dtype.element_ty), mask=mask)
        acc = gelu_tanh(acc)
    elif EPILOGUE == "gelu_grad":
        pre = tl.load(aux_ptrs, mask=mask, other=0.0).to(tl.float32)
        acc = acc * gelu_tanh_grad(pre)
    c_ptrs = c_ptr + offs_m[:, None] * s_cm + offs_n[None, :] * s_cn
    tl.store(c_ptrs, to_out(acc, OUT_BF16, INTERPRET).to(c_ptr.dtype.element_ty), mask=mask)


def _tma_blocks(nargs):
    nargs["a_desc"].block_shape = [nargs["BM"], nargs["BK"]]
    nargs["b_desc"].block_shape = [nargs["BN"], nargs["BK"]]


def _tma_cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=warps, num_stages=stages,
                         pre_hook=_tma_blocks)


_TMA_CONFIGS = [_tma_cfg(128, 256, 64, 8, 3), _tma_cfg(256, 128, 64, 8, 3), _tma_cfg(128, 256, 64, 8, 4),
                _tma_cfg(128, 128, 64, 8, 4), _tma_cfg(128, 128, 64, 4, 4), _tma_cfg(128, 256, 128, 8, 2),
                _tma_cfg(64, 256, 64, 4, 4)]


@triton.autotune(configs=_TMA_CONFIGS, key=["M", "N", "K", "EPILOGUE", "STORE_AUX"])
@triton.jit
def _gemm_tma_kernel(a_desc, b_desc, bias_ptr, c_ptr, aux_ptr, M, N, K, s_cm, s_cn, s_xm, s_xn,
                     HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, STORE_AUX: tl.constexpr,
                     OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """The same GEMM with TMA tile loads (Hopper and newer; b is the ``[N, K]`` weight, K contiguous)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % size_m)
    pid_n = (pid % group) // size_m
    off_m = pid_m * BM
    off_n = pid_n * BN
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        a = a_desc.load([off_m, k * BK])
        b = b_desc.load([off_n, k * BK])
        acc = tl.dot(a, b.T, acc)
    offs_m = off_m + tl.arange(0, BM)
    offs_n = off_n + tl.arange(0, BN)
    _epilogue(acc, offs_m, offs_n, M, N, bias_ptr, c_ptr, aux_ptr, s_cm, s_cn, s_xm, s_xn,
              HAS_BIAS, EPILOGUE, STORE_AUX, OUT_BF16, INTERPRET)


def _use_tma(a: torch.Tensor, b: torch.Tensor) -> bool:
    """TMA needs a Hopper-class GPU, 16-bit operands, row-major a and a K-contiguous weight, 16-byte strides."""
    if INTERPRET or not TMA_ENABLED or a.device.type != "cuda" or a.dtype == torch.float32:
        return False
    if torch.cuda.get_device_capability(a.device)[0] < 9:
        return False
    w = b.t()
    return (a.stride(1) == 1 and w.stride(1) == 1 and (a.stride(0) * a.element_size()) % 16 == 0
            and (w.stride(0) * w.element_size()) % 16 == 0)


TMA_ENABLED = True  # switched off by callers that want the pointer kernel on Hopper (for comparison)


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, *, epilogue: str = "none",
         aux: torch.Tensor | None = None, store_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``epilogue(a @ b + bias)`` for a ``[M, K]`` and b ``[K, N]`` (any strides; pass ``weight.t()``).

    Returns ``(c, aux)``: with ``epilogue="gelu"`` and ``store_aux`` the pre-activation is returned as aux;
    with ``"gelu_grad"`` ``aux`` must be the pre-activation ``[M, N]``.
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm needs a [M, K] and b [K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"gemm operands differ in dtype: {a.dtype} and {b.dtype}")
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if epilogue == "gelu_grad":
        if aux is None or aux.shape != (M, N):
            raise ValueError("epilogue 'gelu_grad' needs aux, the [M, N] pre-activation")
    elif store_aux:
        aux = torch.empty((M, N), device=a.device, dtype=a.dtype)
    else:
        aux = None
    aux_arg = aux if aux is not None else c
    flags = dict(HAS_BIAS=bias is not None, EPILOGUE=epilogue, STORE_AUX=bool(store_aux and epilogue != "gelu_grad"),
                 OUT_BF16=c.dtype == torch.bfloat16, INTERPRET=INTERPRET)
    grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
    if _use_tma(a, b):
        from triton.tools.tensor_descriptor import TensorDescriptor

        _gemm_tma_kernel[grid](TensorDescriptor.from_tensor(a, [1, 1]), TensorDescriptor.from_tensor(b.t(), [1, 1]),
                               bias if bias is not None else c, c, aux_arg, M, N, K, c.stride(0), c.stride(1),
                               aux_arg.stride(0), aux_arg.stride(1), **flags)
        return c, (aux if epilogue != "gelu_grad" else None)
    _gemm_kernel[grid](
        a, b, bias if bias is not None else c, c, aux_arg, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        aux_arg.stride(0), aux_arg.stride(1),
        IEEE=a.dtype == torch.float32, **flags)
    return c, (aux if epilogue != "gelu_grad" else None)
