"""The local executor: a sweep's points in parallel on this machine, never oversubscribing it.

Each point runs as ``python -m workbook.cli run NOTEBOOK -p ...`` (an ordinary run, with its own run
folder, reuse and resume) in a process group of its own, killed with the driver. A point that takes
GPUs gets that many of the visible ones to itself (``CUDA_VISIBLE_DEVICES``), one that takes
NeuronCores a contiguous range of them (``NEURON_RT_VISIBLE_CORES``); points without GPUs
share the CPU cores, each pinned to its own share (``taskset``) with as many threads
(``OMP_NUM_THREADS``), so two points never time each other's work. ``max_parallel`` caps the points
at once; by default it is the number of GPUs for GPU points and 1 for CPU points, whose timings
would otherwise share the cores.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workbook import proc


def visible_gpus() -> int:
    from workbook.targets import cuda_available

    if not cuda_available():
        return 0
    import torch

    return torch.cuda.device_count()


def visible_neuron_cores() -> int:
    from workbook.backends.neuron_sysfs import visible_cores

    return visible_cores()


def default_parallel(points, gpus: int, neuron_cores: int = 0) -> int:
    fit = []
    need = max((p.gpus for p in points), default=0)
    if need:
        fit.append(gpus // need)
    cores = max((p.neuron_cores for p in points), default=0)
    if cores:
        fit.append(neuron_cores // cores)
    return max(min(fit), 1) if fit else 1


class Slots:
    """GPU indices, NeuronCore indices and CPU core sets handed to points and taken back."""

    def __init__(self, gpus: int, parallel: int, neuron_cores: int = 0):
        self._cv = threading.Condition()
        self._gpus = list(range(gpus))
        self._cores = list(range(neuron_cores))
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            list(range(os.cpu_count() or 1))
        share = max(len(cores) // parallel, 1)
        self._cpus = [cores[i * share:(i + 1) * share] for i in range(min(parallel, len(cores)))]

    def _run_of(self, n: int) -> int | None:
        """Start of ``n`` free NeuronCores in a row (the runtime takes a range), or None."""
        free = set(self._cores)
        return next((c for c in sorted(free) if all(c + i in free for i in range(n))), None)

    def take(self, gpus: int, neuron_cores: int = 0) -> tuple[list[int], list[int], list[int]]:
        with self._cv:
            while (len(self._gpus) < gpus or not self._cpus
                   or (neuron_cores and self._run_of(neuron_cores) is None)):
                self._cv.wait()
            g = [self._gpus.pop(0) for _ in range(gpus)]
            start = self._run_of(neuron_cores) if neuron_cores else 0
            n = list(range(start, start + neuron_cores))
            self._cores = [c for c in self._cores if c not in n]
            return g, self._cpus.pop(0), n

    def give(self, gpus: list[int], cpus: list[int], neuron_cores: list[int] = ()) -> None:
        with self._cv:
            self._gpus = sorted(self._gpus + gpus)
            self._cores = sorted(self._cores + list(neuron_cores))
            self._cpus.append(cpus)
            self._cv.notify_all()


def argv_for(notebook: str, params: dict, *, profile=None, file=None) -> list[str]:
    argv = [sys.executable, "-m", "workbook.cli", "run", notebook]
    for k, v in params.items():
        argv += ["-p", k, json.dumps(v)]
    if profile:
        argv += ["--profile", profile]
    if file:
        argv += ["-f", str(file)]
    return argv


def run_points(points, run_one, parallel: int, gpus: int, neuron_cores: int = 0) -> None:
    """``run_one(point, {"gpu_ids", "cpu_ids", "neuron_core_ids"})`` for every point, ``parallel``
    at a time."""
    slots = Slots(gpus, parallel, neuron_cores)

    def task(p):
        g, c, n = slots.take(p.gpus, p.neuron_cores)
        try:
            run_one(p, {"gpu_ids": g, "cpu_ids": c, "neuron_core_ids": n})
        finally:
            slots.give(g, c, n)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for f in [pool.submit(task, p) for p in points]:
            f.result()


def launch(argv: list[str], log: Path, slots: dict, timeout_s=None,
           env_extra: dict | None = None, cwd=None):
    """One point's run: pinned to its cores, given its GPUs and NeuronCores; the process
    result."""
    cpu_ids, cores = slots["cpu_ids"], slots["neuron_core_ids"]
    env = dict(os.environ, OMP_NUM_THREADS=str(len(cpu_ids)), MKL_NUM_THREADS=str(len(cpu_ids)),
               **(env_extra or {}))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots["gpu_ids"]))
    if cores:
        env["NEURON_RT_VISIBLE_CORES"] = (f"{cores[0]}-{cores[-1]}" if len(cores) > 1
                                          else str(cores[0]))
    if shutil.which("taskset"):
        argv = ["taskset", "-c", ",".join(map(str, cpu_ids)), *argv]
    return proc.run(argv, log=log, timeout_s=timeout_s, env=env, grace_s=10, cwd=cwd)
