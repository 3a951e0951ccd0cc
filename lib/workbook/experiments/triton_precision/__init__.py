"""The triton_precision experiment: the SigLIP-2 Triton kernels' precision and speed.

Seed: fused Triton kernels for SigLIP-2 (so400m) whose fused MLP applies GELU on the fp32
accumulator, claimed *more* precise than eager and faster with less memory (the notebook's opening
states the seed's figures). The notebook calls
:func:`configure` first, then one function per section, each recording what it measured and
returning rows to display: :mod:`.precision` (every kernel and one encoder layer against fp64 beside
eager, the seed's claim, the fused tower against transformers), :mod:`.kernel_speed` and
:mod:`.stack` / :mod:`.bar` (GPU only, through the seam in :mod:`.gpu`), and :func:`headline` last.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from workbook import targets
from workbook.errors import WorkbookError, bad_param
from workbook.spec import Values

from .bar import (BAR, BATCHED_RESIZE_SINCE, bar_check, baseline_note,  # noqa: F401
                  power_note, resizes_per_image, stack_ratios, stack_verdict, transformers_version)
from .gpu import Cuda
from .kernel_speed import speed_per_kernel, speedups  # noqa: F401
from .precision import (by_dtype, claim_check, model_check, model_check_problems,  # noqa: F401
                        precision_study, precision_summary, ulp_histograms)
from .stack import COLUMNS as STACK_COLUMNS  # noqa: F401
from .stack import stack_speed  # noqa: F401

# list parameters whose repeated items configure drops
LISTS = ("dtypes", "kernels", "speed_tokens", "stack_batches", "stack_variants")


@dataclass
class Config:
    p: Values  # the checked parameters (lists without duplicates)
    target: targets.Target  # cpu (the Triton interpreter) or cuda
    gpu: Cuda | None = None  # what the speed and memory sections measure on; None: they say why not
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return self.target.name


def configure(P: Values) -> Config:
    """The rules between parameters and about the machine (each value alone was checked by the
    spec), the device, and the GPU the speed sections measure on; one sentence on error."""
    target = targets.resolve(P.device, param="device", choices=("auto", "cpu", "cuda"))
    if target.name == "cpu":
        # before the first import of workbook.kernels
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from workbook.kernels import runtime
    from workbook.kernels.layernorm import MAX_HIDDEN

    if P.stack_rounds > P.iterations:
        raise bad_param("stack_rounds", P.stack_rounds, f"at most iterations={P.iterations}, since "
                        "each round times at least one step of every stack variant")
    if P.hidden > MAX_HIDDEN:
        raise bad_param("hidden", P.hidden,
                        f"at most {MAX_HIDDEN}: the Triton LayerNorm keeps one row "
                        "in a program")
    if "block" in P.kernels and (P.hidden % P.heads or (P.hidden // P.heads) % 8):
        raise bad_param("heads", P.heads,
                        f"a divisor of hidden={P.hidden} giving a head size that is a "
                        "multiple of 8 for the block kernel (fused SDPA kernels need it; "
                        f"{P.hidden}/{P.heads} = {P.hidden / P.heads:g})")
    if len(P.claim_shape) != 3:
        raise bad_param("claim_shape", P.claim_shape,
                        "three positive integers [tokens, in_features, out_features]")
    why = runtime.unavailable_reason(target.name)
    if why:
        raise WorkbookError(f"device={P.device!r} cannot run the Triton kernels here: {why}; "
                            "restart the kernel (or run through papermill) so the setting applies "
                            "before the import.")
    p = P.replace(**{k: list(dict.fromkeys(P[k])) for k in LISTS})
    cfg = Config(p, target, Cuda() if target.name == "cuda" else None)
    if target.name == "cpu":
        cfg.notes.append("CPU: the kernels run in the Triton interpreter (numpy), so the "
                         "precision figures are real but nothing here is a speed; speed and memory "
                         "need a GPU.")
    return cfg


def start_record(cfg: Config, rec) -> None:
    """The device and why it was chosen, and the set-up's notes (printed too)."""
    t = cfg.target
    rec.set(device=t.name, device_reason=t.reason, device_name=t.device_name)
    for n in cfg.notes:
        rec.note(n)
        print(n)


def describe(cfg: Config) -> list[dict]:
    """The Set-up table."""
    p = cfg.p
    return [{"device": cfg.target.device_name, "why": cfg.target.reason,
             "dtypes": ", ".join(p.dtypes),
             "kernels": ", ".join(p.kernels),
             "precision shape": f"{p.tokens} x {p.hidden} (MLP {p.intermediate})"}]


def headline(rec) -> dict:
    """The few figures `workbook list` and the index show, from the tables ``rec`` holds."""
    summary = precision_summary(rec.table("precision"))
    fails = [f"{s['kernel']}/{s['dtype']}" for s in summary if s["failed"]]
    verdict = "all pass (2x rule)" if not fails else "FAIL: " + ", ".join(fails)
    figures = {"precision_verdict": verdict}
    for r in rec.table("claim"):
        if r["dtype"] == "bfloat16" and r["impl"].startswith("eager"):
            figures["fc1_gelu_bf16_mean_ulp_eager"] = r["mean_ulp"]
        if r["dtype"] == "bfloat16" and r["impl"].startswith("triton, GELU"):
            figures["fc1_gelu_bf16_mean_ulp_triton"] = r["mean_ulp"]
    for r in stack_ratios(rec.table("stack")):
        if r["variant"] == "fused":
            figures[f"stack_b{r['batch']}_fwd_bwd_speedup"] = r["fwd_bwd_speedup"]
            figures[f"stack_b{r['batch']}_peak_memory_ratio"] = r["peak_memory_ratio"]
            if "energy_ratio" in r:
                figures[f"stack_b{r['batch']}_energy_ratio"] = r["energy_ratio"]
    rec.headline(**figures)
    return rec.data["headline"]
