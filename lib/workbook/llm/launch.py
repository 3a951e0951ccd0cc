"""Start a tensor-parallel run under torchrun from a notebook and hand back its results as a dict.

A notebook kernel cannot be a torchrun worker, so :func:`launch` writes the run's spec to a temporary folder and
runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m workbook.llm.worker SPEC OUT`` in its
own process group. A run that passes ``timeout_s`` is killed as a group (torchrun and every rank); a failed run
raises :class:`~workbook.errors.WorkbookError` with the tail of its log. Parameters are checked here, before
anything starts, so a bad value reads as one sentence instead of N ranks' tracebacks.

Prompts are encoded here (``AutoTokenizer`` or the byte fallback of :mod:`workbook.models.mistral`), so the
ranks only see token ids; each generation comes back in the response shape ``{text, prompt, model, usage}``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from workbook.errors import WorkbookError, bad_param

SPEC_DEFAULTS = {
    "model": None,  # checkpoint directory or hub id (required)
    "prompts": ["Tensor parallelism splits each layer across devices."],
    "max_new_tokens": 16,
    "dtype": "float32",
    "device": "cpu",  # cpu (gloo) or cuda (nccl, one GPU per rank)
    # auto: transformers' tp_plan, else parallelize_module (recorded); or force one. local_shards:
    # parallelize_module with plain-tensor styles and a functional all-reduce (workbook.llm.styles), the fast
    # path for a compiled decode step.
    "tp_mechanism": "auto",
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "seed": 0,
    "cache": "dynamic",  # dynamic or static (fixed shapes, for compile / CUDA graphs)
    "compile": False,  # torch.compile the decode step (CUDA only)
    # inside the compiled step: nccl, or symm_mem (inductor lowers the small all-reduces of a decode step to
    # torch's symmetric-memory one-shot all-reduce over NVLink peer access; cuda, compile and tp > 1 only)
    "allreduce": "nccl",
    "warmup": 1,  # untimed short generations before the timed one
    "fixed_forward_len": 16,  # tokens in the fixed forward whose logits are returned
    "hang_s": 0,  # test hook: the worker sleeps this long before starting
}
CHOICES = {"dtype": ("float32", "bfloat16", "float16"), "device": ("cpu", "cuda"),
           "tp_mechanism": ("auto", "tp_plan", "parallelize_module", "local_shards"), "cache": ("dynamic", "static"), "allreduce": ("nccl", "symm_mem")}
LOG_TAIL_LINES = 40


def spec_defaults() -> dict:
    """A copy of the spec's defaults (every key :func:`launch` accepts)."""
    return dict(SPEC_DEFAULTS)


