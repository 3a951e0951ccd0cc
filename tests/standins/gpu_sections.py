"""TEST STAND-INS for triton_precision's GPU, so its speed and memory sections are tested on a CPU.

Both go in through the experiment's one seam, ``cfg.gpu`` (its ``gpu`` module):

* :class:`StandInGpu` answers the device primitives on the CPU: an allocator whose counters a built
  model and a step move, steps that take the milliseconds it is given, out of memory where asked,
  and telemetry from a stand-in NVML. The harnesses (variants taking turns, peaks, resumed groups)
  run unchanged on it.
* :func:`install` (a report test inserts a cell calling it before the speed section) replays the
  rows a real H100 run recorded (the committed reference results named in :data:`REFERENCE`), one
  group at a time, through the notebook's recorder as the real sections do. Everything after them
  (speed-ups, stack ratios, the bar, the power and baseline notes, the figures, the headline) is the
  notebook's own code. The run's first note says that these rows were replayed, not measured.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from workbook.experiments.triton_precision.gpu import Cuda
from workbook.telemetry import Telemetry

REFERENCE = (Path(__file__).resolve().parents[2] / "outputs" / "reference" / "nvidia-h100"
             / "triton_precision" / "66a6a9e-full" / "results.json")
NOTE = ("TEST STAND-IN: the per-kernel speed and so400m stack rows are replayed from an H100 "
        "reference run (outputs/reference/nvidia-h100/triton_precision/66a6a9e-full), not measured "
        "on this machine")


class StandInGpu(Cuda):
    """The device primitives on the CPU. ``weights[v]``: bytes a built variant adds;
    ``activations[v]``: bytes a step raises the peak by (given back after it); ``step_ms[v]``:
    (forward, backward) ms of a step; ``oom_at=(v, n)``: v's n-th ``time_steps`` call runs out of
    memory; ``oom_on_load``: every build does. ``log`` holds (variant, steps) per ``time_steps``
    call and ``loads`` (variant, batch)."""

    device = "cpu"

    def __init__(self, *, weights=None, activations=None, step_ms=None, oom_at=None,
                 oom_on_load=False,
                 total=80e9, telemetry=None):
        self.alloc = self.high = 0.0
        self.weights, self.activations = weights or {}, activations or {}
        self.step_ms = step_ms or {}
        self.oom_at, self.oom_on_load, self.total = oom_at, oom_on_load, total
        self._telemetry = telemetry
        self.log, self.loads, self.calls = [], [], {}

    def synchronize(self):
        pass

    def empty_cache(self):
        pass

    def allocated(self):
        return self.alloc

    def reset_peak(self):
        self.high = self.alloc

    def peak(self):
        return self.high

    def total_memory(self):
        return self.total

    def telemetry(self):
        return self._telemetry() if self._telemetry else Telemetry(0, nvml=_NoNvml())

    def load(self, variant, model_config, batch, seed):
        self.loads.append((variant, batch))
        if self.oom_on_load:
            raise torch.OutOfMemoryError("stand-in")
        self.alloc += self.weights.get(variant, 0)
        return SimpleNamespace(variant=variant), None

    def time_steps(self, fwd, model, n):
        v = model.variant
        self.calls[v] = self.calls.get(v, 0) + 1
        if self.oom_at == (v, self.calls[v]):
            raise torch.OutOfMemoryError("stand-in")
        self.log.append((v, n))
        self.high = max(self.high, self.alloc + self.activations.get(v, 0))
        f, b = self.step_ms.get(v, (1.0, 2.0))
        return [f] * n, [b] * n


class _NoNvml:
    """An NVML that cannot be opened (telemetry: 'not measured')."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self):
        raise self.NVMLError("Driver Not Loaded")


class Replay(Cuda):
    """Each group of rows as the reference run recorded it."""

    def __init__(self, speed: list[dict], stack: list[dict]):
        self.speed, self.stack = speed, stack

    def speed_group(self, cfg, kernel, tokens, progress=None):
        rows = [dict(r) for r in self.speed if r["kernel"] == kernel and r["tokens"] == tokens]
        if progress is not None:
            progress.update(len(rows))
        return rows

    def stack_group(self, cfg, batch, progress=None):
        rows = [dict(r) for r in self.stack if r["batch"] == batch]
        if progress is not None:
            progress.update(len(rows))
        return rows


def install(cfg, rec) -> None:
    """From here on the run has a GPU that replays the reference run, with that run's sweep."""
    tables = json.loads(REFERENCE.read_text())["tables"]
    speed, stack = tables["kernel_speed"], tables["stack"]
    cfg.gpu = Replay(speed, stack)
    cfg.p = cfg.p.replace(speed_tokens=sorted({r["tokens"] for r in speed}),
                          kernels=list(dict.fromkeys(r["kernel"] for r in speed)),
                          stack_config="so400m", stack_batches=sorted({r["batch"] for r in stack}),
                          stack_variants=list(dict.fromkeys(r["variant"] for r in stack)),
                          stack_rounds=1)
    rec.note(NOTE)
