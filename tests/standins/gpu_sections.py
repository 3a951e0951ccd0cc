"""TEST STAND-IN for triton_precision's GPU-only sections, so their tables and figures are tested on a CPU.

The kernel-speed and so400m-stack sections run only where ``cfg.device == "cuda"``. A report test inserts a cell
before them that calls :func:`install`: the configuration says cuda from then on, and ``speed_rows`` and
``stack_rows`` replay the rows that a real H100 run recorded (the committed reference results named in
:data:`REFERENCE`), recording them through the notebook's recorder as the real functions do. Everything after
them (speed-ups, stack ratios, the bar, the power and baseline notes, the figures, the headline) is the
notebook's own code. The run's first note says that these rows were replayed, not measured.
"""
from __future__ import annotations

import json
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "outputs" / "reference" / "nvidia-h100" / "triton_precision" / \
    "66a6a9e-full" / "results.json"
NOTE = ("TEST STAND-IN: the per-kernel speed and so400m stack rows are replayed from an H100 reference run "
        "(outputs/reference/nvidia-h100/triton_precision/66a6a9e-full), not measured on this machine")


def install(exp, cfg, rec) -> None:
    tables = json.loads(REFERENCE.read_text())["tables"]
    speed, stack = tables["kernel_speed"], tables["stack"]
    cfg.device = "cuda"
    cfg.speed_tokens = sorted({r["tokens"] for r in speed})
    cfg.kernels = list(dict.fromkeys(r["kernel"] for r in speed))
    cfg.stack_config = "so400m"
    cfg.stack_batches = sorted({r["batch"] for r in stack})
    cfg.stack_variants = list(dict.fromkeys(r["variant"] for r in stack))
    cfg.stack_rounds = 1
    rec.note(NOTE)

    def speed_rows(cfg, dtype_name="bfloat16", progress=None, rec=None):
        rows = [dict(r) for r in speed]
        for r in rows:
            if rec is not None:
                rec.add_group("kernel_speed", [r], kernel=r["kernel"], tokens=r["tokens"], impl=r["impl"])
            if progress is not None:
                progress.update(1)
        return rows

    def stack_rows(cfg, rec=None, progress=None):
        rows = [dict(r) for r in stack]
        if rec is not None:
            for b in cfg.stack_batches:
                rec.add_group("stack", [r for r in rows if r["batch"] == b], batch=b)
        if progress is not None:
            progress.update(len(rows))
        return rows

    exp.speed_rows, exp.stack_rows = speed_rows, stack_rows
