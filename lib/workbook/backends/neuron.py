"""The Neuron backend: trace a model once with ``torch_neuronx``, keep the traced ``.pt``, load it on NeuronCores.

Why it is built this way (facts from the AWS Neuron docs, summarised in REFERENCE.md §3):

- **Trace once, keep the .pt.** ``torch_neuronx.trace`` compiles the model with neuronx-cc into a
  TorchScript module holding one ``neuron::Model`` op, which takes and returns CPU tensors. Traced models
  are *not* stored in the Neuron persistent compile cache (their weights are frozen into constants), so
  without keeping the ``.pt`` every run would compile again — minutes for a ViT. The ``.pt`` lives in the
  artifact cache folder (:mod:`workbook.artifacts`) and is loaded with ``torch.jit.load`` (after
  ``import torch_neuronx``, which registers the op) on every later run with the same key.
- **Compile in a separate process.** By default a process reserves every NeuronCore it touches and keeps
  them until it exits; tracing loads the model onto a core. The trace runs in a short-lived worker
  (:mod:`workbook.backends.neuron_worker`) so that the compile's cores are free again when it ends, and
  a notebook that compiles several configurations does not starve its own later loads. The worker is
  told to take a single free core (``NEURON_RT_NUM_CORES=1``) rather than the notebook's cores.
- **Pin the cores before the first load.** ``NEURON_RT_VISIBLE_CORES`` is read once, when the runtime
  starts in a process (at the first model load); ``prepare`` sets it to ``0`` or ``0-(cores-1)`` unless the
  user already set it. With ``cores > 1`` the model is traced for the per-core batch
  (``batch / cores``) and wrapped in ``torch_neuronx.DataParallel``, which splits the batch over
  ``nc:0 .. nc:cores-1`` (ids relative to the visible cores).
- **Per-core memory from sysfs.** The "model code / constants / DMA rings / runtime" breakdown per
  NeuronCore is read from ``/sys/devices/virtual/neuron_device/neuron<D>/neuron_core<C>/stats/
  memory_usage/device_mem/<category>/{total,peak}`` — no tool needs to be running. Values are read as
  bytes and reported in MB of 2**20 bytes; a file that is missing is left out, never estimated.

``WORKBOOK_NEURON_SYSFS`` points the sysfs reads elsewhere (the tests build a fake tree). The tests also
put a clearly-labelled stand-in ``torch_neuronx`` (``tests/standins``) on the path; when it is the module
in use, ``Prepared.backend`` is ``"neuron-standin"`` and the first note says these are CPU numbers.
This module imports without the Neuron SDK: ``torch_neuronx`` is only imported inside methods.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workbook.backends.base import Backend, Prepared
from workbook.paths import shown
from workbook.errors import WorkbookError, bad_param


INSTALL_HINT = ("the Neuron SDK is not installed: on a Trainium/Inferentia instance install torch-neuronx and "
                "neuronx-cc from AWS's Neuron pip repository (see README)")
NO_CORES = "no NeuronCores visible (no /dev/neuron* devices / sysfs neuron_device entries)"
STANDIN_NOTE = "torch_neuronx is the TEST STAND-IN: these are CPU numbers, not Neuron figures"

DEFAULT_COMPILER_ARGS = ("--model-type=transformer",)
AUTO_CAST = ("none", "matmult", "all")
AUTO_CAST_TYPES = ("bf16", "fp16", "tf32", "fp8_e4m3")
OPTION_KEYS = ("compiler_args", "auto_cast", "auto_cast_type", "inline_weights_to_neff", "timeout_s")
DEFAULT_TIMEOUT_S = 3600
STDERR_TAIL_LINES = 20

# NEURON_RT_VISIBLE_CORES as it was when this process first loaded a model (the runtime reads it once).
_RUNTIME_CORES: str | None = None


from workbook.backends.neuron_sysfs import (  # noqa: F401 - re-exported for callers and tests
    DEFAULT_SYSFS, MB, SYSFS_ENV, VISIBLE_ENV, discover_cores, parse_visible_cores, read_core_memory, sysfs_root,
)

# --------------------------------------------------------------------------------------------- the SDK
def import_sdk():
    """``(torch_neuronx module, "")`` or ``(None, why not)``; the PyPI placeholder counts as not installed."""
    try:
        mod = importlib.import_module("torch_neuronx")
    except ImportError as e:
        if "WRONG PACKAGE" in str(e):
            return None, (f"{INSTALL_HINT}; the torch-neuronx found is the PyPI placeholder, which raises "
                          "'WRONG PACKAGE' (pip uninstall torch-neuronx first)")
        return None, f"{INSTALL_HINT} (import torch_neuronx: {e})"
    except Exception as e:  # a broken install: say what broke
        return None, f"import torch_neuronx failed ({type(e).__name__}: {e}); {INSTALL_HINT}"
    if not callable(getattr(mod, "trace", None)):
        return None, f"{INSTALL_HINT}; the torch_neuronx found ({getattr(mod, '__file__', '?')}) has no trace()"
    return mod, ""


def is_standin(mod) -> bool:
    return bool(getattr(mod, "STANDIN", False))


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _range_text(n: int) -> str:
    return "0" if n == 1 else f"0-{n - 1}"


class NeuronBackend(Backend):
    """Trace with torch_neuronx (mode ``trace``); ``cores`` = NeuronCores used through DataParallel.

    ``float32``: fp32 model and inputs (neuronx-cc may still cast matmuls, per ``auto_cast``);
    ``bfloat16``: model and inputs cast to bf16 before tracing.
    """

    name = "neuron"
    modes = ("trace",)
    dtypes = ("float32", "bfloat16")
    unit = "NeuronCores"
    clock = "cpu"  # a traced model's call returns CPU tensors when the NeuronCore is done

    def __init__(self) -> None:
        self._compiler_args: list[str] | None = None

    # ---- discovery
    def available(self) -> tuple[bool, str]:
        mod, why = import_sdk()
        if mod is None:
            return False, why
        found = discover_cores()
        if not found:
            return False, NO_CORES
        try:
            n = self.core_count()
        except WorkbookError as e:
            return False, str(e)
        what = ("the TEST STAND-IN torch_neuronx" if is_standin(mod)
                else f"torch-neuronx {getattr(mod, '__version__', '(version unknown)')}")
        vis = os.environ.get(VISIBLE_ENV)
        return True, (f"{what} and {len(found)} NeuronCores in sysfs" +
                      (f", {n} visible ({VISIBLE_ENV}={vis})" if vis is not None else ""))

    def core_count(self) -> int:
        vis = os.environ.get(VISIBLE_ENV)
        if vis is not None and vis.strip():
            return len(parse_visible_cores(vis))
        return len(discover_cores())

    def compiler_args(self, options: dict | None) -> list[str]:
        """The neuronx-cc flags ``prepare`` passes for these options (also for cache keys and reports)."""
        opts = self._options(options)
        return opts["compiler_args_final"]

    def describe(self) -> dict:
        mod, why = import_sdk()
        found = discover_cores()
        devices = sorted({d for d, _ in found})
        try:
            n = self.core_count() if mod is not None else 0
        except WorkbookError as e:
            n, why = 0, str(e)
        standin = bool(mod is not None and is_standin(mod))
        return {
            "backend": "neuron-standin" if standin else "neuron",
            "available": mod is not None and bool(found) and n > 0,
            "reason": why or (None if found else NO_CORES),
            "sdk_version": getattr(mod, "__version__", None) if mod is not None else None,
            "neuronx_cc_version": _dist_version("neuronx-cc"),
            "standin": standin,
            "cores": n,
            "cores_in_sysfs": len(found),
            "devices": len(devices),
            "sysfs_root": str(sysfs_root()),
            VISIBLE_ENV: os.environ.get(VISIBLE_ENV),
            "compiler_args": self._compiler_args if self._compiler_args is not None else self.compiler_args({}),
        }

    def check(self, *, mode: str, dtype: str, cores: int) -> None:
        if _RUNTIME_CORES is not None and isinstance(cores, int) and not isinstance(cores, bool):
            held = len(parse_visible_cores(_RUNTIME_CORES))
            if cores > held:
                raise bad_param("cores", cores, f"at most {held}: this process already started the Neuron runtime "
                                f"with {VISIBLE_ENV}={_RUNTIME_CORES}, which it reads once, and a process keeps its "
                                "NeuronCores until it exits; prepare the largest core count first, or restart the "
                                "kernel")
        super().check(mode=mode, dtype=dtype, cores=cores)

    # ---- options
    def _options(self, options: dict | None) -> dict:
        options = dict(options or {})
        for k in options:
            if k not in OPTION_KEYS:
                raise bad_param("options", k, "keys among " + ", ".join(OPTION_KEYS) + " for the neuron backend")
        args = options.get("compiler_args", list(DEFAULT_COMPILER_ARGS))
        if isinstance(args, tuple):
            args = list(args)
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise bad_param("compiler_args", args, "a list of neuronx-cc flags (strings)")
        auto_cast = options.get("auto_cast", "matmult")
        if auto_cast not in AUTO_CAST:
            raise bad_param("auto_cast", auto_cast, "one of " + ", ".join(AUTO_CAST))
        cast_type = options.get("auto_cast_type", "bf16")
        if cast_type not in AUTO_CAST_TYPES:
            raise bad_param("auto_cast_type", cast_type, "one of " + ", ".join(AUTO_CAST_TYPES))
        inline = options.get("inline_weights_to_neff", True)
        if not isinstance(inline, bool):
            raise bad_param("inline_weights_to_neff", inline, "True or False")
        timeout = options.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise bad_param("timeout_s", timeout, "a positive number of seconds")
        if any(a.startswith("--auto-cast") for a in args):
            if "auto_cast" in options or "auto_cast_type" in options:
                raise bad_param("compiler_args", args, "flags without --auto-cast/--auto-cast-type when the "
                                "auto_cast option is given (set it in one place)")
            final = list(args)
        elif auto_cast == "none":
            final = [*args, "--auto-cast=none"]
        else:
            final = [*args, f"--auto-cast={auto_cast}", f"--auto-cast-type={cast_type}"]
        return {"compiler_args_final": final, "inline": inline, "timeout_s": float(timeout)}

    # ---- prepare
    def prepare(self, model, example, *, mode, dtype, cores, options, cache) -> Prepared:
        global _RUNTIME_CORES
        import torch

        mod, why = import_sdk()
        if mod is None:
            from workbook.backends.base import BackendUnavailable

            raise BackendUnavailable(f"the neuron backend cannot run here: {why}.")
        self.check(mode=mode, dtype=dtype, cores=cores)
        opts = self._options(options)
        args = opts["compiler_args_final"]
        self._compiler_args = args
        if not isinstance(model, torch.nn.Module):
            raise bad_param("model", type(model).__name__, "a torch.nn.Module (it is saved for the compile worker)")
        if not isinstance(example, torch.Tensor) or example.dim() < 1:
            raise bad_param("example", type(example).__name__, "a CPU float32 batch (a tensor with a batch dim)")
        batch = int(example.shape[0])
        if batch % cores:
            raise bad_param("cores", cores, f"a divisor of the batch size {batch}: with cores > 1 the model is "
                            "traced for batch/cores images and DataParallel gives each NeuronCore that many")
        if cores > 1 and not opts["inline"]:
            raise bad_param("inline_weights_to_neff", False, "True when cores > 1 (DataParallel is documented for "
                            "traced models with their weights in the NEFF)")
        standin = is_standin(mod)
        notes: list[str] = [STANDIN_NOTE] if standin else []
        traced_example = example.detach().to("cpu")[: batch // cores].contiguous()
        want = {"compiler_args": args, "dtype": dtype, "traced_shape": list(traced_example.shape),
                "inline_weights_to_neff": opts["inline"], "standin": standin,
                "torch_neuronx_version": getattr(mod, "__version__", None)}

        if cache is not None:
            d = Path(cache.dir)
        else:
            d = Path(tempfile.mkdtemp(prefix="workbook-neuron-"))
            notes.append(f"no artifact cache given: traced into {shown(d)}, which later runs will not look in")
        model_pt = d / "model.pt"
        hit = cache is not None and cache.exists() and model_pt.is_file()
        if hit:
            meta = cache.meta()
            differs = [k for k, v in want.items() if meta.get(k) != v]
            if differs:
                hit = False
                notes.append(f"the cached artifact in {shown(d)} was made with other {', '.join(differs)} "
                             f"({', '.join(f'{k}={meta.get(k)!r}' for k in differs)}): traced again")
            else:
                notes.append(f"loaded the traced model cached in {shown(d)} (traced in {meta.get('compile_s') or 0:.1f} s "
                             "when it was made; not traced in this run)")
        compile_s = None
        if not hit:
            info = self._compile(model, traced_example, d, dtype=dtype, args=args, inline=opts["inline"],
                                 standin=standin, timeout_s=opts["timeout_s"])
            compile_s = info["trace_s"]
            notes.append(f"traced in a worker process in {compile_s:.1f} s for batch {traced_example.shape[0]}"
                         f" (worker wall time {info['worker_wall_s']:.1f} s); compiler args: {' '.join(args)}")
            if cache is not None:
                cache.commit(compile_s=compile_s, worker_wall_s=info["worker_wall_s"], **want,
                             neuronx_cc_version=info.get("neuronx_cc_version"), torch_version=info.get("torch_version"))

        wanted_vis = _range_text(cores)
        current = os.environ.get(VISIBLE_ENV)
        if current is None or not current.strip():
            os.environ[VISIBLE_ENV] = wanted_vis
        elif current != wanted_vis:
            notes.append(f"{VISIBLE_ENV} was already {current} (this run would have set {wanted_vis})"
                         + ("; DataParallel ids nc:0.. are relative to it" if cores > 1 else ""))
        if _RUNTIME_CORES is not None and os.environ[VISIBLE_ENV] != _RUNTIME_CORES:
            notes.append(f"the Neuron runtime of this process started with {VISIBLE_ENV}={_RUNTIME_CORES}; "
                         f"the later value {os.environ[VISIBLE_ENV]} has no effect until a new process")

        t0 = time.perf_counter()
        loaded = torch.jit.load(str(model_pt))
        load_s = time.perf_counter() - t0
        if _RUNTIME_CORES is None:
            _RUNTIME_CORES = os.environ[VISIBLE_ENV]
        fn = loaded
        if not opts["inline"]:
            mod.move_trace_to_device(loaded, 0)
            notes.append("weights kept out of the NEFF (inline_weights_to_neff=False): moved to NeuronCore 0 "
                         "with move_trace_to_device after loading")
        if cores > 1:
            t1 = time.perf_counter()
            fn = mod.DataParallel(loaded, device_ids=[f"nc:{i}" for i in range(cores)], dim=0,
                                  set_dynamic_batching=True)
            notes.append(f"DataParallel over nc:0..nc:{cores - 1} (batch {batch} split into {cores} x "
                         f"{batch // cores}); wrapping took {time.perf_counter() - t1:.3f} s after the load")
        return Prepared(fn=fn, backend="neuron-standin" if standin else "neuron", mode="trace", dtype=dtype,
                        batch=batch, cores=cores, compile_s=compile_s, load_s=load_s,
                        cache=("hit" if hit else "miss") if cache is not None else "none", artifact=str(model_pt),
                        notes=notes)

    def _compile(self, model, example, d: Path, *, dtype: str, args: list[str], inline: bool, standin: bool,
                 timeout_s: float) -> dict:
        """Save the model and example, run the worker in its own process, and return its compile.json."""
        import torch

        local = sorted({type(m).__qualname__ for m in model.modules() if type(m).__module__ == "__main__"})
        if local:
            raise WorkbookError(f"The model uses classes defined in __main__ ({', '.join(local)}), e.g. in a notebook "
                                "cell; the compile worker is a new process and cannot load them. Define them in a "
                                "module (a .py file on the path) and import them from there.")
        for stale in ("model.pt", "compile.json"):
            (d / stale).unlink(missing_ok=True)
        src = d / "source_model.pt"
        ex = d / "example.pt"
        try:
            torch.save(model, src)
        except Exception as e:  # lambdas, hooks, open files...: not picklable
            src.unlink(missing_ok=True)
            raise WorkbookError(f"The model cannot be saved for the compile worker (torch.save failed: "
                                f"{type(e).__name__}: {e}); the worker is a new process and needs a picklable "
                                "torch.nn.Module.") from None
        torch.save(example, ex)
        try:
            return self._run_worker(d, dtype=dtype, args=args, inline=inline, standin=standin, timeout_s=timeout_s)
        finally:
            src.unlink(missing_ok=True)
            ex.unlink(missing_ok=True)

    def _worker_command(self, d: Path, *, dtype: str, args: list[str], inline: bool, standin: bool) -> list[str]:
        return [sys.executable, "-m", "workbook.backends.neuron_worker", "compile", "--dir", str(d),
                "--dtype", dtype, f"--compiler-args={json.dumps(args)}",
                "--inline-weights-to-neff", "yes" if inline else "no", "--expect-standin", "yes" if standin else "no"]

    @staticmethod
    def _worker_env() -> dict:
        env = dict(os.environ)
        lib = str(Path(__file__).resolve().parents[2])  # the folder holding the workbook package
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if lib not in parts:
            parts.append(lib)
        env["PYTHONPATH"] = os.pathsep.join(parts)
        # The compile takes one free core of its own, not the cores this process holds or will hold.
        env.pop(VISIBLE_ENV, None)
        env["NEURON_RT_NUM_CORES"] = "1"
        return env

    def _run_worker(self, d: Path, *, dtype: str, args: list[str], inline: bool, standin: bool,
                    timeout_s: float) -> dict:
        cmd = self._worker_command(d, dtype=dtype, args=args, inline=inline, standin=standin)
        out_log, err_log = d / "worker-stdout.log", d / "worker-stderr.log"
        posix = os.name == "posix"
        t0 = time.perf_counter()
        with open(out_log, "wb") as out, open(err_log, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self._worker_env(), cwd=str(d),
                                    start_new_session=posix)
            try:
                rc = proc.wait(timeout=timeout_s)
            except BaseException as e:  # timeout, or the user interrupting the notebook: stop the whole compile
                _kill_group(proc, posix)
                if isinstance(e, subprocess.TimeoutExpired):
                    raise WorkbookError(
                        f"The Neuron compile worker ran longer than timeout_s={timeout_s:g} s and was stopped; "
                        f"nothing was cached. Last lines of its stderr ({err_log}):\n{_tail(err_log, out_log)}\n"
                        "What to do: raise the timeout_s option (a large ViT can take tens of minutes), or "
                        "compile a smaller batch.") from None
                raise
        wall = time.perf_counter() - t0
        if rc != 0:
            tail = _tail(err_log, out_log)
            hint = ("\nThe worker is a new process: the model's classes must be importable there (modules added "
                    "to sys.path at run time are not; put their folder on PYTHONPATH)."
                    if ("ModuleNotFoundError" in tail or "Can't get attribute" in tail) else "")
            raise WorkbookError(
                f"The Neuron compile worker failed (exit code {rc}); nothing was cached. Last lines of its "
                f"stderr ({err_log}):\n{tail}{hint}\n"
                f"What to do: fix the error above and run again; the full logs are {err_log} and {out_log}, "
                f"the compiler's files are in {d / 'compiler_workdir'}. Unsupported operators can be listed with "
                "torch_neuronx.analyze(model, example).")
        info_path = d / "compile.json"
        if not (d / "model.pt").is_file() or not info_path.is_file():
            raise WorkbookError(f"The Neuron compile worker exited 0 but did not write model.pt and compile.json "
                                f"in {d}; see {err_log}.")
        info = json.loads(info_path.read_text())
        if bool(info.get("standin")) != standin:
            raise WorkbookError(f"The compile worker imported a different torch_neuronx (stand-in: "
                                f"{info.get('standin')}) than this process (stand-in: {standin}); make both see the "
                                "same one (PYTHONPATH).")
        info["worker_wall_s"] = wall
        return info

    # ---- running
    def to_input(self, x, dtype):
        """Traced Neuron models take CPU tensors: the batch stays on the CPU, cast to ``dtype``."""
        return x.detach().to("cpu", _torch_dtype(dtype))

    def memory(self) -> dict:
        """Per-NeuronCore device memory (MB = 2**20 bytes) from sysfs for the cores this process may use.
        The peaks are the driver's, not reset per run."""
        root = sysfs_root()
        found = discover_cores(root)
        vis = os.environ.get(VISIBLE_ENV)
        indices = parse_visible_cores(vis) if vis and vis.strip() else list(range(len(found)))
        cores = [read_core_memory(root, *found[i]) for i in indices if i < len(found)]
        out: dict = {"neuron_cores": cores}
        missing = [i for i in indices if i >= len(found)]
        if missing:
            out["cores_not_in_sysfs"] = missing
        return out


def _kill_group(proc: subprocess.Popen, posix: bool) -> None:
    """Stop the worker and the compiler processes it started (its own process group)."""
    try:
        if posix:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(err_log: Path, out_log: Path, n: int = STDERR_TAIL_LINES) -> str:
    for p in (err_log, out_log):
        try:
            lines = p.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            continue
        if lines:
            return "\n".join("    " + line for line in lines[-n:])
    return "    (no output)"
