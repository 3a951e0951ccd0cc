"""Mistral causal-LM generation on Neuron through the documented APIs only, every path on record.

The seed service imported ``transformers_neuronx.mistral.model.MistralForCausalLM``, which is not
a model class of that library (its model class is ``MistralForSampling``), and wrapped it in a
transformers-neuronx -> torch_neuronx -> CPU fallback chain that swallowed the error, so CPU
numbers were reported as Neuron numbers. Here each *path* (:mod:`workbook.llm.neuron_paths`) is
written against its library's documented API (transformers-neuronx: ``MistralForSampling``
``from_pretrained``/``to_neuron``/``sample``; NxDI: ``NeuronConfig``, ``MistralInferenceConfig``,
``NeuronMistralForCausalLM`` ``compile``/``load``, ``HuggingFaceGenerationAdapter.generate``);
:func:`run_chain` records every attempt with the stage it reached and its error, falls back only
with ``allow_fallback`` (and then says so), and its ``headline`` names the path that produced the
numbers and whether a test stand-in (``STANDIN = True``, tests/standins) ran them. The spec was
checked by the caller (prompts, lengths, the degree against the model and the NeuronCores).

Imports no torch or Neuron SDK until a path runs.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from workbook.errors import WorkbookError, bad_param

TNX, NXDI = "transformers-neuronx", "nxdi"
AMP = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}  # torch dtype -> Neuron amp
TORCH_DTYPE = {amp: dtype for dtype, amp in AMP.items()}  # amp -> torch dtype
NEURON_PACKAGES = ("transformers_neuronx", "neuronx_distributed_inference", "neuronx_distributed",
                   "torch_neuronx")
STANDIN_NOTE = ("the Neuron SDK modules used are TEST STAND-INS: these are CPU numbers, not Neuron "
                "figures")
DESCRIPTION = {TNX: "transformers-neuronx MistralForSampling, legacy: Neuron SDK 2.25 and older",
               NXDI: "NxDI NeuronMistralForCausalLM"}
# From Neuron SDK 2.34 neither library serves a Trn2/Trn3; the documented way there is vLLM-Neuron.
TRN_HINT = ("on a {fam} ({where}), Neuron SDK 2.34 and later support neither NxD Inference nor "
            "transformers-neuronx: serve the model with vLLM-Neuron (vllm serve MODEL "
            "--tensor-parallel-size N) and measure it with workbook run serving -p url "
            "http://HOST:PORT")
SDK_HINT = {
    TNX: ("transformers-neuronx is not installed (it is end-of-support since Neuron 2.26; install "
          "it from AWS's Neuron pip repository on a Neuron 2.25-or-older instance)"),
    NXDI: ("neuronx-distributed-inference is not installed (install neuronx-distributed-inference "
           "from AWS's Neuron pip repository on a Trainium/Inferentia instance)"),
}


# ------------------------------------------------------------------------------------- the spec
@dataclass
class LlmSpec:
    """What to generate and how. ``n_positions`` is TNx's ``n_positions`` and NxDI's ``seq_len``
    (prompt + new tokens must fit); ``amp`` (f32/f16/bf16) is NxDI's ``torch_dtype``.
    ``do_sample=False`` is greedy (TNx: ``top_k=1``). ``prompts`` holds ``batch_size`` prompts
    or a multiple: a Neuron model runs only the batch size it was compiled for."""

    model_path: str
    prompts: list[str]
    max_new_tokens: int = 16
    batch_size: int = 1
    tp_degree: int = 2
    amp: str = "bf16"
    n_positions: int = 128
    context_length_estimate: int | None = None  # TNx only
    do_sample: bool = False
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0
    warmup: int = 1
    repeats: int = 1
    compiled_dir: str | None = None  # NxDI compile output; a fresh temporary folder when None
    model_name: str | None = None  # the "model" of each generation; the folder name when None


# ------------------------------------------------------------------------------------ the chain
@dataclass
class Attempt:
    """One path tried: the runner moves ``stage`` along and fills ``timings`` as steps finish."""

    path: str
    stage: str = "import"
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _standin_modules() -> list[str]:
    return [n for n in NEURON_PACKAGES if getattr(sys.modules.get(n), "STANDIN", False)]


def run_chain(order, spec, *, allow_fallback: bool = False, paths: dict | None = None) -> dict:
    """Try the paths in ``order`` (e.g. ``["nxdi", "transformers-neuronx"]``) and return
    ``{"path", "backend", "standin", "attempts", "results", "headline", ["fallback"], "notes"}``.

    ``spec`` is an :class:`LlmSpec` or a dict of its fields. ``paths`` adds or replaces path
    runners (``fn(spec, attempt) -> results``), which is how a test injects the seed's import.
    Without ``allow_fallback`` the first failure raises a WorkbookError (its ``attempts``
    attribute holds the record).
    """
    from workbook.llm.neuron_paths import PATHS

    runners = {**PATHS, **(paths or {})}
    order = [order] if isinstance(order, str) else list(order)
    chosen = [(path, runners[path]) for path in order]  # an unknown path: KeyError, nothing tried
    spec = LlmSpec(**spec) if isinstance(spec, dict) else spec
    attempts: list[dict] = []
    for path, runner in chosen:
        att = Attempt(path)
        t0 = time.perf_counter()
        try:
            results = runner(spec, att)
        except Exception as e:  # every failure is recorded; going on is the caller's decision
            rec = {"path": path, "ok": False, "stage": att.stage, "error": _err(e),
                   "seconds": round(time.perf_counter() - t0, 3)}
            if att.timings:
                rec["timings"] = dict(att.timings)
            attempts.append(rec)
            if not allow_fallback:
                err = WorkbookError(f"The {path} path failed at {att.stage}: {rec['error']}. "
                                    "Nothing else was tried (allow_fallback=False)."
                                    + _earlier(attempts[:-1]))
                err.attempts = attempts
                raise err from e
            continue
        attempts.append({"path": path, "ok": True, "stage": "done", "error": None,
                         "seconds": round(time.perf_counter() - t0, 3)})
        return _finish(path, attempts, results, att.notes)
    return _finish(None, attempts, None, [])


def _failures(failed: list[dict]) -> str:
    return "; ".join(f"{a['path']} failed at {a['stage']} ({a['error']})" for a in failed)


def _earlier(failed: list[dict]) -> str:
    return f" Before it: {_failures(failed)}." if failed else ""


def _finish(path, attempts, results, notes) -> dict:
    standin = _standin_modules()
    failed = [a for a in attempts if not a["ok"]]
    backend = None if path is None else ("neuron-standin" if standin else "neuron")
    out: dict = {"path": path, "backend": backend, "standin": bool(standin),
                 "attempts": attempts, "results": results,
                 "notes": ([f"{STANDIN_NOTE} ({', '.join(standin)})"] if standin else [])
                 + list(notes)}
    if path is not None and failed:
        out["fallback"] = "; ".join(
            [f"the {a['path']} path failed at {a['stage']} ({a['error']})" for a in failed]
            + [f"the numbers come from the {path} path instead."])
    out["headline"] = headline(out)
    return out


def headline(result: dict) -> str:
    """The report's first line: the path that produced the numbers (or that none did), stand-in,
    fallback."""
    path = result.get("path")
    if path is None:
        return f"No Neuron path produced numbers: {_failures(result['attempts'])}."
    line = f"Numbers from the {path} path ({DESCRIPTION.get(path, 'a custom path')})"
    if result.get("standin"):
        line += " - TEST STAND-IN: CPU numbers, not Neuron figures"
    if result.get("fallback"):
        line += ". FALLBACK: " + result["fallback"]
    return line + ("" if line.endswith(".") else ".")


# ---------------------------------------------------------------------------------- availability
def import_sdk(path: str) -> dict:
    if path == TNX:
        # The model class is MistralForSampling. transformers_neuronx.mistral.model.
        # MistralForCausalLM (the seed's import) is no model: in the real package that name is only
        # the internal CPU checkpoint container that MistralForSampling loads weights into.
        from transformers_neuronx import MistralForSampling

        return {"MistralForSampling": MistralForSampling}
    from neuronx_distributed_inference.models.config import NeuronConfig
    from neuronx_distributed_inference.models.mistral.modeling_mistral import (
        MistralInferenceConfig, NeuronMistralForCausalLM)
    from neuronx_distributed_inference.utils.hf_adapter import (
        HuggingFaceGenerationAdapter, load_pretrained_config)

    return {"NeuronConfig": NeuronConfig, "MistralInferenceConfig": MistralInferenceConfig,
            "NeuronMistralForCausalLM": NeuronMistralForCausalLM,
            "HuggingFaceGenerationAdapter": HuggingFaceGenerationAdapter,
            "load_pretrained_config": load_pretrained_config}


def visible_cores() -> int:
    """NeuronCores this process may use: none without sysfs entries, else those
    ``NEURON_RT_VISIBLE_CORES`` names, else every one."""
    from workbook.backends.neuron_sysfs import discover_cores
    from workbook.backends.neuron_sysfs import visible_cores as visible

    return visible() if discover_cores() else 0


def available(path: str) -> tuple[bool, str]:
    """(usable here, why): the path's SDK imports and NeuronCores are visible."""
    if path not in SDK_HINT:
        raise bad_param("path", path, f"one of {TNX}, {NXDI}")
    try:
        import_sdk(path)
    except Exception as e:
        from workbook.backends import neuron_family

        fam, where = neuron_family.detect()
        if fam in neuron_family.TORCHNEURON_FAMILIES:
            return False, f"{TRN_HINT.format(fam=fam, where=where)} ({_err(e)})"
        placeholder = "WRONG PACKAGE" in str(e)
        hint = " (the PyPI placeholder: pip uninstall it first)" if placeholder else ""
        return False, f"{SDK_HINT[path]}{hint} ({_err(e)})"
    n = visible_cores()
    if n == 0:
        from workbook.backends.neuron import NO_CORES

        return False, NO_CORES
    top = "transformers_neuronx" if path == TNX else "neuronx_distributed_inference"
    mod = sys.modules[top]
    what = (f"the TEST STAND-IN {top}" if getattr(mod, "STANDIN", False)
            else f"{top} {getattr(mod, '__version__', '(version unknown)')}")
    return True, f"{what} and {n} NeuronCores visible"


def probe(paths: list[str]) -> Callable[[], tuple[bool, str]]:
    """The Neuron probe of :func:`workbook.targets.resolve`: one of ``paths`` can run here."""
    def can_run() -> tuple[bool, str]:
        why = []
        for path in paths:
            ok, reason = available(path)
            if ok:
                return True, f"{path}: {reason}"
            why.append(f"{path}: {reason}")
        return False, "no Neuron path can run here (" + "; ".join(why) + ")"
    return can_run
