"""The whole so400m vision stack: transformers (sdpa) against the fused model, a bf16 training step.

Why the variants take turns: a dense bf16 step holds an H100/H200 at its power limit, where the
clock follows the chip's temperature (a hotter chip leaks more). Timed one after the other, the
second variant would run on a chip the first had heated. So each variant's timed steps are split
over rounds whose order alternates (A B, B A, A B, ...), and a drift in time weighs on every variant
alike. Every variant's model stays on the GPU meanwhile, and a row's peak memory is its own, not the
others'.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbook import measure
from workbook.console import progress

from .bar import baseline_note, power_note

COLUMNS = ["variant", "batch", "status", "forward_ms", "backward_ms", "fwd_bwd_ms",
           "fwd_bwd_p10_ms",
           "fwd_bwd_p90_ms", "peak_gb", "sm_clock_mhz", "power_w", "energy_j_per_step",
           "power_capped_share", "gpu_temp_c", "gpu_temp_max_c", "note"]


def build_variant(variant: str, model_config, batch: int, device: str, dtype, seed: int):
    """``(model, forward fn returning (last_hidden, pooled))`` for one stack variant and batch
    size."""
    from workbook.models import siglip2 as S

    hf = S.hf_model(model_config, seed=seed, dtype=dtype, device=device)
    pv, mask, ss = S.inputs(model_config, batch, dtype=dtype, device=device, seed=seed)
    if not variant.startswith("transformers"):  # the fused model takes over transformers' weights
        model = S.from_hf(hf, S.FusedOptions(recompute_norm=variant != "fused-store-norm"))
        return model, (lambda: model(pv, mask, ss))
    if variant.endswith("checkpointing"):
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf.train()

    def fwd():
        o = hf(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss)
        return o.last_hidden_state, o.pooler_output
    return hf, fwd


def round_sizes(iterations: int, rounds: int) -> list[int]:
    """Timed steps of each variant in each round: ``iterations`` split as evenly as the rounds
    allow."""
    return [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]


@dataclass
class VariantRun:
    """One variant at one batch size while the variants take turns."""

    row: dict  # the result row, filled in at the end
    model: object = None  # while it takes turns
    fwd: object = None
    built: int = 0  # bytes of its weights and inputs, as built
    kept: int = 0  # bytes it keeps on the GPU between steps (built + what its first steps left)
    forward: list[float] = field(default_factory=list)
    backward: list[float] = field(default_factory=list)
    peak: int = 0  # its own peak: weights, inputs, activations and gradients
    telemetry: object = None
    gone: bool = False  # out of memory: left out of later rounds

    @property
    def name(self) -> str:
        return self.row["variant"]

    def first_turn(self, gpu, mc, batch: int, seed: int, warmup: int) -> None:
        """Build it and run ``warmup`` untimed steps (compiling and autotuning)."""
        gpu.synchronize()
        gpu.empty_cache()
        before = gpu.allocated()
        self.model, self.fwd = gpu.load(self.name, mc, batch, seed)
        self.built = gpu.allocated() - before
        gpu.time_steps(self.fwd, self.model, max(1, warmup))
        gpu.synchronize()
        self.kept = gpu.allocated() - before
        self.telemetry = gpu.telemetry()

    def come_back(self, gpu) -> None:
        """After another variant ran: its cached blocks go, and one step runs untimed, so the timed
        steps find their memory as in a run of their own."""
        gpu.synchronize()
        gpu.empty_cache()
        gpu.time_steps(self.fwd, self.model, 1)
        gpu.synchronize()

    def timed(self, gpu, n: int) -> None:
        base = gpu.allocated()
        gpu.reset_peak()
        with self.telemetry:
            f, b = gpu.time_steps(self.fwd, self.model, n)
        self.forward += f
        self.backward += b
        self.peak = max(self.peak, gpu.peak() - base + self.kept)

    def result(self) -> dict:
        if self.gone:
            return self.row
        fb = [x + y for x, y in zip(self.forward, self.backward)]
        pct = measure.percentile
        self.row.update(status="ok", forward_ms=pct(self.forward, 50),
                        backward_ms=pct(self.backward, 50), fwd_bwd_ms=pct(fb, 50),
                        fwd_bwd_p10_ms=pct(fb, 10), fwd_bwd_p90_ms=pct(fb, 90),
                        peak_gb=self.peak / 1e9, weights_and_inputs_gb=self.built / 1e9,
                        iterations=len(fb))
        tm = self.telemetry
        self.row.update(tm.summary(len(fb)) or {"telemetry": f"not measured: {tm.unavailable}"})
        return self.row


def _out_of_memory(run: VariantRun, runs: list[VariantRun], gpu, r: int, rounds: int) -> None:
    others = sum(o.kept for o in runs if o is not run and o.model is not None)
    where = f" in round {r + 1} of {rounds}, its timed steps so far dropped" if r else ""
    held = (f" ({others / 1e9:.1f} GB of it the other variants' weights and inputs)"
            if others > 0.05e9 else "")
    total = gpu.total_memory() / 1e9
    run.row.update(status="out of memory", note=f"out of memory at {total:.0f} GB{held}{where}")
    run.gone = True
    run.model = run.fwd = None


def measure_batch(cfg, gpu, batch: int, progress=None) -> list[dict]:
    """Every variant of ``cfg.p.stack_variants`` at one batch size, their timed steps interleaved.

    The first turn of each variant builds it and runs ``warmup`` untimed steps; a later turn that
    follows another variant runs one untimed step first (:meth:`VariantRun.come_back`). Telemetry
    covers a variant's timed steps only. Out of memory is recorded as such and the others go on.
    ``progress`` advances once per variant and round.
    """
    from workbook.models import siglip2 as S

    p = cfg.p
    mc = S.config(p.stack_config)
    runs = [VariantRun({"variant": v, "batch": batch, "patches": mc.num_patches,
                        "dtype": "bfloat16",
                        "rounds": p.stack_rounds}) for v in p.stack_variants]
    sizes = round_sizes(p.iterations, p.stack_rounds)
    last = None
    for r, k in enumerate(sizes):
        for run in (runs if r % 2 == 0 else runs[::-1]):
            if run.gone:
                continue
            oom = False
            try:
                if run.model is None:
                    run.first_turn(gpu, mc, batch, p.seed, p.warmup)
                elif last is not run:
                    run.come_back(gpu)
                last = run
                run.timed(gpu, k)
            except torch.OutOfMemoryError:
                _out_of_memory(run, runs, gpu, r, len(sizes))
                last = None
                oom = True
            if oom:  # outside the handler, whose traceback holds the failed step's tensors
                gpu.empty_cache()
                if progress is not None:
                    progress.update(len(sizes) - r - 1)  # the turns it will not take
            if progress is not None:
                progress.update(1)
    rows = [run.result() for run in runs]
    runs.clear()
    gpu.empty_cache()
    return rows


def stack_rows(cfg, rec, progress=None) -> list[dict]:
    """Each batch size, measured on ``cfg.gpu`` and recorded as one resumable group of ``rec`` (a
    resumed run takes those its predecessor finished on the same machine)."""
    rows = []
    for batch in cfg.p.stack_batches:
        done = rec.done_group("stack", timed=True, batch=batch)
        if done is None:
            done = cfg.gpu.stack_group(cfg, batch, progress)
            rec.add_group("stack", done, batch=batch)
        elif progress is not None:
            progress.update(len(cfg.p.stack_variants) * cfg.p.stack_rounds)
        rows.extend(done)
    return rows


def _say(rec, text: str, not_measured: str = "") -> None:
    if not_measured:
        rec.not_measured(not_measured, text)
    else:
        rec.note(text)
    print(text)


def stack_speed(cfg, rec) -> tuple[list[dict], str | None]:
    """The stack section: ``(rows, None)``, or ``([], why)`` recorded as not measured. Records the
    rows, a telemetry that could not be read, the power-cap note and the baseline's release note."""
    if cfg.gpu is None:
        why = "no GPU: the stack's speed and memory need one"
    elif not cfg.p.stack_variants or not cfg.p.stack_batches:
        why = "stack_variants or stack_batches is empty"
    else:
        why = None
    if why:
        rec.not_measured("so400m stack speed and memory", why)
        return [], why
    total = len(cfg.p.stack_batches) * len(cfg.p.stack_variants) * cfg.p.stack_rounds
    with progress(total=total, desc="stack") as bar:
        rows = stack_rows(cfg, rec, bar)
    rec.keys("stack", ["variant", "batch"])
    for why in sorted({r["telemetry"] for r in rows if "telemetry" in r}):
        _say(rec, why, not_measured="GPU clock, power and energy of the stack steps")
    for note in (power_note(rows), baseline_note(rows)):  # the clock, and which transformers
        if note:
            _say(rec, note)
    return rows, None