def _validate(spec: dict, nproc: int) -> dict:
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise bad_param(unknown[0], spec[unknown[0]], "a spec key, one of " + ", ".join(SPEC_DEFAULTS))
    s = {**SPEC_DEFAULTS, **spec}
    if not s["model"]:
        raise bad_param("model", s["model"], "a checkpoint directory or hub id")
    for key, allowed in CHOICES.items():
        if s[key] not in allowed:
            raise bad_param(key, s[key], "one of " + ", ".join(allowed))
    if not isinstance(nproc, int) or nproc < 1:
        raise bad_param("tp_degree", nproc, "a positive integer")
    if not isinstance(s["max_new_tokens"], int) or s["max_new_tokens"] < 1:
        raise bad_param("max_new_tokens", s["max_new_tokens"], "an integer of at least 1")
    if not s["prompts"] or not all(isinstance(p, str) and p for p in s["prompts"]):
        raise bad_param("prompts", s["prompts"], "a non-empty list of non-empty strings")
    if not 0 < s["top_p"] <= 1:
        raise bad_param("top_p", s["top_p"], "a number in (0, 1]")
    if s["temperature"] <= 0:
        raise bad_param("temperature", s["temperature"], "a positive number (use do_sample=False for greedy)")
    if s["compile"] and s["cache"] != "static":
        raise bad_param("compile", s["compile"], "False unless cache='static' (a compiled step needs fixed shapes)")
    if s["allreduce"] == "symm_mem" and not (s["device"] == "cuda" and s["compile"] and nproc > 1):
        raise bad_param("allreduce", "symm_mem", "nccl unless device='cuda', compile=True and more than one rank "
                        "(the symmetric-memory all-reduce is chosen by the compiler for CUDA tensors)")
    if s["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise bad_param("device", "cuda", "cpu here: torch sees no CUDA GPU")
    return s


def _devices(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun's whole process group, then SIGKILL whatever of the group is left after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group outlives its leader while any rank is alive
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def _run(spec: dict, nproc: int, timeout_s: float, out: Path) -> None:
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    log = out / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "workbook.llm.worker", str(spec_path), str(out)]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise WorkbookError(f"The tensor-parallel run (nproc={nproc}) passed its {timeout_s} s timeout and was "
                                f"killed with all its ranks; last lines of its log:\n{_tail(log)}") from None
        except BaseException:  # KeyboardInterrupt in a notebook: leave no ranks behind
            _kill_group(proc)
            raise
    if rc != 0 or not (out / "result.json").exists():
        errors = "; ".join(f"{p.stem.replace('error_', '')}: {p.read_text()}"
                           for p in sorted(out.glob("error_rank*.txt")))
        raise WorkbookError(f"The tensor-parallel run (nproc={nproc}) failed with exit status {rc}"
                            f"{' (' + errors + ')' if errors else ''}; last lines of its log:\n{_tail(log)}")


def launch(spec: dict, nproc: int, timeout_s: float = 600, out_dir=None) -> dict:
    """Run ``spec`` on ``nproc`` tensor-parallel ranks under torchrun; return rank 0's results.

    ``spec`` takes the keys of :func:`spec_defaults`. The result holds rank 0's measurements (``tp_mechanism``
    and ``fallbacks`` say how the model was sharded), ``ranks`` (per-rank memory), ``generations`` (one
    ``{text, prompt, model, usage}`` per prompt), ``notes`` (from :func:`~workbook.models.mistral.check_tp`)
    and ``logits``: the fixed forward's logits as a CPU float32 tensor (pop it before recording JSON).
    Files stay in ``out_dir`` when given, else in a temporary folder that is removed.
    """
    from workbook.models import mistral

    s = _validate(spec, nproc)
    config = mistral.load_config(s["model"])
    check = mistral.check_tp(config, nproc, _devices(s["device"]), None, len(s["prompts"]), 1, s["dtype"])
    if s["tp_mechanism"] == "tp_plan" and check.kv_replicated:
        raise bad_param("tp_mechanism", "tp_plan",
                        f"auto or parallelize_module at tp_degree={nproc}: transformers' tp_plan splits KV heads "
                        f"and cannot replicate the model's {config.num_key_value_heads} KV heads over {nproc} ranks")
    enc = mistral.encoder_for(s["model"], config)
    s["prompt_ids"] = mistral.prompt_ids(enc, s["prompts"])
    with tempfile.TemporaryDirectory(prefix="workbook-tp-") as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        _run(s, nproc, timeout_s, out)
        return _collect(out, s, enc, check, nproc)


def _collect(out: Path, s: dict, enc, check, nproc: int) -> dict:
    import torch

    result = json.loads((out / "result.json").read_text())
    result["ranks"] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    result["logits"] = torch.load(out / result["fixed_forward"]["logits_file"])
    result["encoding"] = {"kind": enc.kind, "why": enc.why}
    result["notes"] = [n for n in check.notes if not n.startswith("device memory unknown")]
    result["generations"] = [
        {"text": enc.decode(new), "prompt": prompt, "model": s["model"],
         "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)}}
        for prompt, ids, new in zip(s["prompts"], s["prompt_ids"], result["generated_ids"])]
    return result


def logits_diff(a, b) -> float:
    """Max absolute difference of two logits tensors (e.g. tp ranks vs one process)."""
    return float((a.float() - b.float()).abs().max())
