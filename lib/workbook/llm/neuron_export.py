"""Which Neuron path the export search compiles a decoder with: NxD Inference or optimum-neuron.

The seed searched with ``optimum-cli export neuron``. That path moved: optimum-neuron exports only
the architectures it registers (Mistral left after 0.1.0), and from Neuron SDK 2.34 NxD Inference
is not supported on Trn2/Trn3 (it stays, in maintenance, on Inf2/Trn1). So each search asks the
installed packages and the instance before it tries anything:

- ``nxdi``: NxD Inference compiles (tp, batch, seq) in one process and a second process loads the
  compiled folder onto the NeuronCores and makes one token (:mod:`workbook.llm.nxdi_try`). It builds
  Mistral (``NeuronMistralForCausalLM``) wherever NxD Inference is installed: Inf2/Trn1, and Trn2
  up to SDK 2.33.
- ``optimum``: ``optimum-cli export neuron``, then a load, for an architecture the installed
  optimum-neuron registers for text-generation. For a hub model id its compiled-model cache is
  looked up first (``optimum-cli neuron cache lookup``), and what it lists goes into the notes.

``auto`` takes NxD Inference where it can build the model here, else optimum-neuron where it exports
the architecture; neither: one sentence naming what each lacks and where the model can go instead.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from pathlib import Path

from workbook.errors import ParameterError, bad_param
from workbook.specs.export_search import NEURON_PATHS as PATHS

NXDI_MODEL_TYPES = ("mistral",)  # what workbook.llm.nxdi_try builds
OPTIMUM_LAST_MISTRAL = "0.1.0"  # the last optimum-neuron release that exported Mistral


def family(instance_type: str = "") -> tuple[str | None, str]:
    """The instance family the compile is for: ``instance_type`` when given, else this machine's."""
    from workbook.backends import neuron_family

    if instance_type:
        return instance_type, f"instance_type={instance_type}"
    return neuron_family.detect()


def optimum_support(model_type: str) -> tuple[bool | None, str, list[str]]:
    """(exports ``model_type``?, optimum-neuron's version, its text-generation architectures) of
    the installed optimum-neuron: False where it is not installed, None where it keeps no registry
    to ask (then only an export tells)."""
    try:
        version = importlib.metadata.version("optimum-neuron")
    except importlib.metadata.PackageNotFoundError:
        return False, "", []
    try:
        from optimum.neuron.models import auto_model
        from optimum.neuron.models.inference import auto_models  # noqa: F401 - registers them
    except ImportError:
        return None, version, []
    if getattr(auto_model, "STANDIN", False):
        version += " (the TEST STAND-IN)"
    types = sorted({t for t, task, mode in getattr(auto_model, "_REGISTERED_NEURON_MODELS", {})
                    if task == "text-generation" and mode == "inference"})
    ok = auto_model.has_neuron_model_class(model_type, "text-generation", "inference")
    return bool(ok), version, types


def nxdi_ready(model_type: str, instance_type: str = "") -> tuple[bool, str]:
    """(NxD Inference can compile and load ``model_type`` here, why not). Where it does not import
    on a Trn2/Trn3, the reason says that SDK 2.34 dropped it there and names vLLM-Neuron."""
    from workbook.llm import neuron

    if model_type not in NXDI_MODEL_TYPES:
        return False, (f"the export search builds {', '.join(NXDI_MODEL_TYPES)} through NxD "
                       f"Inference, not {model_type}")
    if instance_type:
        return False, ("with instance_type the compile is for another machine, and NxD Inference's "
                       "try also loads onto this one's NeuronCores")
    return neuron.available(neuron.NXDI)


def optimum_ready(model_type: str) -> tuple[bool, str]:
    """(optimum-cli can export ``model_type`` here, why / what it is)."""
    if not shutil.which("optimum-cli"):
        return False, ("optimum-cli (optimum-neuron) is not installed; install optimum-neuron "
                       "with the Neuron SDK")
    ok, version, types = optimum_support(model_type)
    if ok is None:
        return True, (f"optimum-neuron {version} keeps no registry of its architectures, so only "
                      f"the export says whether it takes {model_type}")
    if not ok:
        listed = f" (it exports {', '.join(types)})" if types else ""
        older = (f"; optimum-neuron {OPTIMUM_LAST_MISTRAL} was the last to export Mistral"
                 if model_type == "mistral" else "")
        return False, (f"optimum-neuron {version} does not export {model_type} for "
                       f"text-generation{listed}{older}")
    return True, f"optimum-neuron {version} exports {model_type}"


def choose(path: str, model_type: str, instance_type: str = "") -> tuple[str, str]:
    """(``nxdi`` or ``optimum``, why) for ``neuron_path`` = ``path``; a ParameterError naming the
    parameter, what this machine lacks and the alternative otherwise (its ``why`` holds the
    reason alone)."""
    if path not in PATHS:
        raise bad_param("neuron_path", path, "one of " + ", ".join(PATHS))
    nx_ok, nx_why = (False, "not asked") if path == "optimum" else \
        nxdi_ready(model_type, instance_type)
    if nx_ok:
        return "nxdi", f"NxD Inference: {nx_why}"
    if path == "nxdi":
        raise _refuse(path, "optimum (or auto) here", nx_why)
    op_ok, op_why = optimum_ready(model_type)
    if op_ok:
        return "optimum", op_why + ("" if path == "optimum" else f" (NxD Inference: {nx_why})")
    if path == "optimum":
        alt = "nxdi (NxD Inference, Inf2/Trn1)" if model_type in NXDI_MODEL_TYPES else "none"
        raise _refuse(path, f"{alt} for this model", op_why)
    raise _refuse(path, f"a machine where either path takes {model_type}",
                  f"NxD Inference cannot ({nx_why}) and {op_why}")


def _refuse(path: str, allowed: str, why: str) -> ParameterError:
    e = bad_param("neuron_path", path, f"{allowed}, since {why}")
    e.why = why
    return e


def probe(path: str, model_type: str, instance_type: str = ""):
    """The neuron probe of :func:`workbook.targets.resolve` for the export search; once it has
    said yes, its ``chosen`` holds :func:`choose`'s answer, so the path is decided once."""
    def can_run() -> tuple[bool, str]:
        try:
            can_run.chosen = choose(path, model_type, instance_type)
        except ParameterError as e:
            return False, getattr(e, "why", str(e))
        return True, "{1} ({0})".format(*can_run.chosen)
    can_run.chosen = None
    return can_run


def chosen_probe(chosen: tuple[str, str]):
    """A probe for a path already chosen (``validator: neuron``): it says yes with its reason."""
    def can_run() -> tuple[bool, str]:
        return True, "{1} ({0})".format(*chosen)
    can_run.chosen = chosen
    return can_run


def cache_lookup(model: str, timeout_s: float = 60) -> str:
    """What optimum-neuron's compiled-model cache holds for a hub ``model`` id, as a note (entries
    found do not guarantee cache hits); a local folder has no hub entries."""
    if Path(model).exists():
        return f"optimum-neuron cache: not looked up ({model} is a local folder, not a hub id)"
    argv = ["optimum-cli", "neuron", "cache", "lookup", model, "--task", "text-generation"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"optimum-neuron cache lookup failed ({type(e).__name__}); every try compiles"
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    if r.returncode != 0:
        return (f"optimum-neuron cache lookup exited {r.returncode} ("
                f"{lines[-1][:200] if lines else 'no output'}); every try compiles")
    return "optimum-neuron cache lookup: " + " | ".join(lines[:12])[:1200]
