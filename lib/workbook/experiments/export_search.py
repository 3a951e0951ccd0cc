"""The export_search experiment: which (tensor-parallel size, batch size, sequence length) of a decoder work.

Seed: a procedure to find the valid export configurations of a decoder with ``optimum-cli export neuron``
(tp at least 2, multiples of the cores per device, not above the total cores, dividing the heads; batch sizes
1-128; sequence lengths powers of two from 1024 below the maximum positions; tried in decreasing order; a valid
(tp, batch, seq) makes smaller seq valid; a tp's largest valid batch bounds the batches tried). The search
itself is :mod:`workbook.llm.search` (resumable, atomic state file, one process per attempt with a
timeout); this module chooses the validator for the machine, checks the parameters and shapes the report.

Validators: ``neuron`` (optimum-cli export, then a load, separate processes), ``cuda`` and ``cpu``
(:mod:`workbook.llm.validate`: tensor-parallel load through torchrun plus one forward at (batch, seq) with its
KV cache, under a per-device memory budget).
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from workbook import checks
from workbook.llm import search as es
from workbook.targets import cuda_available
from workbook.errors import ParameterError, bad_param
from workbook.params import as_list
from workbook.paths import outputs_dir

VALIDATORS = ("auto", "neuron", "cuda", "cpu")
STATUS_CODE = {"valid": 4, "valid-by-rule": 3, "pending": 2, "skipped-by-rule": 1, "failed": 0, "timeout": 0,
               "crashed": 0}


@dataclass
class Config:
    model: str
    model_note: str
    validator: str
    validator_reason: str
    cands: dict
    heads: int
    max_positions: int
    budget_gb: float
    dtype: str
    timeout_s: float
    state_dir: Path
    instance_type: str
    notes: list[str] = field(default_factory=list)


def _pick_validator(requested: str) -> tuple[str, str]:
    if requested not in VALIDATORS:
        raise bad_param("validator", requested, "one of " + ", ".join(VALIDATORS))
    has_cli = shutil.which("optimum-cli") is not None
    if requested == "neuron" and not has_cli:
        raise bad_param("validator", requested, "cuda or cpu here: optimum-cli (optimum-neuron) is not installed, "
                        "and the neuron validator exports with it")
    if requested == "cuda" and not cuda_available():
        raise bad_param("validator", requested, "cpu or neuron here: torch sees no CUDA GPU")
    if requested != "auto":
        return requested, f"{requested}: asked for"
    if has_cli:
        return "neuron", "auto: optimum-cli is installed"
    if cuda_available():
        return "cuda", "auto: a CUDA GPU is visible and optimum-cli is not installed"
    return "cpu", "auto: no optimum-cli and no CUDA GPU, so tensor-parallel loads on CPU cores (gloo)"


def configure(*, model: str, validator: str, total_cores: int, cores_per_device: int, batch_sizes, min_seq: int,
              memory_budget_gb: float, dtype: str, timeout_s: float, state_dir: str, instance_type: str) -> Config:
    """Check every parameter; one clear sentence on error. Nothing is tried here."""
    checks.injected_are_parameters(configure)  # a misspelt `papermill -p` name is refused, not ignored
    from workbook.models import mistral

    kind, why = _pick_validator(validator)
    if instance_type and instance_type not in es.INSTANCE_TYPES:
        raise bad_param("instance_type", instance_type, "empty or one of " + ", ".join(es.INSTANCE_TYPES))
    if isinstance(memory_budget_gb, bool) or not isinstance(memory_budget_gb, (int, float)) or memory_budget_gb <= 0:
        raise bad_param("memory_budget_gb", memory_budget_gb, "a positive number of GB per device")
    if dtype not in mistral.DTYPE_BYTES or dtype == "float64":
        raise bad_param("dtype", dtype, "one of float32, bfloat16, float16")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise bad_param("timeout_s", timeout_s, "a positive number of seconds per attempt")
    note = ""
    if not model or model in mistral.SHAPES:
        model, note = mistral.workbook_model(model)
    config = mistral.load_config(model)  # not a causal LM, or missing: one sentence
    batches = as_list("batch_sizes", batch_sizes)
    state = checks.directory("state_dir", state_dir)
    heads, positions = config.num_attention_heads, config.max_position_embeddings
    try:
        cands = es.candidates(total_cores, cores_per_device, heads, positions, batches, min_seq)
    except ParameterError as e:  # the model's own figures are not parameters here: name the one to change
        if e.name == "max_positions":
            raise bad_param("min_seq", min_seq, f"a power of two below the model's {positions} positions") from None
        if e.name == "num_heads":
            raise bad_param("total_cores", total_cores, f"a count that allows a tensor-parallel size (at least 2, a "
                            f"multiple of cores_per_device={cores_per_device}) dividing the model's {heads} attention "
                            "heads") from None
        raise
    if kind in ("cuda", "cpu"):
        if kind == "cuda":
            import torch

            n, what = torch.cuda.device_count(), "GPUs here for the cuda validator (one GPU per rank)"
        else:
            n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            what = "CPU cores this process may use, for the cpu validator (one process per rank)"
        if max(cands["tps"]) > n:
            raise bad_param("total_cores", total_cores, f"at most the {n} {what}")
    cfg = Config(model, note, kind, why, cands, heads, positions, float(memory_budget_gb), dtype, float(timeout_s),
                 state or outputs_dir() / "export_search" / "state", instance_type)
    _refuse_other_state(cfg)
    if note:
        cfg.notes.append(note)
    if kind == "cpu":
        cfg.notes.append("cpu validator: every attempt is a gloo tensor-parallel load on CPU cores plus one forward; "
                         "the memory rule is the weights + KV cache estimate against memory_budget_gb per rank.")
    return cfg


def _refuse_other_state(cfg: Config) -> None:
    """A state file already in ``state_dir`` with results made by another validator, or by this one with other
    settings, is refused here in the first cell rather than when the search opens it."""
    es.read_state(es.state_path(cfg.state_dir, cfg.model), validator(cfg))


def validator(cfg: Config) -> es.Validator:
    """The validator object for the search."""
    if cfg.validator == "neuron":
        return es.NeuronValidator(cfg.instance_type or None)

    def build(model, tp, batch, seq, workdir):
        return [sys.executable, "-m", "workbook.llm.validate", "--model", model, "--tp", str(tp), "--batch", str(batch),
                "--seq", str(seq), "--device", cfg.validator, "--budget-gb", str(cfg.budget_gb), "--dtype", cfg.dtype,
                "--timeout", str(cfg.timeout_s)]
    return es.TorchValidator(build, name=f"torch-{cfg.validator}",
                             description=f"tensor-parallel load + one forward on {cfg.validator}, "
                                         f"{cfg.budget_gb:g} GB per device, {cfg.dtype}")


def candidate_rows(cfg: Config) -> list[dict]:
    c = cfg.cands
    return [{"tensor_parallel_sizes": ", ".join(map(str, c["tps"])), "batch_sizes": ", ".join(map(str, c["batches"])),
             "sequence_lengths": ", ".join(map(str, c["seqs"])),
             "combinations": len(c["tps"]) * len(c["batches"]) * len(c["seqs"]),
             "heads": cfg.heads, "max_positions": cfg.max_positions}]


def run(cfg: Config, log=print) -> dict:
    """Run (or resume) the search; the state file is written after every attempt."""
    return es.search(cfg.model, validator(cfg), cfg.cands, cfg.state_dir, cfg.timeout_s, progress=True, log=log)


def counts(state: dict) -> list[dict]:
    rows = es.summary(state)
    out = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return [{"status": k, "configurations": v} for k, v in sorted(out.items())]


def counts_sentence(state: dict) -> str:
    """The counts of :func:`counts` as the one line the report reads above the maps, from this run's state."""
    rows = counts(state)
    total = sum(r["configurations"] for r in rows)
    parts = [f"{r['configurations']} {r['status'].replace('-', ' ')}" for r in rows]
    return f"{total} configurations: " + " · ".join(parts) + f"; {len(state['attempts'])} tested."


def failures(state: dict) -> list[dict]:
    """Tested configurations that did not work, with the last lines of their log."""
    return [{"tp": a["tp"], "batch": a["batch"], "seq": a["seq"], "status": a["status"],
             "log_tail": "\n".join(a.get("log_tail", [])[-6:])}
            for a in state["attempts"] if a["status"] not in es.VALID]


def heatmap_data(state: dict, tp: int) -> dict:
    g = es.grid(state, tp)
    z = [[STATUS_CODE[s] for s in row] for row in g["status"]]
    return {"z": z, "x": [str(s) for s in g["seqs"]], "y": [str(b) for b in g["batches"]], "text": g["status"]}
