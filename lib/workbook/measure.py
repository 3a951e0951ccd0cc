"""Timing with the discipline the experiments share (gpt-fast style).

Warm-up calls are run and excluded; each timed call is bracketed by CUDA events on a GPU (host clock
plus a synchronize on the CPU); the median and p10/p90 are reported, never a mean over a handful of
calls. First-call time (compilation, lazy initialisation) is measured apart, by the caller, with
:func:`time_once`.

Events around one call on an idle GPU time the host's work too: the GPU waits for each launch. For a
step of hundreds of milliseconds that is nothing, but a sub-millisecond kernel call behind Python
(autograd, the Triton launcher, an autotuner's key) can take longer to queue than to run.
:func:`time_queued` gives the GPU a head start (a spin kernel) so the host queues the whole call
before it starts, and reports the device's time and the host's queueing time apart.
"""
from __future__ import annotations

import functools
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


def time_fn(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 3,
            iters: int = 20) -> Timing:
    """Time ``fn()`` ``iters`` times after ``warmup`` untimed calls; CUDA events on
    ``device='cuda'``."""
    if iters < 1:
        raise ValueError("iters must be at least 1")
    for _ in range(warmup):
        fn()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    samples = [_one(fn, device) for _ in range(iters)]
    return summarize(samples, warmup)


@dataclass(frozen=True)
class QueuedTiming:
    """:func:`time_queued`'s result: the device's time per call, the host's time to queue one, and
    the share of timed calls whose queueing outlasted the GPU's head start (their device time
    includes waits for the host)."""

    device: Timing
    host: Timing
    host_bound_share: float


def time_queued(fn: Callable[[], object], *, warmup: int = 3, iters: int = 20) -> QueuedTiming:
    """Device time of ``fn()`` on the current CUDA device with the host queued ahead.

    Each timed call starts behind a GPU spin (``torch.cuda._sleep``) meant to last twice the longest
    queueing seen in warm-up, so the start event fires only after the host has queued the whole
    call: the events bracket the device's work alone, as in a loop whose host runs ahead. ``fn``
    must not synchronise, and should be compiled and tuned before (the slowest warm-up call sets the
    head start). The spin's own length is timed on the device as well: a call whose queueing
    outlasted it is counted in ``host_bound_share`` (its device time includes waits for the host),
    and the spins after it are lengthened.
    """
    import torch

    if iters < 1:
        raise ValueError("iters must be at least 1")
    head_ms = 1.0
    for _ in range(max(warmup, 1)):  # at least one, to learn how long queueing takes
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        head_ms = max(head_ms, 2 * (time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    cycles = int(head_ms * _spin_cycles_per_ms(torch.cuda.current_device()))
    dev, host, late = [], [], 0
    for _ in range(iters):
        spun, start, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        t0 = time.perf_counter()
        spun.record()
        torch.cuda._sleep(cycles)
        start.record()
        fn()
        end.record()
        queued_ms = (time.perf_counter() - t0) * 1e3
        end.synchronize()
        dev.append(start.elapsed_time(end))
        host.append(queued_ms)
        spin_ms = spun.elapsed_time(start)
        if spin_ms < queued_ms:  # the GPU reached the call before the host had queued all of it
            late += 1
            cycles = int(cycles * 2 * queued_ms / max(spin_ms, 1e-3))
    return QueuedTiming(summarize(dev, warmup), summarize(host, warmup), late / iters)


@functools.lru_cache(maxsize=None)
def _spin_cycles_per_ms(device_index: int) -> float:
    """About how many ``torch.cuda._sleep`` cycles make a millisecond on this GPU (calibrated once,
    at the clock of the moment; :func:`time_queued` times every spin and lengthens those that prove
    too short)."""
    import torch

    torch.cuda._sleep(1_000_000)  # the first spin may pay for loading the kernel
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return 10_000_000 / max(start.elapsed_time(end), 1e-3)


def time_once(fn: Callable[[], object], *, device: str = "cpu") -> tuple[float, object]:
    """Wall time (ms) of one call, the device synchronised before and after: ``(ms, result)``."""
    from workbook.targets import synchronize

    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3, out


def time_interleaved(fns: dict[str, Callable[[], object]], *, device: str = "cpu", warmup: int = 3,
                     iters: int = 20) -> dict[str, Timing]:
    """Time several callables round-robin: every round calls each once, so drift hits them all
    alike.

    Comparing implementations one after the other lets a slow start (allocator growth, clocks,
    another process) land on whichever ran first; interleaving spreads it evenly.
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
    """Call ``fn`` repeatedly for about ``seconds`` so an idle GPU reaches its working clocks before
    timing.

    An idle GPU sits at low clocks; the first configuration timed would otherwise look slower than
    the rest. Returns the number of calls made.
    """
    from workbook.targets import synchronize

    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
        if n % 8 == 0:
            synchronize(device)
    synchronize(device)
    return n
