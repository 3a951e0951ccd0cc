"""One export-search try through NxD Inference: compile in one process, load and generate in another.

The two steps of :class:`workbook.llm.attempts.NxdiValidator`, each its own process so that a
compile that hangs or crashes takes only its step down, and so that the load proves the compiled
folder stands on its own (as it will on the machine that serves it):

    python -m workbook.llm.nxdi_try compile --model DIR --tp 2 --batch 4 --seq 2048 \\
        --dtype bfloat16 --compiled WORKDIR/compiled
    python -m workbook.llm.nxdi_try load    (the same arguments)

``compile`` builds ``NeuronConfig(tp_degree, batch_size, seq_len, torch_dtype)`` and
``MistralInferenceConfig`` from the model folder and calls ``NeuronMistralForCausalLM.compile``.
``load`` builds the same model, ``load``s the compiled folder onto ``tp`` NeuronCores (those
``NEURON_RT_VISIBLE_CORES`` names, where a scheduler set it) and generates one token for ``batch``
prompts of ``seq - 1`` tokens, so the KV cache holds all ``seq`` positions. Exit 0: this step
worked; 1: it failed (the reason on stderr).
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

from workbook.errors import WorkbookError
from workbook.llm.neuron_paths import nxdi_model

DTYPES = ("float32", "float16", "bfloat16")


def compile_step(a) -> str:
    _, model = nxdi_model(a.model, a.tp, a.batch, a.seq, a.dtype)
    t0 = time.perf_counter()
    model.compile(a.compiled)
    return f"compiled tp={a.tp} batch={a.batch} seq={a.seq} in {time.perf_counter() - t0:.1f} s"


def load_step(a) -> str:
    import torch

    sdk, model = nxdi_model(a.model, a.tp, a.batch, a.seq, a.dtype)
    t0 = time.perf_counter()
    model.load(a.compiled)
    load_s = time.perf_counter() - t0
    ids = torch.full((a.batch, max(1, a.seq - 1)), 3, dtype=torch.long)
    t0 = time.perf_counter()
    out = sdk["HuggingFaceGenerationAdapter"](model).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
    if tuple(out.shape) != (a.batch, ids.shape[1] + 1):
        raise WorkbookError(f"generate returned shape {tuple(out.shape)}, expected "
                            f"{(a.batch, ids.shape[1] + 1)}")
    return (f"loaded in {load_s:.1f} s; one token for {a.batch} prompts of {ids.shape[1]} tokens "
            f"in {time.perf_counter() - t0:.2f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbook.llm.nxdi_try",
                                description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("compile", "load"))
    p.add_argument("--model", required=True)
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--compiled", required=True)
    a = p.parse_args(argv)
    try:
        print(compile_step(a) if a.step == "compile" else load_step(a), flush=True)
    except Exception as e:  # noqa: BLE001 - the try's outcome is this exit code and its log
        traceback.print_exc()
        print(f"{a.step} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
