"""The Neuron backend: trace a model once with ``torch_neuronx``, keep the traced ``.pt``, load it
on NeuronCores.

- **Trace once, keep the .pt.** A traced model holds its weights as constants, so the Neuron
  persistent compile cache does not keep it: without the ``.pt`` in the artifact cache
  (:mod:`workbook.artifacts`) every run would compile again, which takes minutes for a ViT.
- **Compile in a separate process** (:mod:`workbook.backends.neuron_worker`). A process keeps every
  NeuronCore it touches until it exits, and tracing loads the model onto a core; a worker that
  takes one free core of its own and exits leaves the notebook's cores free for its own loads.
- **Pin the cores before the first load.** The runtime reads ``NEURON_RT_VISIBLE_CORES`` once per
  process, so ``prepare`` sets it before the first load; with ``cores > 1`` the model is traced for
  ``batch / cores`` images and wrapped in ``torch_neuronx.DataParallel``.
- **Per-core memory from sysfs** (:mod:`workbook.backends.neuron_sysfs`): no tool has to be running,
  and a figure that is not there is left out rather than estimated.

The tests put a labelled stand-in ``torch_neuronx`` (``tests/standins``) on the path; with it,
``Prepared.backend`` is ``"neuron-standin"`` and the first note says these are CPU numbers. This
module imports without the Neuron SDK: ``torch_neuronx`` is only imported inside functions.
"""
from __future__ import annotations

import importlib
import os
import tempfile
import time
from pathlib import Path

from workbook.backends import neuron_compile, neuron_family, neuron_worker
from workbook.backends.base import Backend, BackendUnavailable, Prepared
from workbook.backends.neuron_sysfs import (  # noqa: F401 - re-exported for callers and tests
    DEFAULT_SYSFS, MB, SYSFS_ENV, VISIBLE_ENV, discover_cores, parse_visible_cores,
    read_core_memory, sysfs_root, visible_cores,
)
from workbook.errors import WorkbookError, bad_param
from workbook.paths import shown

INSTALL_HINT = ("the Neuron SDK is not installed: on a Trainium/Inferentia instance install "
                "torch-neuronx and neuronx-cc from AWS's Neuron pip repository (see README)")
NO_CORES = "no NeuronCores visible (no /dev/neuron* devices / sysfs neuron_device entries)"
STANDIN_NOTE = "torch_neuronx is the TEST STAND-IN: these are CPU numbers, not Neuron figures"
OWN_CAST_NOTE = ("compiler_args sets --auto-cast itself, so the auto_cast and auto_cast_type "
                 "parameters are not passed to neuronx-cc.")

DEFAULT_COMPILER_ARGS = ("--model-type=transformer",)
OPTION_KEYS = ("compiler_args", "auto_cast", "auto_cast_type", "inline_weights_to_neff",
               "timeout_s")
DEFAULT_TIMEOUT_S = 3600

# NEURON_RT_VISIBLE_CORES when this process first loaded a model (the runtime reads it once).
_RUNTIME_CORES: str | None = None


def import_sdk():
    """``(torch_neuronx module, "")`` or ``(None, why not)``; the PyPI placeholder counts as not
    installed."""
    try:
        mod = importlib.import_module("torch_neuronx")
    except ImportError as e:
        if "WRONG PACKAGE" in str(e):
            return None, (f"{INSTALL_HINT}; the torch-neuronx found is the PyPI placeholder, which "
                          "raises 'WRONG PACKAGE' (pip uninstall torch-neuronx first)")
        return None, f"{INSTALL_HINT} (import torch_neuronx: {e})"
    except Exception as e:  # a broken install: say what broke
        return None, f"import torch_neuronx failed ({type(e).__name__}: {e}); {INSTALL_HINT}"
    if not callable(getattr(mod, "trace", None)) and not neuron_compile.torchneuron():
        where = getattr(mod, "__file__", "?")
        return None, (f"{INSTALL_HINT}; the torch_neuronx found ({where}) has neither trace() nor "
                      "TorchNeuron's torch device 'neuron'")
    return mod, ""


