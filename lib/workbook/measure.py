"""Timing with the discipline the experiments share (gpt-fast style).

Warm-up calls are run and excluded; each timed call is bracketed by CUDA events on a GPU (host clock
plus a synchronize on the CPU); the median and p10/p90 are reported, never a mean over a handful of
calls. First-call time (compilation, lazy initialisation) is measured apart, by the caller, with
:func:`time_once`.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class Timing:
    """Steady-state timing of one callable, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    iters: int
    warmup: int

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    if not values:
        raise ValueError("percentile of an empty list")
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples_ms: list[float], warmup: int) -> Timing:
    return Timing(
        median_ms=statistics.median(samples_ms),
        p10_ms=percentile(samples_ms, 10),
        p90_ms=percentile(samples_ms, 90),
        p99_ms=percentile(samples_ms, 99),
        min_ms=min(samples_ms),
        iters=len(samples_ms),
        warmup=warmup,
    )


def time_fn(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 3, iters: int = 20) -> Timing:
    """Time ``fn()`` ``iters`` times after ``warmup`` untimed calls; CUDA events on ``device='cuda'``."""
    if iters < 1:
        raise ValueError("iters must be at least 1")
    for _ in range(warmup):
        fn()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    samples = [_one(fn, device) for _ in range(iters)]
    return summarize(samples, warmup)


def time_once(fn: Callable[[], object], *, device: str = "cpu") -> tuple[float, object]:
    """Wall time of a single call (ms) with the device synchronised before and after; returns (ms, result)."""
    from workbook.device import synchronize

    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3, out


def time_interleaved(fns: dict[str, Callable[[], object]], *, device: str = "cpu", warmup: int = 3,
                     iters: int = 20) -> dict[str, Timing]:
    """Time several callables round-robin: every round calls each once, so drift hits them all alike.

    Comparing implementations one after the other lets a slow start (allocator growth, clocks, another
    process) land on whichever ran first; interleaving spreads it evenly.
    """
    if iters < 1:
        raise ValueError("iters must be at least 1")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            samples[name].append(_one(fn, device))
    return {k: summarize(v, warmup) for k, v in samples.items()}


def _one(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def spin(fn: Callable[[], object], *, device: str = "cpu", seconds: float = 2.0) -> int:
    """Call ``fn`` repeatedly for about ``seconds`` so an idle GPU reaches its working clocks before timing.

    An idle GPU sits at low clocks; the first configuration timed would otherwise look slower than the
    rest. Returns the number of calls made.
    """
    from workbook.device import synchronize

    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
        if n % 8 == 0:
            synchronize(device)
    synchronize(device)
    return n
