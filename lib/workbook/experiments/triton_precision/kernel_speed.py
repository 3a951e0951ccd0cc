"""Per-kernel speed: each Triton kernel against eager PyTorch and ``torch.compile`` of it.

Why the host is timed apart: a kernel call of well under a millisecond can take the host longer to
queue than the GPU to run, and a training step's host runs ahead of its GPU. So the device time is
taken with the host queued ahead (:meth:`Cuda.time_queued`) and the host's time to queue one call is
its own column.
"""
from __future__ import annotations

import torch

from workbook.console import progress

from .cases import SPEED_KERNELS, TORCH_DTYPES, kernel_case

IMPLS = ("triton", "eager", "torch.compile")


def _why_not(cfg, kernels: list[str]) -> str | None:
    if cfg.gpu is None:
        return "the kernels run in the Triton interpreter on a CPU: its timings mean nothing"
    if not cfg.p.speed_tokens:
        return "speed_tokens is empty"
    if not kernels:
        return "none of kernels has a per-kernel speed case (block is timed in the stack)"
    return None


def speed_rows(cfg, rec, progress=None) -> list[dict]:
    """Every (kernel, tokens) group, measured on ``cfg.gpu`` and recorded as one resumable group of
    ``rec`` as soon as it is measured (a resumed run takes the groups its predecessor finished, when
    it ran on this machine)."""
    rows = []
    for kernel in [k for k in cfg.p.kernels if k in SPEED_KERNELS]:
        for tokens in cfg.p.speed_tokens:
            group = rec.done_group("kernel_speed", timed=True, kernel=kernel, tokens=tokens)
            if group is None:
                group = cfg.gpu.speed_group(cfg, kernel, tokens, progress)
                rec.add_group("kernel_speed", group, kernel=kernel, tokens=tokens)
            elif progress is not None:
                progress.update(len(IMPLS))
            rows.extend(group)
    return rows


def speed_per_kernel(cfg, rec) -> tuple[list[dict], str | None]:
    """The per-kernel speed section: ``(rows, None)``, or ``([], why)`` recorded as not measured."""
    kernels = [k for k in cfg.p.kernels if k in SPEED_KERNELS]
    why = _why_not(cfg, kernels)
    if why:
        rec.not_measured("per-kernel speed", why)
        return [], why
    with progress(total=len(kernels) * len(cfg.p.speed_tokens) * len(IMPLS),
                  desc="kernel speed") as bar:
        rows = speed_rows(cfg, rec, bar)
    rec.keys("kernel_speed", ["kernel", "tokens", "impl"])
    return rows, None


def _inputs(cfg, gpu, ins0: dict, tokens: int, dtype) -> dict:
    """The case's tensors on the GPU with ``tokens`` rows, drawn with the fp64 case's spread."""
    g = torch.Generator(device=gpu.device).manual_seed(cfg.p.seed)
    ins = {}
    for k, v in ins0.items():
        shape = (tokens, *v.shape[1:]) if k == "x" else v.shape
        x = torch.randn(shape, device=gpu.device, dtype=dtype, generator=g) * float(v.std())
        ins[k] = x.requires_grad_(True)
    return ins


def _measure(cfg, gpu, fn, ins: dict, row: dict) -> dict:
    """Forward and forward+backward of ``fn`` on ``ins``: device and host ms, the step's extra
    peak."""
    p = cfg.p

    def fwd():
        return fn(*ins.values())

    try:
        dy = torch.randn_like(fwd())

        def step():
            fwd().backward(dy)
            for v in ins.values():
                v.grad = None

        with torch.no_grad():
            f_ms, f_host, f_late = gpu.time_queued(fwd, p.warmup, p.iterations)
        step()  # autotuning and compiling stay out of the peak
        gpu.synchronize()
        gpu.reset_peak()
        base = gpu.allocated()
        fb_ms, fb_host, fb_late = gpu.time_queued(step, p.warmup, p.iterations)
        peak = (gpu.peak() - base) / 2 ** 20
    except torch.OutOfMemoryError:
        return {**row, "status": "out of memory"}
    row = {**row, "forward_ms": f_ms, "fwd_bwd_ms": fb_ms, "forward_host_ms": f_host,
           "fwd_bwd_host_ms": fb_host, "fwd_bwd_extra_peak_mib": peak}
    if f_late or fb_late:  # some device times include waits for the host: the row says so
        row["host_late_share"] = max(f_late, fb_late)
    return row


def measure_group(cfg, gpu, kernel: str, tokens: int, progress=None,
                  dtype_name: str = "bfloat16") -> list[dict]:
    """One kernel at one token count, each of :data:`IMPLS`: forward and forward+backward device ms
    (the host queued ahead) beside the host's ms to queue one call, and the extra peak MiB."""
    ins0, tri, eag = kernel_case(cfg.p, kernel)
    ins = _inputs(cfg, gpu, ins0, tokens, TORCH_DTYPES[dtype_name])
    group = []
    for impl, fn in zip(IMPLS, (tri, eag, torch.compile(eag))):
        row = {"kernel": kernel, "tokens": tokens, "impl": impl, "dtype": dtype_name}
        group.append(_measure(cfg, gpu, fn, ins, row))
        if progress is not None:
            progress.update(1)
    del ins
    gpu.empty_cache()
    return group


def speedups(rows: list[dict]) -> list[dict]:
    """triton against eager and torch.compile for each kernel and token count (> 1: triton
    faster)."""
    by = {(r["kernel"], r["tokens"], r["impl"]): r for r in rows if "forward_ms" in r}
    out = []
    for (kernel, tokens, impl), r in by.items():
        if impl != "triton":
            continue
        row = {"kernel": kernel, "tokens": tokens}
        for other in ("eager", "torch.compile"):
            o = by.get((kernel, tokens, other))
            if o:
                row[f"fwd_speedup_vs_{other}"] = o["forward_ms"] / r["forward_ms"]
                row[f"fwd_bwd_speedup_vs_{other}"] = o["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        out.append(row)
    return out
