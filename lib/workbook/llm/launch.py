"""Start a tensor-parallel run under torchrun from a notebook and hand back its results as a dict.

A notebook kernel cannot be a torchrun worker, so :func:`launch` writes the run's :class:`RunSpec`
to a folder and runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m
workbook.llm.decode SPEC OUT`` through :func:`workbook.proc.run`: its own process group, a
timeout, the group killed whatever ends the wait. torchrun starts each rank in a session of its
own, so the group kill reaches the ranks through torchrun (SIGTERM first) and, should torchrun die
first, through the parent-death signal each rank sets (:mod:`workbook.llm.decode`). A failed run
raises :class:`~workbook.errors.WorkbookError` with each rank's error and the tail of the log.

The spec is checked by whoever builds it (the experiment's ``configure``, or the validator's
command line); nothing here checks it again. Prompts are encoded here, so the ranks only see
token ids; each generation comes back in the response shape ``{text, prompt, model, usage}``.
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbook import proc
from workbook.errors import WorkbookError

DECODE = ["-m", "workbook.llm.decode"]  # what each rank runs
LOG_TAIL_LINES = 40
GRACE_S = 5  # torchrun's time to stop its ranks after SIGTERM


@dataclass
class RunSpec:
    """What the ranks load, shard and generate."""

    model: str  # checkpoint folder or hub id
    prompts: list[str]
    max_new_tokens: int = 16
    dtype: str = "float32"
    device: str = "cpu"  # cpu (gloo) or cuda (nccl, one GPU per rank)
    tp_mechanism: str = "parallelize_module"  # or local_shards, tp_plan (auto is decided before)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    cache: str = "dynamic"  # or static (fixed shapes, for compile / CUDA graphs)
    compile: bool = False  # torch.compile the decode step (CUDA)
    allreduce: str = "nccl"  # or symm_mem: the compiled step's one-shot all-reduce (CUDA, tp > 1)
    warmup: int = 1  # untimed generations before the timed one
    fixed_forward_len: int = 16  # tokens in the fixed forward whose logits are returned
    prompt_ids: list[list[int]] = field(default_factory=list)  # filled by launch


def launch(spec: RunSpec, nproc: int, timeout_s: float = 600, out_dir=None, relay=None) -> dict:
    """Run ``spec`` on ``nproc`` tensor-parallel ranks under torchrun; return rank 0's results.

    The result holds rank 0's measurements (``tp_mechanism`` says how the model was sharded),
    ``ranks`` (per-rank memory), ``generations`` (one ``{text, prompt, model, usage}`` per prompt)
    and ``logits``: the fixed forward's logits as a CPU float32 tensor (pop it before recording
    JSON). Files stay in ``out_dir`` when given, else in a temporary folder that is removed.
    ``relay`` gets the ranks' progress lines while they run (:mod:`workbook.follow`).
    """
    from workbook.models import mistral

    enc = mistral.encoder_for(spec.model, mistral.load_config(spec.model))
    spec.prompt_ids = mistral.prompt_ids(enc, spec.prompts)
    with tempfile.TemporaryDirectory(prefix="workbook-tp-") as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
        torchrun(DECODE, nproc, out, timeout_s, relay)
        return _collect(out, spec, enc, nproc)


def torchrun(entry: list[str], nproc: int, out: Path, timeout_s: float, relay=None) -> None:
    """Run ``entry`` (``DECODE``, or a script a test gives) on ``nproc`` ranks with the arguments
    ``out/spec.json`` and ``out``; a timeout or a failed rank raises WorkbookError."""
    log = out / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), *entry, str(out / "spec.json"), str(out)]
    res = proc.run(cmd, log=log, timeout_s=timeout_s, grace_s=GRACE_S, relay=relay)
    tail = proc.tail_text(log, n=LOG_TAIL_LINES, indent="")
    if res.timed_out:
        raise WorkbookError(f"The tensor-parallel run (nproc={nproc}) passed its {timeout_s} s "
                            f"timeout and was killed with all its ranks; last lines of its log:\n"
                            f"{tail}")
    if res.returncode != 0 or not (out / "result.json").exists():
        errors = "; ".join(f"{p.stem.replace('error_', '')}: {p.read_text()}"
                           for p in sorted(out.glob("error_rank*.txt")))
        raise WorkbookError(f"The tensor-parallel run (nproc={nproc}) failed with exit status "
                            f"{res.returncode}{' (' + errors + ')' if errors else ''}; last lines "
                            f"of its log:\n{tail}")


def _collect(out: Path, spec: RunSpec, enc, nproc: int) -> dict:
    import torch

    result = json.loads((out / "result.json").read_text())
    result["ranks"] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    result["logits"] = torch.load(out / result["fixed_forward"]["logits_file"])
    result["encoding"] = {"kind": enc.kind, "why": enc.why}
    result["generations"] = [
        {"text": enc.decode(new), "prompt": prompt, "model": spec.model,
         "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                   "total_tokens": len(ids) + len(new)}}
        for prompt, ids, new in zip(spec.prompts, spec.prompt_ids, result["generated_ids"])]
    return result


def logits_diff(a, b) -> float:
    """Max absolute difference of two logits tensors (e.g. tp ranks vs one process)."""
    return float((a.float() - b.float()).abs().max())
