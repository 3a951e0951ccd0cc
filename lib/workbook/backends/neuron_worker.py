"""The Neuron compile worker: ``python -m workbook.backends.neuron_worker compile --dir DIR ...``.

It is a separate process because a process that touches NeuronCores keeps them until it exits (the Neuron
runtime reserves cores per process), and tracing loads the model onto a core: compiling here and exiting
hands the core back, so the notebook that asked for the compile can load the result onto its own cores,
and a failed or hung neuronx-cc can be stopped without losing the notebook's state.

``DIR`` holds ``source_model.pt`` (a pickled ``torch.nn.Module``) and ``example.pt`` (a CPU batch), both
written by :class:`workbook.backends.neuron.NeuronBackend`. The worker casts both to ``--dtype``, calls
``torch_neuronx.trace`` with the documented keyword-only arguments, writes ``DIR/model.pt`` with
``torch.jit.save`` and ``DIR/compile.json`` (trace seconds, versions, arguments), and exits 0. Any
failure ends with a one-line ``neuron_worker: ...`` summary on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path


def _yes(s: str) -> bool:
    if s.lower() in ("yes", "true", "1"):
        return True
    if s.lower() in ("no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {s!r}")


def _json_list(s: str) -> list[str]:
    try:
        v = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--compiler-args must be a JSON list of strings: {e}") from None
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise argparse.ArgumentTypeError("--compiler-args must be a JSON list of strings")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbook.backends.neuron_worker",
                                description="Trace a saved model with torch_neuronx in a process of its own.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="trace DIR/source_model.pt on DIR/example.pt into DIR/model.pt")
    c.add_argument("--dir", required=True, type=Path, help="the artifact folder")
    c.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    c.add_argument("--compiler-args", type=_json_list, default=[],
                   help='neuronx-cc flags as a JSON list, e.g. --compiler-args=\'["--model-type=transformer"]\'')
    c.add_argument("--inline-weights-to-neff", type=_yes, default=True, metavar="yes|no")
    c.add_argument("--expect-standin", type=_yes, default=None, metavar="yes|no",
                   help="fail unless torch_neuronx is (yes) / is not (no) the test stand-in")
    return p


def _fail(msg: str, code: int) -> int:
    print(f"neuron_worker: {msg}", file=sys.stderr, flush=True)
    return code


def compile_cmd(a: argparse.Namespace) -> int:
    d: Path = a.dir
    src, ex = d / "source_model.pt", d / "example.pt"
    for p in (src, ex):
        if not p.is_file():
            return _fail(f"{p} is missing (the backend writes it before starting the worker)", 2)
    import torch

    try:
        import torch_neuronx
    except ImportError as e:
        return _fail(f"cannot import torch_neuronx in the worker ({e}); PYTHONPATH={os.environ.get('PYTHONPATH')!r}", 2)
    standin = bool(getattr(torch_neuronx, "STANDIN", False))
    if a.expect_standin is not None and standin != a.expect_standin:
        return _fail(f"torch_neuronx here is {'the TEST STAND-IN' if standin else 'the Neuron SDK'} "
                     f"({getattr(torch_neuronx, '__file__', '?')}), unlike the process that started this worker", 2)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    try:
        model = torch.load(src, map_location="cpu", weights_only=False)
        example = torch.load(ex, map_location="cpu", weights_only=False)
        model = model.to("cpu", dtype).eval()
        if example.is_floating_point():
            example = example.to(dtype)
        workdir = d / "compiler_workdir"
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        traced = torch_neuronx.trace(model, example, compiler_workdir=str(workdir), compiler_args=a.compiler_args,
                                     inline_weights_to_neff=a.inline_weights_to_neff)
        trace_s = time.perf_counter() - t0
        tmp = d / "model.pt.tmp"
        torch.jit.save(traced, str(tmp))
        os.replace(tmp, d / "model.pt")
    except Exception as e:
        traceback.print_exc()
        return _fail(f"trace failed: {type(e).__name__}: {e}", 1)
    try:
        from importlib import metadata

        cc = metadata.version("neuronx-cc")
    except Exception:
        cc = None
    info = {"trace_s": trace_s, "standin": standin,
            "torch_neuronx_version": getattr(torch_neuronx, "__version__", None),
            "neuronx_cc_version": cc, "torch_version": torch.__version__, "python": platform.python_version(),
            "dtype": a.dtype, "example_shape": list(example.shape), "compiler_args": a.compiler_args,
            "inline_weights_to_neff": a.inline_weights_to_neff, "pid": os.getpid()}
    tmp = d / "compile.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, d / "compile.json")
    print(f"neuron_worker: traced in {trace_s:.2f} s -> {d / 'model.pt'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command == "compile":
        return compile_cmd(a)
    return 2  # argparse rejects other commands first


if __name__ == "__main__":
    sys.exit(main())
