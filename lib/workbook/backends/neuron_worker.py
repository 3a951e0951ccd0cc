"""The Neuron compile worker: ``python -m workbook.backends.neuron_worker compile --dir DIR ...``,
and :func:`compile_in_worker`, which starts it.

It is a separate process because a process that touches NeuronCores keeps them until it exits, and
tracing loads the model onto a core: compiling here and exiting hands the core back, so the notebook
that asked for the compile can load the result onto its own cores, and a failed or hung neuronx-cc
can be stopped (:func:`workbook.proc.run`) without losing the notebook's state.

``DIR`` holds ``source_model.pt`` (a pickled ``torch.nn.Module``) and ``example.pt`` (a CPU batch).
The worker casts both to ``--dtype``, calls ``torch_neuronx.trace`` with the documented keyword-only
arguments, writes ``DIR/model.pt`` (``torch.jit.save``) and ``DIR/compile.json`` (trace seconds,
versions, arguments), and exits 0. Any failure ends with a one-line ``neuron_worker: ...`` summary
on stderr and a non-zero exit.
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

from workbook.errors import WorkbookError


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
        raise argparse.ArgumentTypeError(f"--compiler-args must be a JSON list of strings: {e}") \
            from None
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise argparse.ArgumentTypeError("--compiler-args must be a JSON list of strings")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workbook.backends.neuron_worker",
        description="Trace a saved model with torch_neuronx in a process of its own.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile",
                       help="trace DIR/source_model.pt on DIR/example.pt into DIR/model.pt")
    c.add_argument("--dir", required=True, type=Path, help="the artifact folder")
    c.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    c.add_argument("--compiler-args", type=_json_list, default=[],
                   help="neuronx-cc flags as a JSON list, "
                        'e.g. --compiler-args=\'["--model-type=transformer"]\'')
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
            return _fail(f"{p} is missing (compile_in_worker writes it before starting the worker)",
                         2)
    import torch

    try:
        import torch_neuronx
    except ImportError as e:
        return _fail(f"cannot import torch_neuronx in the worker ({e}); "
                     f"PYTHONPATH={os.environ.get('PYTHONPATH')!r}", 2)
    standin = bool(getattr(torch_neuronx, "STANDIN", False))
    if a.expect_standin is not None and standin != a.expect_standin:
        here = "the TEST STAND-IN" if standin else "the Neuron SDK"
        return _fail(f"torch_neuronx here is {here} ({getattr(torch_neuronx, '__file__', '?')}), "
                     "unlike the process that started this worker", 2)
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
        traced = torch_neuronx.trace(model, example, compiler_workdir=str(workdir),
                                     compiler_args=a.compiler_args,
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
            "neuronx_cc_version": cc, "torch_version": torch.__version__,
            "python": platform.python_version(), "dtype": a.dtype,
            "example_shape": list(example.shape), "compiler_args": a.compiler_args,
            "inline_weights_to_neff": a.inline_weights_to_neff, "pid": os.getpid()}
    tmp = d / "compile.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, d / "compile.json")
    print(f"neuron_worker: traced in {trace_s:.2f} s -> {d / 'model.pt'}", flush=True)
    return 0


# ------------------------------------------------------------------ the side that starts the worker
def compile_in_worker(model, example, d: Path, *, dtype: str, args: list[str], inline: bool,
                      standin: bool, timeout_s: float) -> dict:
    """Save ``model`` and ``example`` in ``d``, trace them in a worker process, return its
    compile.json (with ``worker_wall_s``); a WorkbookError saying what to do when it fails."""
    import torch

    local = sorted({type(m).__qualname__ for m in model.modules()
                    if type(m).__module__ == "__main__"})
    if local:
        raise WorkbookError(f"The model uses classes defined in __main__ ({', '.join(local)}), "
                            "e.g. in a notebook cell; the compile worker is a new process and "
                            "cannot load them. Define them in a module (a .py file on the path) "
                            "and import them from there.")
    for stale in ("model.pt", "compile.json"):
        (d / stale).unlink(missing_ok=True)
    src, ex = d / "source_model.pt", d / "example.pt"
    try:
        torch.save(model, src)
    except Exception as e:  # lambdas, hooks, open files...: not picklable
        src.unlink(missing_ok=True)
        raise WorkbookError(f"The model cannot be saved for the compile worker (torch.save failed: "
                            f"{type(e).__name__}: {e}); the worker is a new process and needs a "
                            "picklable torch.nn.Module.") from None
    torch.save(example, ex)
    try:
        return run_worker(d, dtype=dtype, args=args, inline=inline, standin=standin,
                          timeout_s=timeout_s)
    finally:
        src.unlink(missing_ok=True)
        ex.unlink(missing_ok=True)


def _command(d: Path, *, dtype: str, args: list[str], inline: bool, standin: bool) -> list[str]:
    return [sys.executable, "-m", "workbook.backends.neuron_worker", "compile", "--dir", str(d),
            "--dtype", dtype, f"--compiler-args={json.dumps(args)}",
            "--inline-weights-to-neff", "yes" if inline else "no",
            "--expect-standin", "yes" if standin else "no"]


def _env() -> dict:
    env = dict(os.environ)
    lib = str(Path(__file__).resolve().parents[2])  # the folder holding the workbook package
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if lib not in parts:
        parts.append(lib)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    # The compile takes one free core of its own, not the cores the caller holds or will hold.
    env.pop("NEURON_RT_VISIBLE_CORES", None)
    env["NEURON_RT_NUM_CORES"] = "1"
    return env


def run_worker(d: Path, *, dtype: str, args: list[str], inline: bool, standin: bool,
               timeout_s: float) -> dict:
    """Run the worker on the files in ``d`` (its process group stopped whatever ends the wait)."""
    from workbook import proc

    out_log, err_log = d / "worker-stdout.log", d / "worker-stderr.log"
    for log in (out_log, err_log):
        log.unlink(missing_ok=True)
    cmd = _command(d, dtype=dtype, args=args, inline=inline, standin=standin)
    r = proc.run(cmd, log=out_log, stderr_log=err_log, timeout_s=timeout_s, cwd=str(d), env=_env())
    tail = proc.tail_text(err_log, out_log)
    if r.timed_out:
        raise WorkbookError(
            f"The Neuron compile worker ran longer than timeout_s={timeout_s:g} s and was stopped; "
            f"nothing was cached. Last lines of its stderr ({err_log}):\n{tail}\n"
            "What to do: raise the timeout_s option (a large ViT can take tens of minutes), or "
            "compile a smaller batch.")
    if r.returncode != 0:
        hint = ("\nThe worker is a new process: the model's classes must be importable there "
                "(modules added to sys.path at run time are not; put their folder on PYTHONPATH)."
                if ("ModuleNotFoundError" in tail or "Can't get attribute" in tail) else "")
        raise WorkbookError(
            f"The Neuron compile worker failed (exit code {r.returncode}); nothing was cached. "
            f"Last lines of its stderr ({err_log}):\n{tail}{hint}\n"
            f"What to do: fix the error above and run again; the full logs are {err_log} and "
            f"{out_log}, the compiler's files are in {d / 'compiler_workdir'}. Unsupported "
            "operators can be listed with torch_neuronx.analyze(model, example).")
    info_path = d / "compile.json"
    if not (d / "model.pt").is_file() or not info_path.is_file():
        raise WorkbookError(f"The Neuron compile worker exited 0 but did not write model.pt and "
                            f"compile.json in {d}; see {err_log}.")
    info = json.loads(info_path.read_text())
    if bool(info.get("standin")) != standin:
        raise WorkbookError(f"The compile worker imported a different torch_neuronx (stand-in: "
                            f"{info.get('standin')}) than this process (stand-in: {standin}); make "
                            "both see the same one (PYTHONPATH).")
    info["worker_wall_s"] = r.seconds
    return info


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command == "compile":
        return compile_cmd(a)
    return 2  # argparse rejects other commands first


if __name__ == "__main__":
    sys.exit(main())
