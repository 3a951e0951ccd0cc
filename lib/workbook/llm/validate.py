"""One export-search attempt on CUDA or CPU: a tensor-parallel load and a forward at (batch, seq).

:mod:`workbook.llm.search` runs every attempt as a separate process and reads only its exit status
and log. On Neuron an attempt is ``optimum-cli export`` then a load; on GPUs and CPUs this command
is the equivalent: check the tensor-parallel rules and the per-device memory budget (weights + KV
cache per rank, estimated before anything loads, :func:`workbook.llm.shard.check`), then load
through the same torchrun path as ``mistral_tp`` and run a prefill of ``seq - 1`` tokens for
``batch`` sequences plus one decode step, so the KV cache holds ``seq`` positions. On CUDA the
measured peak per rank must also stay within the budget (on the CPU the process RSS includes the
interpreter and libraries, so only the estimate is checked there).

    python -m workbook.llm.validate --model DIR --tp 2 --batch 4 --seq 2048 --device cpu \\
        --budget-gb 1

``--budget-gb`` is in GB (10**9 bytes). Exit 0: valid; 3: a rule or the budget refused it (one
sentence on stderr); 1: the run failed.
"""
from __future__ import annotations

import argparse
import sys

from workbook.errors import ParameterError, WorkbookError

DTYPES = ("float32", "float16", "bfloat16")
MECHANISM = "parallelize_module"


def check(model: str, tp: int, batch: int, seq: int, device: str, budget_gb: float, dtype: str,
          devices_available: int | None = None):
    """The model's config and the rank layout, or a ParameterError: this command's own checks."""
    from workbook import targets
    from workbook.errors import bad_param
    from workbook.llm import shard
    from workbook.models import mistral

    for name, v in (("tp", tp), ("batch", batch), ("seq", seq)):
        if v < 1:
            raise bad_param(name, v, "a positive integer")
    if budget_gb <= 0:
        raise bad_param("budget_gb", budget_gb, "a positive number of GB per device")
    target = targets.resolve(device, param="device", choices=("cpu", "cuda"))
    config = mistral.load_config(model)
    devices = devices_available if devices_available is not None else target.devices
    layout = shard.check(config, tp, mechanism=MECHANISM, devices=devices, devices_are=target.unit,
                         bytes_per_device=int(budget_gb * 1e9), batch=batch, seq=seq,
                         dtype=dtype, shared_cores=target.name == "cpu")
    return config, layout


def validate(model: str, tp: int, batch: int, seq: int, device: str, budget_gb: float,
             dtype: str, timeout_s: float, devices_available: int | None = None) -> dict:
    from workbook.llm.launch import RunSpec, launch

    _, layout = check(model, tp, batch, seq, device, budget_gb, dtype, devices_available)
    spec = RunSpec(model=model, prompts=["a" * max(1, seq - 2)] * batch, max_new_tokens=1,
                   dtype=dtype, device=device, tp_mechanism=MECHANISM, warmup=0,
                   fixed_forward_len=4)
    result = launch(spec, tp, timeout_s=timeout_s)
    result.pop("logits", None)
    peaks = [r["peak_memory_mib"] for r in result["ranks"]]
    if device == "cuda" and max(peaks) * 2**20 > budget_gb * 1e9:
        raise WorkbookError(f"peak memory {max(peaks) * 2**20 / 1e9:.2f} GB on a rank exceeds the "
                            f"budget of {budget_gb:g} GB per device")
    return {"peak_mib_per_rank": peaks, "notes": layout.notes,
            "prompt_tokens": result["prompt_tokens"][0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbook.llm.validate",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--budget-gb", type=float, required=True)
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--devices-available", type=int, default=None)
    a = p.parse_args(argv)
    try:
        out = validate(a.model, a.tp, a.batch, a.seq, a.device, a.budget_gb, a.dtype, a.timeout,
                       a.devices_available)
    except WorkbookError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3 if isinstance(e, ParameterError) or "budget" in str(e) else 1
    print(f"valid: tp={a.tp} batch={a.batch} seq={a.seq} peak MiB per rank "
          f"{out['peak_mib_per_rank']}")
    for n in out["notes"]:
        print("note:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