def is_standin(mod) -> bool:
    return bool(getattr(mod, "STANDIN", False))


def probe() -> tuple[bool, str]:
    """Can a vision tower be traced and run here: torch-neuronx imports and NeuronCores are visible.
    ``(True, what was found)`` or ``(False, what is missing and how to install it)``; this is the
    ``neuron`` probe an experiment hands to :func:`workbook.targets.resolve`."""
    mod, why = import_sdk()
    if mod is None:
        return False, why
    found = discover_cores()
    if not found:
        return False, NO_CORES
    try:
        n = visible_cores()
    except WorkbookError as e:
        return False, str(e)
    what = ("the TEST STAND-IN torch_neuronx" if is_standin(mod)
            else f"torch-neuronx {getattr(mod, '__version__', '(version unknown)')}")
    vis = os.environ.get(VISIBLE_ENV)
    return True, (f"{what} and {len(found)} NeuronCores in sysfs"
                  + (f", {n} visible ({VISIBLE_ENV}={vis})" if vis is not None else ""))


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
    """Trace with torch_neuronx (mode ``trace``, the XLA path: Inf2/Trn1, Trn2 up to SDK 2.33;
    ``cores`` = NeuronCores used through DataParallel), or compile with TorchNeuron (mode
    ``compile``: ``torch.compile(backend="neuron")`` on a Trn2/Trn3, SDK 2.33+, one NeuronCore;
    :mod:`workbook.backends.neuron_compile`).

    ``float32``: fp32 model and inputs (neuronx-cc may still cast matmuls, per ``auto_cast``);
    ``bfloat16``: model and inputs cast to bf16 before tracing.
    """

    name = "neuron"
    modes = ("trace", "compile")
    dtypes = ("float32", "bfloat16")
    unit = "NeuronCores"
    clock = "cpu"  # a traced model's call returns CPU tensors when the NeuronCore is done

    def __init__(self) -> None:
        self._compiler_args: list[str] | None = None

    def compiler_args(self, options: dict | None) -> list[str]:
        """The neuronx-cc flags ``prepare`` passes for these options (for cache keys, reports)."""
        return self._options(options)["compiler_args_final"]

    def describe(self) -> dict:
        mod, why = import_sdk()
        found = discover_cores()
        try:
            n = visible_cores() if mod is not None else 0
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
            "torchneuron": bool(mod is not None and neuron_compile.torchneuron()),
            "trace": bool(mod is not None and callable(getattr(mod, "trace", None))),
            **dict(zip(("instance_family", "instance_family_from"), neuron_family.detect())),
            "cores": n,
            "cores_in_sysfs": len(found),
            "devices": len({d for d, _ in found}),
            "sysfs_root": str(sysfs_root()),
            VISIBLE_ENV: os.environ.get(VISIBLE_ENV),
            "compiler_args": (self._compiler_args if self._compiler_args is not None
                              else self.compiler_args({})),
        }

    def rules(self, *, steps, cores: int, options: dict) -> list[str]:
        """A trace splits each batch over the cores, a process keeps the cores its runtime started
        with, and neuronx-cc takes --auto-cast from one place only."""
        if _RUNTIME_CORES is not None:
            held = len(parse_visible_cores(_RUNTIME_CORES))
            if cores > held:
                raise bad_param("cores", cores, f"at most {held}: this process already started "
                                f"the Neuron runtime with {VISIBLE_ENV}={_RUNTIME_CORES}, which it "
                                "reads once, and a process keeps its NeuronCores until it exits; "
                                "prepare the largest core count first, or restart the kernel")
        modes = {mode for mode, _, _ in steps}
        self._modes_here(modes)
        if "compile" in modes:
            if cores > 1:
                raise bad_param("cores", cores, "1 with mode compile (TorchNeuron's torch.compile "
                                "runs on one NeuronCore here; mode trace splits a batch over "
                                "several with DataParallel)")
        for mode, _, batch in steps:
            if mode == "trace" and batch % cores:
                raise bad_param("cores", cores, f"a divisor of the batch size {batch}: with "
                                "cores > 1 the model is traced for batch/cores images and "
                                "DataParallel gives each NeuronCore that many")
        opts = self._options(options)
        if cores > 1 and not opts["inline"]:
            raise bad_param("inline_weights_to_neff", False, "True when cores > 1 (DataParallel is "
                            "documented for traced models with their weights in the NEFF)")
        return [OWN_CAST_NOTE] if opts["own_cast"] else []

    def auto_mode(self) -> tuple[str, str]:
        """The mode for ``auto``, and why: TorchNeuron's compile on a Trn2/Trn3, the XLA trace on
        an Inf2/Trn1; where the family is unknown, the one the installed torch-neuronx has."""
        mod, why = import_sdk()
        if mod is None:
            return "trace", why
        fam, where = neuron_family.detect()
        tn, tr = neuron_compile.torchneuron(), callable(getattr(mod, "trace", None))
        if fam in neuron_family.TORCHNEURON_FAMILIES and tn:
            return "compile", f"a {fam} ({where}) with TorchNeuron: torch.compile(backend='neuron')"
        if fam in neuron_family.TORCHNEURON_FAMILIES:
            return "trace", (f"a {fam} ({where}) with the XLA torch-neuronx, which serves Trn2 up "
                             "to Neuron SDK 2.33 (from 2.34: TorchNeuron and mode compile)")
        if fam is not None:
            return "trace", f"an {fam} ({where}): the XLA path, torch_neuronx.trace"
        mode = "compile" if tn and not tr else "trace"
        return mode, (f"an instance of unknown family ({where}) whose torch-neuronx "
                      f"{'is TorchNeuron' if mode == 'compile' else 'has trace()'}")

    @staticmethod
    def _modes_here(modes: set[str]) -> None:
        """Each mode asked for needs its kind of torch-neuronx and instance: one sentence naming
        the mode that works here."""
        mod, _ = import_sdk()
        if mod is None:
            return  # resolve() has already said what is missing
        version = getattr(mod, "__version__", "(version unknown)")
        fam, where = neuron_family.detect()
        if "compile" in modes and fam is not None and fam not in \
                neuron_family.TORCHNEURON_FAMILIES:
            raise bad_param("modes", "compile", f"trace on an {fam} ({where}): TorchNeuron's "
                            "torch.compile runs on Trn2 and Trn3")
        if "compile" in modes and not neuron_compile.torchneuron():
            raise bad_param("modes", "compile", f"trace here: {neuron_compile.NOT_TORCHNEURON}; "
                            f"the torch-neuronx installed ({version}) is the XLA one")
        if "trace" in modes and not callable(getattr(mod, "trace", None)):
            raise bad_param("modes", "trace", f"compile here: the torch-neuronx installed "
                            f"({version}) is TorchNeuron, without the XLA trace() (Inf2/Trn1, or "
                            "Trn2 up to Neuron SDK 2.33)")

    def _options(self, options: dict | None) -> dict:
        options = dict(options or {})
        for k in options:
            if k not in OPTION_KEYS:
                raise bad_param("options", k, "keys among " + ", ".join(OPTION_KEYS)
                                + " for the neuron backend")
        args = options.get("compiler_args", list(DEFAULT_COMPILER_ARGS))
        if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
            raise bad_param("compiler_args", args, "a list of neuronx-cc flags (strings)")
        args = list(args)
        inline = options.get("inline_weights_to_neff", True)
        if not isinstance(inline, bool):
            raise bad_param("inline_weights_to_neff", inline, "True or False")
        timeout = options.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise bad_param("timeout_s", timeout, "a positive number of seconds")
        own_cast = any(a.startswith("--auto-cast") for a in args)
        auto_cast = options.get("auto_cast", "matmult")
        if own_cast:
            if "auto_cast" in options or "auto_cast_type" in options:
                raise bad_param("compiler_args", args, "flags without --auto-cast/--auto-cast-type "
                                "when the auto_cast option is given (set it in one place)")
            final = args
        elif auto_cast == "none":
            final = [*args, "--auto-cast=none"]
        else:
            cast_type = options.get("auto_cast_type", "bf16")
            final = [*args, f"--auto-cast={auto_cast}", f"--auto-cast-type={cast_type}"]
        return {"compiler_args_final": final, "inline": inline, "timeout_s": float(timeout),
                "own_cast": own_cast}

    def prepare(self, model, example, *, mode, dtype, cores, options, cache) -> Prepared:
        mod, why = import_sdk()
        if mod is None:
            raise BackendUnavailable(f"the neuron backend cannot run here: {why}.")
        if mode == "compile":
            return self._prepare_compiled(mod, model, example, dtype=dtype, cache=cache)
        opts = self._options(options)
        args = self._compiler_args = opts["compiler_args_final"]
        batch = int(example.shape[0])
        standin = is_standin(mod)
        notes: list[str] = [STANDIN_NOTE] if standin else []
        traced_example = example.detach().to("cpu")[: batch // cores].contiguous()
        want = {"compiler_args": args, "dtype": dtype, "traced_shape": list(traced_example.shape),
                "inline_weights_to_neff": opts["inline"], "standin": standin,
                "torch_neuronx_version": getattr(mod, "__version__", None)}
        d, hit = _cached(cache, want, notes)
        compile_s = None
        if not hit:
            info = neuron_worker.compile_in_worker(
                model, traced_example, d, dtype=dtype, args=args, inline=opts["inline"],
                standin=standin, timeout_s=opts["timeout_s"])
            compile_s = info["trace_s"]
            notes.append(f"traced in a worker process in {compile_s:.1f} s for batch "
                         f"{traced_example.shape[0]} (worker wall time "
                         f"{info['worker_wall_s']:.1f} s); compiler args: {' '.join(args)}")
            if cache is not None:
                cache.commit(compile_s=compile_s, worker_wall_s=info["worker_wall_s"], **want,
                             neuronx_cc_version=info.get("neuronx_cc_version"),
                             torch_version=info.get("torch_version"))
        _pin_cores(cores, notes)
        fn, load_s = _load(mod, d / "model.pt", cores, batch, opts["inline"], notes)
        return Prepared(fn=fn, backend="neuron-standin" if standin else "neuron", mode="trace",
                        dtype=dtype, batch=batch, cores=cores, compile_s=compile_s, load_s=load_s,
                        cache=("hit" if hit else "miss") if cache is not None else "none",
                        artifact=str(d / "model.pt"), notes=notes)

    def _prepare_compiled(self, mod, model, example, *, dtype, cache) -> Prepared:
        standin = is_standin(mod)
        notes: list[str] = [STANDIN_NOTE] if standin else []
        _pin_cores(1, notes)
        _runtime_started()
        fn, compile_s = neuron_compile.prepare(
            model, example.detach().to("cpu"), dtype=dtype,
            cache_dir=cache.dir if cache is not None else None, standin=standin, notes=notes)
        return Prepared(fn=fn, backend="neuron-standin" if standin else "neuron", mode="compile",
                        dtype=dtype, batch=int(example.shape[0]), cores=1, compile_s=compile_s,
                        cache="none", artifact=str(cache.dir) if cache is not None else None,
                        notes=notes)

    def to_input(self, x, dtype):
        """Both modes' callables take CPU tensors: the batch stays on the CPU, cast to ``dtype``."""
        return x.detach().to("cpu", _torch_dtype(dtype))

    def memory(self) -> dict:
        """Per-NeuronCore device memory (MB = 2**20 bytes) from sysfs for the cores this process may
        use. The peaks are the driver's, not reset per run."""
        root = sysfs_root()
        found = discover_cores(root)
        vis = os.environ.get(VISIBLE_ENV)
        indices = parse_visible_cores(vis) if vis and vis.strip() else list(range(len(found)))
        out: dict = {"neuron_cores": [read_core_memory(root, *found[i]) for i in indices
                                      if i < len(found)]}
        missing = [i for i in indices if i >= len(found)]
        if missing:
            out["cores_not_in_sysfs"] = missing
        return out


def _cached(cache, want: dict, notes: list[str]) -> tuple[Path, bool]:
    """The artifact folder, and whether it holds a traced model made with exactly ``want``."""
    if cache is None:
        d = Path(tempfile.mkdtemp(prefix="workbook-neuron-"))
        notes.append(f"no artifact cache given: traced into {shown(d)}, which later runs will not "
                     "look in")
        return d, False
    d = Path(cache.dir)
    if not (cache.exists() and (d / "model.pt").is_file()):
        return d, False
    meta = cache.meta()
    differs = [k for k, v in want.items() if meta.get(k) != v]
    if differs:
        notes.append(f"the cached artifact in {shown(d)} was made with other {', '.join(differs)} "
                     f"({', '.join(f'{k}={meta.get(k)!r}' for k in differs)}): traced again")
        return d, False
    notes.append(f"loaded the traced model cached in {shown(d)} (traced in "
                 f"{meta.get('compile_s') or 0:.1f} s when it was made; not traced in this run)")
    return d, True


def _pin_cores(cores: int, notes: list[str]) -> None:
    """Set NEURON_RT_VISIBLE_CORES for this process's first load, or note why it has no effect."""
    wanted = _range_text(cores)
    current = os.environ.get(VISIBLE_ENV)
    if current is None or not current.strip():
        os.environ[VISIBLE_ENV] = wanted
    elif current != wanted:
        notes.append(f"{VISIBLE_ENV} was already {current} (this run would have set {wanted})"
                     + ("; DataParallel ids nc:0.. are relative to it" if cores > 1 else ""))
    if _RUNTIME_CORES is not None and os.environ[VISIBLE_ENV] != _RUNTIME_CORES:
        notes.append(f"the Neuron runtime of this process started with {VISIBLE_ENV}="
                     f"{_RUNTIME_CORES}; the later value {os.environ[VISIBLE_ENV]} has no effect "
                     "until a new process")


def _runtime_started() -> None:
    """This process's first load starts the Neuron runtime, which keeps the cores it saw."""
    global _RUNTIME_CORES
    if _RUNTIME_CORES is None:
        _RUNTIME_CORES = os.environ[VISIBLE_ENV]


def _load(mod, model_pt: Path, cores: int, batch: int, inline: bool, notes: list[str]):
    """Load the traced model onto the cores (DataParallel for more than one); (callable, load s)."""
    import torch

    t0 = time.perf_counter()
    loaded = torch.jit.load(str(model_pt))
    load_s = time.perf_counter() - t0
    _runtime_started()
    if not inline:
        mod.move_trace_to_device(loaded, 0)
        notes.append("weights kept out of the NEFF (inline_weights_to_neff=False): moved to "
                     "NeuronCore 0 with move_trace_to_device after loading")
    if cores == 1:
        return loaded, load_s
    t1 = time.perf_counter()
    fn = mod.DataParallel(loaded, device_ids=[f"nc:{i}" for i in range(cores)], dim=0,
                          set_dynamic_batching=True)
    notes.append(f"DataParallel over nc:0..nc:{cores - 1} (batch {batch} split into {cores} x "
                 f"{batch // cores}); wrapping took {time.perf_counter() - t1:.3f} s after the "
                 "load")
    return fn, load_s
