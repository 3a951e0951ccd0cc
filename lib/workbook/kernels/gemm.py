"""A tiled Triton GEMM with the epilogues the fused MLP needs.

``C = A @ B (+ bias)`` with the fp32 accumulator handed to an epilogue before the single rounding to
the output dtype:

- ``none``: plain (the fused QKV projection, when asked to run in Triton);
- ``gelu``: GELU(tanh) on the fp32 accumulator, optionally storing the pre-activation for backward;
- ``gelu_rounded``: the control that rounds the pre-activation to the output dtype first, as eager
  ``F.gelu(F.linear(...))`` does (it must reproduce eager's error statistics);
- ``gelu_grad``: the accumulator (dL/d activation) times GELU'(pre-activation) read from ``aux``,
  fc1's activation backward inside fc2's data-gradient GEMM. :func:`gemm_gelu_backward` also writes
  the recomputed activation (fc2's weight gradient needs it) and fc1's bias gradient as fp32 column
  sums, so the MLP backward between the GEMMs costs no extra pass over memory.

Two kernels share the epilogue. On Hopper, 16-bit operands go through a persistent kernel with TMA
tile loads: each program walks many output tiles, so the next tile's loads are in flight while this
tile's epilogue (GELU and two stores of a wide tile) runs, where one tile per program would run it
after its main loop. Elsewhere (fp32, older GPUs, the interpreter) a pointer kernel runs. fp32
operands use ``input_precision="ieee"``: Triton's default for fp32 is tf32, too coarse for fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import gelu_tanh, gelu_tanh_grad, round_like_store, to_out
from .runtime import INTERPRET, configs, sm_count

EPILOGUES = ("none", "gelu", "gelu_rounded", "gelu_grad")
# column sums are written per SUM_ROWS-row band, whatever tile height autotuning picks
SUM_ROWS = 32
_SUM_ROWS = tl.constexpr(SUM_ROWS)


def _cfg(bm, bn, bk, warps, stages, group=8):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": group}, num_warps=warps,
                         num_stages=stages)


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
_KEY = ["M", "N", "K", "EPILOGUE", "STORE_AUX", "STORE_ACT", "COLSUM"]


def _prune(configs, named_args, **kwargs):
    """fp32 (IEEE dot, CUDA cores): only the small tiles; large ones spill and compile slowly."""
    if named_args["a_ptr"].dtype == torch.float32:
        small = [c for c in configs if c.kwargs["BM"] * c.kwargs["BN"] <= 128 * 64]
        return small or configs
    return configs


@triton.jit
def _tile(tile, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order: GROUP_M row tiles share their B columns while those are hot in L2."""
    num_m = tl.cdiv(M, BM)
    group = GROUP_M * tl.cdiv(N, BN)
    first_m = (tile // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + ((tile % group) % size_m), (tile % group) // size_m


@triton.autotune(configs=configs(_GPU_CONFIGS, _INTERP_CONFIG), key=_KEY,
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _gemm_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, aux_ptr, act_ptr, sum_ptr, M, N, K, s_am, s_ak,
                 s_bk, s_bn, s_cm, s_cn, s_xm, s_xn, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr,
                 STORE_AUX: tl.constexpr, STORE_ACT: tl.constexpr, COLSUM: tl.constexpr,
                 IEEE: tl.constexpr, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
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
        # the interpreter multiplies bf16 bit patterns; fp32 products of bf16 are exact
        if INTERPRET:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BK * s_ak
        b_ptrs += BK * s_bk

    _epilogue(acc, pid_m * BM, offs_m, offs_n, M, N, bias_ptr, c_ptr, aux_ptr, act_ptr, sum_ptr,
              s_cm, s_cn, s_xm, s_xn, HAS_BIAS, EPILOGUE, STORE_AUX, STORE_ACT, COLSUM, OUT_BF16,
              INTERPRET, BM)


@triton.jit
def _store_colsum(sum_ptr, sums, off_m, offs_n, M, N, BM: tl.constexpr):
    """A tile's fp32 column sums (its share of a bias gradient) into its SUM_ROWS band of
    ``sum_ptr``; the other bands a tall tile covers get zeros, so the bands' total is the same
    whatever BM autotuning picks."""
    band = off_m // _SUM_ROWS
    bands = tl.cdiv(M, _SUM_ROWS)
    nm = offs_n < N
    tl.store(sum_ptr + band * N + offs_n, sums, mask=nm)
    for j in tl.static_range(1, BM // _SUM_ROWS):
        tl.store(sum_ptr + (band + j) * N + offs_n, tl.zeros_like(offs_n).to(tl.float32),
                 mask=nm & (band + j < bands))


@triton.jit
def _epilogue(acc, off_m, offs_m, offs_n, M, N, bias_ptr, c_ptr, aux_ptr, act_ptr, sum_ptr, s_cm,
              s_cn, s_xm, s_xn, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr,
              STORE_AUX: tl.constexpr, STORE_ACT: tl.constexpr, COLSUM: tl.constexpr,
              OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr, BM: tl.constexpr):
    """Bias, the activation epilogue on the fp32 accumulator, and the one rounding at the store."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    aux_off = offs_m[:, None] * s_xm + offs_n[None, :] * s_xn
    if EPILOGUE == "gelu":
        if STORE_AUX:
            tl.store(aux_ptr + aux_off,
                     to_out(acc, OUT_BF16, INTERPRET).to(aux_ptr.dtype.element_ty), mask=mask)
        acc = gelu_tanh(acc)
    elif EPILOGUE == "gelu_rounded":
        acc = round_like_store(acc, c_ptr, OUT_BF16, INTERPRET)
        if STORE_AUX:
            tl.store(aux_ptr + aux_off, acc.to(aux_ptr.dtype.element_ty), mask=mask)
        acc = gelu_tanh(acc)
    elif EPILOGUE == "gelu_grad":
        pre = tl.load(aux_ptr + aux_off, mask=mask, other=0.0).to(tl.float32)
        # the activation fc2's weight gradient needs, recomputed where pre is already loaded
        if STORE_ACT:
            tl.store(act_ptr + aux_off,
                     to_out(gelu_tanh(pre), OUT_BF16, INTERPRET).to(act_ptr.dtype.element_ty),
                     mask=mask)
        acc = acc * gelu_tanh_grad(pre)
        if COLSUM:
            _store_colsum(sum_ptr, tl.sum(tl.where(mask, acc, 0.0), axis=0), off_m, offs_n, M, N,
                          BM)
    c_ptrs = c_ptr + offs_m[:, None] * s_cm + offs_n[None, :] * s_cn
    tl.store(c_ptrs, to_out(acc, OUT_BF16, INTERPRET).to(c_ptr.dtype.element_ty), mask=mask)


def _tma_blocks(nargs):
    for out in ("c_desc", "x_desc", "t_desc"):
        nargs[out].block_shape = [nargs["BM"], nargs["BN"] // nargs["SPLIT"]]
    nargs["a_desc"].block_shape = [nargs["BM"], nargs["BK"]]
    bn, bk = nargs["BN"], nargs["BK"]
    nargs["b_desc"].block_shape = [bn, bk] if nargs["B_KMAJOR"] else [bk, bn]


def _tma_cfg(bm, bn, bk, warps, stages, ctas=1, flatten=True, split=1):
    meta = {"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8, "CTAS": ctas, "FLATTEN": flatten,
            "SPLIT": split}
    return triton.Config(meta, num_warps=warps, num_stages=stages, pre_hook=_tma_blocks)


@triton.jit
def _desc_tile(c_desc, x_desc, t_desc, c_ptr, sum_ptr, acc, off_m, off_n, M, N,
               STORE_AUX: tl.constexpr, EPILOGUE: tl.constexpr, BM: tl.constexpr,
               BNS: tl.constexpr):
    """One ``[BM, BNS]`` (sub)tile of the bulk epilogue. none/gelu: the pre-activation (when kept),
    then the output. gelu_grad: the pre-activation in through TMA, the recomputed activation and
    ``acc * GELU'(pre)`` out, and the fp32 column sums (fc1's bias grad); rows past M load as zeros,
    so the sums need no mask."""
    if EPILOGUE == "gelu_grad":
        pre = x_desc.load([off_m, off_n]).to(tl.float32)
        t_desc.store([off_m, off_n], gelu_tanh(pre).to(c_ptr.dtype.element_ty))
        acc = acc * gelu_tanh_grad(pre)
        c_desc.store([off_m, off_n], acc.to(c_ptr.dtype.element_ty))
        _store_colsum(sum_ptr, tl.sum(acc, axis=0), off_m, off_n + tl.arange(0, BNS), M, N, BM)
    else:
        if STORE_AUX:
            x_desc.store([off_m, off_n], acc.to(c_ptr.dtype.element_ty))
        if EPILOGUE == "gelu":
            acc = gelu_tanh(acc)
        c_desc.store([off_m, off_n], acc.to(c_ptr.dtype.element_ty))


# one resident program per SM with big tiles, or two with 128 x 128 tiles (one's epilogue under the
# other's loop)
_TMA_CONFIGS = [
    _tma_cfg(128, 256, 64, 8, 3), _tma_cfg(128, 256, 64, 8, 4), _tma_cfg(256, 128, 64, 8, 3),
    _tma_cfg(128, 256, 64, 8, 4, split=2), _tma_cfg(128, 256, 64, 8, 3, split=2),
    _tma_cfg(128, 128, 64, 8, 4), _tma_cfg(128, 128, 64, 8, 3, ctas=2),
    _tma_cfg(128, 128, 64, 4, 3, ctas=2), _tma_cfg(128, 256, 64, 8, 3, flatten=False),
    _tma_cfg(128, 256, 64, 8, 2),  # room in shared memory for the bulk-store epilogue's two tiles
]


@triton.autotune(configs=_TMA_CONFIGS, key=_KEY + ["B_KMAJOR", "DESC_OUT"])
@triton.jit
def _gemm_tma_kernel(a_desc, b_desc, c_desc, x_desc, t_desc, bias_ptr, c_ptr, aux_ptr, act_ptr,
                     sum_ptr, M, N, K, s_cm, s_cn, s_xm, s_xn, HAS_BIAS: tl.constexpr,
                     EPILOGUE: tl.constexpr, STORE_AUX: tl.constexpr, STORE_ACT: tl.constexpr,
                     COLSUM: tl.constexpr, B_KMAJOR: tl.constexpr, DESC_OUT: tl.constexpr,
                     OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, CTAS: tl.constexpr,
                     FLATTEN: tl.constexpr, SPLIT: tl.constexpr):
    """The persistent TMA GEMM (Hopper and newer). ``B_KMAJOR``: b is given as the ``[N, K]``
    weight. ``DESC_OUT``: the outputs leave through TMA bulk stores, which are asynchronous, so the
    next tile's main loop runs while they drain (and ``gelu_grad`` reads the pre-activation through
    TMA, ``t_desc`` taking the recomputed activation). ``SPLIT`` stores the tile in that many column
    slices: a smaller staging buffer leaves shared memory to the main loop's pipeline. Triton's warp
    specialisation is not used: it was slower here (outputs/reference/nvidia-h200/README.md)."""
    start = tl.program_id(0)
    step = tl.num_programs(0)
    tiles = tl.cdiv(M, BM) * tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    # the epilogue's own tile counter keeps its indices out of the pipelined loop
    tile_out = start - step
    for tile in tl.range(start, tiles, step, flatten=FLATTEN):
        pid_m, pid_n = _tile(tile, M, N, BM, BN, GROUP_M)
        off_m = pid_m * BM
        off_n = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(k_tiles):
            a = a_desc.load([off_m, k * BK])
            if B_KMAJOR:
                b = b_desc.load([off_n, k * BK]).T
            else:
                b = b_desc.load([k * BK, off_n])
            acc = tl.dot(a, b, acc)
        tile_out += step
        pid_m, pid_n = _tile(tile_out, M, N, BM, BN, GROUP_M)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        if DESC_OUT:
            if HAS_BIAS:
                bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)
                acc += bias.to(tl.float32)[None, :]
            if SPLIT == 2:
                a0, a1 = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
                _desc_tile(c_desc, x_desc, t_desc, c_ptr, sum_ptr, a0, pid_m * BM, pid_n * BN, M, N,
                           STORE_AUX, EPILOGUE, BM, BN // 2)
                _desc_tile(c_desc, x_desc, t_desc, c_ptr, sum_ptr, a1, pid_m * BM,
                           pid_n * BN + BN // 2, M, N, STORE_AUX, EPILOGUE, BM, BN // 2)
            else:
                _desc_tile(c_desc, x_desc, t_desc, c_ptr, sum_ptr, acc, pid_m * BM, pid_n * BN,
                           M, N, STORE_AUX, EPILOGUE, BM, BN)
        else:
            _epilogue(acc, pid_m * BM, offs_m, offs_n, M, N, bias_ptr, c_ptr, aux_ptr, act_ptr,
                      sum_ptr, s_cm, s_cn, s_xm, s_xn, HAS_BIAS, EPILOGUE, STORE_AUX, STORE_ACT,
                      COLSUM, OUT_BF16, INTERPRET, BM)


def _aligned(t: torch.Tensor) -> bool:
    row_bytes = t.stride(0) * t.element_size()
    return t.stride(1) == 1 and row_bytes % 16 == 0 and t.data_ptr() % 16 == 0


def _tma_layout(a: torch.Tensor, b: torch.Tensor) -> bool | None:
    """None when the TMA kernel cannot take these operands, else whether b is K-major (a
    transposed weight). TMA needs a Hopper-class GPU, 16-bit operands, a row-major a and one of b,
    b.t() row-major, and 16-byte strides."""
    if INTERPRET or a.device.type != "cuda" or a.dtype == torch.float32:
        return None
    if torch.cuda.get_device_capability(a.device)[0] < 9 or not _aligned(a):
        return None
    if _aligned(b.t()):
        return True
    return False if _aligned(b) else None


def _check(a, b):
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm needs a [M, K] and b [K, N], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"gemm operands differ in dtype: {a.dtype} and {b.dtype}")


def _launch(a, b, bias, c, aux, act, sums, epilogue):
    M, K = a.shape
    N = b.shape[1]
    aux_arg = aux if aux is not None else c
    flags = dict(HAS_BIAS=bias is not None, EPILOGUE=epilogue,
                 STORE_AUX=aux is not None and epilogue != "gelu_grad", STORE_ACT=act is not None,
                 COLSUM=sums is not None, OUT_BF16=c.dtype == torch.bfloat16, INTERPRET=INTERPRET)
    ptrs = (bias if bias is not None else c, c, aux_arg, act if act is not None else c,
            sums if sums is not None else c)
    strides = (c.stride(0), c.stride(1), aux_arg.stride(0), aux_arg.stride(1))
    kmajor = _tma_layout(a, b)
    if kmajor is not None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        progs = sm_count(a.device)
        def grid(meta):
            return (min(progs * meta["CTAS"],
                        triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"])),)
        b_desc = TensorDescriptor.from_tensor(b.t() if kmajor else b, [1, 1])
        desc_out = _aligned(c) and (aux is None or _aligned(aux)) and (
            epilogue in ("none", "gelu")
            or (epilogue == "gelu_grad" and act is not None and sums is not None and _aligned(act)))
        # TMA descriptors need 16-byte strides; with pointer stores (an output row of, say, 100 bf16
        # values) the kernel never touches c_desc, x_desc and t_desc, so they stand in on a
        # (aligned, same dtype) as objects of their own: the autotune pre-hook sets their block
        # shape, which a_desc must not share
        c_desc = TensorDescriptor.from_tensor(c if desc_out else a, [1, 1])
        x_desc = t_desc = c_desc
        if desc_out and aux is not None:
            x_desc = TensorDescriptor.from_tensor(aux, [1, 1])
        if desc_out and act is not None:
            t_desc = TensorDescriptor.from_tensor(act, [1, 1])
        _gemm_tma_kernel[grid](TensorDescriptor.from_tensor(a, [1, 1]), b_desc, c_desc, x_desc,
                               t_desc, *ptrs, M, N, K, *strides, B_KMAJOR=kmajor, DESC_OUT=desc_out,
                               **flags)
        return
    grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
    _gemm_kernel[grid](a, b, *ptrs, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                       *strides, IEEE=a.dtype == torch.float32, **flags)


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, *,
         epilogue: str = "none", aux: torch.Tensor | None = None,
         store_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``epilogue(a @ b + bias)`` for a ``[M, K]`` and b ``[K, N]`` (any strides: ``weight.t()``).

    Returns ``(c, aux)``: with ``epilogue="gelu"`` and ``store_aux`` the pre-activation is returned
    as aux; with ``"gelu_grad"`` ``aux`` must be the pre-activation ``[M, N]``.
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    _check(a, b)
    M, N = a.shape[0], b.shape[1]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if epilogue == "gelu_grad":
        if aux is None or aux.shape != (M, N):
            raise ValueError("epilogue 'gelu_grad' needs aux, the [M, N] pre-activation")
    elif store_aux:
        aux = torch.empty((M, N), device=a.device, dtype=a.dtype)
    else:
        aux = None
    _launch(a, b, bias, c, aux, None, None, epilogue)
    return c, (aux if epilogue != "gelu_grad" else None)


def gemm_gelu_backward(dout: torch.Tensor, w2: torch.Tensor, pre: torch.Tensor):
    """fc2's data gradient with fc1's activation backward fused in: one GEMM, no extra pass.

    For ``dout`` ``[M, hidden]`` (dL/d fc2 output), ``w2`` fc2's ``[hidden, inter]`` weight and
    ``pre`` the ``[M, inter]`` pre-activation, returns ``(dpre, act, dbias)``: ``dpre = (dout @ w2)
    * GELU'(pre)``, the recomputed ``act = GELU(pre)`` and fc1's bias gradient ``dpre.sum(0)`` in
    fp32 (summed from the fp32 values, in a fixed order: deterministic).
    """
    _check(dout, w2)
    M, N = dout.shape[0], w2.shape[1]
    if pre.shape != (M, N):
        raise ValueError(f"gemm_gelu_backward needs pre of shape {(M, N)}, got {tuple(pre.shape)}")
    pre = pre.contiguous()
    dpre = torch.empty_like(pre)
    act = torch.empty_like(pre)
    sums = torch.empty((triton.cdiv(M, SUM_ROWS), N), device=pre.device, dtype=torch.float32)
    _launch(dout, w2, None, dpre, pre, act, sums, "gelu_grad")
    return dpre, act, sums.sum(0)
