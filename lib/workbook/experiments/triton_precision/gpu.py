"""The GPU as the speed and memory sections use it: the one seam between them and ``torch.cuda``.

Why a seam: those sections mean something only on a GPU, but their bookkeeping (resumed groups,
variants taking turns, out of memory, a peak that leaves the other variants' weights out, telemetry
per variant) must be tested on a CPU. Everything they ask of the device goes through a
:class:`Cuda`: memory counters, CUDA-event timing, host-queued timing, telemetry and building a
stack variant on it; and each group of rows is measured by :meth:`Cuda.speed_group` /
:meth:`Cuda.stack_group`, so a stand-in can replay recorded rows instead
(``tests/standins/gpu_sections.py`` has both kinds). ``configure`` gives a run ``Cuda()`` where its
target is cuda, else None.
"""
from __future__ import annotations

import torch

from workbook import measure
from workbook.telemetry import Telemetry


class Cuda:
    device = "cuda"  # where the sections put their tensors

    # one group of rows: the harnesses, on this GPU's primitives below
    def speed_group(self, cfg, kernel: str, tokens: int, progress=None) -> list[dict]:
        from .kernel_speed import measure_group

        return measure_group(cfg, self, kernel, tokens, progress)

    def stack_group(self, cfg, batch: int, progress=None) -> list[dict]:
        from .stack import measure_batch

        return measure_batch(cfg, self, batch, progress)

    # the primitives
    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated()

    def total_memory(self) -> int:
        return torch.cuda.get_device_properties(0).total_memory

    def telemetry(self) -> Telemetry:
        return Telemetry(torch.cuda.current_device())

    def load(self, variant: str, model_config, batch: int, seed: int):
        """``(model, forward fn)`` of one stack variant in bf16 on this GPU."""
        from .stack import build_variant

        return build_variant(variant, model_config, batch, self.device, torch.bfloat16, seed)

    def time_steps(self, fwd, model, n: int) -> tuple[list[float], list[float]]:
        """``n`` training steps, each synchronised: forward and backward ms of each (CUDA
        events)."""
        f, b = [], []
        for _ in range(n):
            e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            e[0].record()
            a, p = fwd()
            e[1].record()
            torch.autograd.backward([a, p], [torch.ones_like(a), torch.ones_like(p)])
            e[2].record()
            torch.cuda.synchronize()
            f.append(e[0].elapsed_time(e[1]))
            b.append(e[1].elapsed_time(e[2]))
            del a, p
            model.zero_grad(set_to_none=True)
        return f, b

    def time_queued(self, fn, warmup: int, iters: int) -> tuple[float, float, float]:
        """(device ms, host ms to queue one call, share of calls the host was late for): a call of
        well under a millisecond can take the host longer to queue than the GPU to run, so the two
        are timed apart (:func:`workbook.measure.time_queued`)."""
        t = measure.time_queued(fn, warmup=warmup, iters=iters)
        return t.device.median_ms, t.host.median_ms, t.host_bound_share
