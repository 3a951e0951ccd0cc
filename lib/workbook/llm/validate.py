"""One export-search attempt on CUDA or CPU: tensor-parallel load plus one forward at (batch, seq) with its KV cache.

Why: ``workbook.llm.search`` runs every attempt as a separate process and reads only its exit status and
log. On Neuron an attempt is ``optimum-cli export`` then a load; on GPUs and CPUs this module is the
equivalent: check the tensor-parallel rules and the per-device memory budget (weights + KV cache per rank,
estimated before anything loads), then load through the same torchrun path as ``mistral_tp`` and run a
prefill of ``seq - 1`` tokens for ``batch`` sequences plus one decode step, so the KV cache holds ``seq``
positions. On CUDA the measured peak per rank must also stay within the budget (on the CPU the process RSS
includes the interpreter and libraries, so only the estimate is checked there).

    python -m workbook.llm.validate --model DIR --tp 2 --batch 4 --seq 2048 --device cpu --budget-gb 1

Exit 0: valid; 3: a rule or the budget refused it (one sentence on stderr); 1: the run failed.
"""
from __future__ import annotations

import argparse
import sys

from workbook.errors import WorkbookError


def validate(model: str, tp: int, batch: int, seq: int, device: str, budget_gb: float, dtype: str,
             timeout_s: float, devices_available: int | None = None) -> dict:
    from workbook.models import mistral
    from workbook.llm.launch import _devices, launch

    config = mistral.load_config(model)
    budget = int(budget_gb * 2**30)
    avail = devices_available if devices_available is not None else _devices(device)
    check = mistral.check_tp(config, tp, avail, budget, batch, seq, dtype)
    spec = {"model": model, "prompts": ["a" * max(1, seq - 2)] * batch, "max_new_tokens": 1, "dtype": dtype,
            "device": device, "tp_mechanism": "parallelize_module", "warmup": 0, "fixed_forward_len": 4}
    result = launch(spec, tp, timeout_s=timeout_s)
    result.pop("logits", None)
    peaks = [r["peak_memory_mib"] for r in result["ranks"]]
    if device == "cuda" and max(peaks) * 2**20 > budget:
        raise WorkbookError(f"peak memory {max(peaks) / 1024:.2f} GiB on a rank exceeds the budget of "
                            f"{budget_gb:g} GiB per device")
    return {"peak_mib_per_rank": peaks, "notes": check.notes, "prompt_tokens": result["prompt_tokens"][0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbook.llm.validate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--budget-gb", type=float, required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--devices-available", type=int, default=None)
    a = p.parse_args(argv)
    try:
        out = validate(a.model, a.tp, a.batch, a.seq, a.device, a.budget_gb, a.dtype, a.timeout, a.devices_available)
    except WorkbookError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3 if "not allowed" in str(e) or "budget" in str(e) else 1
    print(f"valid: tp={a.tp} batch={a.batch} seq={a.seq} peak MiB per rank {out['peak_mib_per_rank']}")
    for n in out["notes"]:
        print("note:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
