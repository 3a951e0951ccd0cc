"""The local executor: a sweep's points in parallel on this machine, never oversubscribing it.

Each point runs as ``python -m workbook.cli run NOTEBOOK -p ...`` (an ordinary run, with its own run
folder, reuse and resume) in a process group of its own, killed with the driver. A point that takes
GPUs gets that many of the visible ones to itself (``CUDA_VISIBLE_DEVICES``); points without GPUs
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


def default_parallel(points, gpus: int) -> int:
    need = max((p.gpus for p in points), default=0)
    return max(gpus // need, 1) if need else 1


class Slots:
    """GPU indices and CPU core sets handed to points and taken back."""

    def __init__(self, gpus: int, parallel: int):
        self._cv = threading.Condition()
        self._gpus = list(range(gpus))
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            list(range(os.cpu_count() or 1))
        share = max(len(cores) // parallel, 1)
        self._cpus = [cores[i * share:(i + 1) * share] for i in range(min(parallel, len(cores)))]

    def take(self, gpus: int) -> tuple[list[int], list[int]]:
        with self._cv:
            while len(self._gpus) < gpus or not self._cpus:
                self._cv.wait()
            g = [self._gpus.pop(0) for _ in range(gpus)]
            return g, self._cpus.pop(0)

    def give(self, gpus: list[int], cpus: list[int]) -> None:
        with self._cv:
            self._gpus = sorted(self._gpus + gpus)
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


def run_points(points, run_one, parallel: int, gpus: int) -> None:
    """``run_one(point, gpu_ids, cpu_ids)`` for every point, ``parallel`` at a time."""
    slots = Slots(gpus, parallel)

    def task(p):
        g, c = slots.take(p.gpus)
        try:
            run_one(p, g, c)
        finally:
            slots.give(g, c)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for f in [pool.submit(task, p) for p in points]:
            f.result()


def launch(argv: list[str], log: Path, gpu_ids: list[int], cpu_ids: list[int], timeout_s=None,
           env_extra: dict | None = None, cwd=None):
    """One point's run: pinned to its cores, given its GPUs; the process result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(len(cpu_ids)), MKL_NUM_THREADS=str(len(cpu_ids)),
               **(env_extra or {}))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    if shutil.which("taskset"):
        argv = ["taskset", "-c", ",".join(map(str, cpu_ids)), *argv]
    return proc.run(argv, log=log, timeout_s=timeout_s, env=env, grace_s=10, cwd=cwd)
