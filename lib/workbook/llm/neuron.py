"""Mistral causal-LM generation on Neuron, through the documented APIs only, with every path tried on record.

Why this module exists: the seed service imported ``transformers_neuronx.mistral.model.MistralForCausalLM``,
which is not a model class of that library (its model class is ``MistralForSampling``), and wrapped it in a
transformers-neuronx -> torch_neuronx -> CPU fallback chain that swallowed the error, so CPU numbers were
reported as Neuron numbers and nobody noticed. Here:

- each *path* is written against the documented API (REFERENCE.md §3, research/neuron.md §2.2-2.4):
  ``transformers-neuronx`` = ``MistralForSampling.from_pretrained(...)``, ``.to_neuron()``, ``.sample(...)``;
  ``nxdi`` = ``NeuronConfig`` + ``MistralInferenceConfig`` + ``NeuronMistralForCausalLM(path, config)``,
  ``.compile(dir)``, ``.load(dir)``, ``HuggingFaceGenerationAdapter(model).generate(...)``;
- :func:`run_chain` tries the paths in the caller's order and records every attempt (path, ok, the stage it
  reached, ``Type: message`` of its error, seconds). Falling back to the next path happens only when the
  caller passes ``allow_fallback=True``, and then the result carries a ``fallback`` sentence; otherwise
  the first failure raises a :class:`WorkbookError` naming the path and the error;
- the result's ``headline`` is the report's first line: which path produced the numbers, whether a test
  stand-in (``STANDIN = True``, tests/standins) ran them, and what failed before.

Timing (gpt-fast style): loading and compiling are reported apart from generation; warm-up runs are
excluded; ``ttft_ms`` is the median wall time of a generation asked for one new token (prefill + first
token), ``decode_tokens_per_s`` = batch x (decode steps - 1) / (full-generation time - one-token time),
i.e. tokens per second summed over the batch. These calls return CPU tensors when the device is done,
so wall time is the clock. The module imports without torch or the Neuron SDK (both are imported inside
functions).
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workbook import checks
from workbook.errors import WorkbookError, bad_param

TNX, NXDI = "transformers-neuronx", "nxdi"
AMP = ("f32", "f16", "bf16")
_AMP_TORCH = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
NEURON_PACKAGES = ("transformers_neuronx", "neuronx_distributed_inference", "neuronx_distributed", "torch_neuronx")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
STANDIN_NOTE = "the Neuron SDK modules used are TEST STAND-INS: these are CPU numbers, not Neuron figures"
SDK_HINT = {
    TNX: ("transformers-neuronx is not installed (it is end-of-support since Neuron 2.26; install it from AWS's "
          "Neuron pip repository on a Neuron 2.25-or-older instance)"),
    NXDI: ("neuronx-distributed-inference is not installed (install neuronx-distributed-inference from AWS's "
           "Neuron pip repository on a Trainium/Inferentia instance)"),
}


# ------------------------------------------------------------------------------------------ the spec
@dataclass
class LlmSpec:
    """What to generate and how. ``n_positions`` is TNx's ``n_positions`` and NxDI's ``seq_len`` (prompt +
    new tokens must fit); ``amp`` maps to NxDI's ``torch_dtype`` (f32/f16/bf16 -> float32/float16/bfloat16).
    ``do_sample=False`` is greedy (TNx: ``top_k=1``)."""

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

    def validate(self) -> "LlmSpec":
        def pos_int(name, low=1):
            checks.integer(name, getattr(self, name), low)

        if not (Path(self.model_path) / "config.json").is_file():
            raise bad_param("model_path", self.model_path, "a folder holding a Hugging Face config.json and weights")
        if (not isinstance(self.prompts, (list, tuple)) or not self.prompts
                or not all(isinstance(p, str) and p for p in self.prompts)):
            raise bad_param("prompts", self.prompts, "a non-empty list of non-empty strings")
        for name in ("max_new_tokens", "batch_size", "tp_degree", "n_positions", "top_k", "repeats"):
            pos_int(name)
        for name in ("seed", "warmup"):
            pos_int(name, 0)
        if len(self.prompts) % self.batch_size:
            raise bad_param("batch_size", self.batch_size, f"a divisor of the number of prompts ({len(self.prompts)}): "
                            "a Neuron model runs only the batch size it was compiled for")
        if self.amp not in AMP:
            raise bad_param("amp", self.amp, "one of " + ", ".join(AMP))
        if self.context_length_estimate is not None:
            pos_int("context_length_estimate")
            if self.context_length_estimate > self.n_positions:
                raise bad_param("context_length_estimate", self.context_length_estimate,
                                f"at most n_positions={self.n_positions}")
        if not isinstance(self.do_sample, bool):
            raise bad_param("do_sample", self.do_sample, "True or False")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise bad_param("top_p", self.top_p, "a number in (0, 1]")
        if not float(self.temperature) > 0.0:
            raise bad_param("temperature", self.temperature, "a number above 0")
        return self


# --------------------------------------------------------------------------- prompt encoding (private)
class _Encoder:
    """``AutoTokenizer`` when the model folder has tokenizer files, else the byte-level encoding of
    :mod:`workbook.models.mistral` (the same ids as the CUDA/CPU path), plus the EOS handling of a service."""

    def __init__(self, model_path: str):
        cfg = json.loads((Path(model_path) / "config.json").read_text())
        self.vocab_size = int(cfg["vocab_size"])
        self.num_attention_heads = cfg.get("num_attention_heads")
        eos = cfg.get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.tok = None
        self.kind = "bytes"
        if any((Path(model_path) / f).is_file() for f in TOKENIZER_FILES):
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(model_path)
            self.kind = "AutoTokenizer"
            if self.tok.eos_token_id is not None:
                self.eos_ids.add(self.tok.eos_token_id)
        pad = self.tok.pad_token_id if self.tok is not None else None
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)

    def encode(self, text: str) -> list[int]:
        if self.tok is not None:
            return list(self.tok(text)["input_ids"])
        from workbook.models.mistral import encode

        return encode(text, self.vocab_size)

    def decode(self, ids: list[int]) -> str:
        if self.tok is not None:
            return self.tok.decode(ids, skip_special_tokens=True)
        from workbook.models.mistral import decode

        return decode(ids)

    def completion(self, new_ids: list[int]) -> tuple[list[int], str, str]:
        """(tokens counted, text, finish_reason): cut after the first EOS (counted, not in the text)."""
        for i, t in enumerate(new_ids):
            if t in self.eos_ids:
                return new_ids[: i + 1], self.decode(new_ids[:i]), "stop"
        return new_ids, self.decode(new_ids), "length"


# ----------------------------------------------------------------------------------- the chain
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

    ``spec`` is an :class:`LlmSpec` or a dict of its fields. ``paths`` adds or replaces path runners
    (``fn(spec, attempt) -> results``), which is how a test injects the seed's import. Without
    ``allow_fallback`` the first failure raises a WorkbookError (its ``attempts`` attribute holds the record).
    """
    runners = {**PATHS, **(paths or {})}
    if isinstance(order, str):
        order = [order]
    if (not isinstance(order, (list, tuple)) or not order or len(set(order)) != len(order)
            or any(p not in runners for p in order)):
        raise bad_param("order", order, "a non-empty list of distinct paths among " + ", ".join(runners))
    if not isinstance(allow_fallback, bool):
        raise bad_param("allow_fallback", allow_fallback, "True or False")
    spec = _as_spec(spec)
    _encode(spec)  # a prompt too long for n_positions is the caller's error on every path: raised here

    attempts: list[dict] = []
    for path in order:
        att = Attempt(path)
        t0 = time.perf_counter()
        try:
            results = runners[path](spec, att)
        except Exception as e:  # every failure is recorded; whether to go on is the caller's decision
            rec = {"path": path, "ok": False, "stage": att.stage, "error": _err(e),
                   "seconds": round(time.perf_counter() - t0, 3)}
            if att.timings:
                rec["timings"] = dict(att.timings)
            attempts.append(rec)
            if not allow_fallback:
                err = WorkbookError(f"The {path} path failed at {att.stage}: {rec['error']}. Nothing else was tried "
                                    "(allow_fallback=False)." + _earlier(attempts[:-1]))
                err.attempts = attempts
                raise err from e
            continue
        attempts.append({"path": path, "ok": True, "stage": "done", "error": None,
                         "seconds": round(time.perf_counter() - t0, 3)})
        return _finish(path, attempts, results, att.notes)
    return _finish(None, attempts, None, [])


def _as_spec(spec) -> LlmSpec:
    if isinstance(spec, dict):
        known = set(LlmSpec.__dataclass_fields__)
        if set(spec) - known or not {"model_path", "prompts"} <= set(spec):
            raise bad_param("spec", sorted(spec), "a dict with model_path and prompts and other keys among "
                            + ", ".join(sorted(known)))
        spec = LlmSpec(**spec)
    if not isinstance(spec, LlmSpec):
        raise bad_param("spec", type(spec).__name__, "an LlmSpec or a dict of its fields")
    return spec.validate()


def _earlier(failed: list[dict]) -> str:
    return (" Before it: " + "; ".join(f"{a['path']} failed at {a['stage']} ({a['error']})" for a in failed) + "."
            if failed else "")


def _finish(path, attempts, results, notes) -> dict:
    standin = bool(_standin_modules())
    failed = [a for a in attempts if not a["ok"]]
    out: dict = {"path": path, "backend": None if path is None else ("neuron-standin" if standin else "neuron"),
                 "standin": standin, "attempts": attempts, "results": results,
                 "notes": ([STANDIN_NOTE + f" ({', '.join(_standin_modules())})"] if standin else []) + list(notes)}
    if path is not None and failed:
        out["fallback"] = ("; ".join(f"the {a['path']} path failed at {a['stage']} ({a['error']})" for a in failed)
                           + f"; the numbers come from the {path} path instead.")
    out["headline"] = headline(out)
    return out


def headline(result: dict) -> str:
    """The report's first line: the path that produced the numbers (or that none did), stand-in, fallback."""
    path = result.get("path")
    if path is None:
        return ("No Neuron path produced numbers: " + "; ".join(
            f"{a['path']} failed at {a['stage']} ({a['error']})" for a in result["attempts"]) + ".")
    line = f"Numbers from the {path} path ({DESCRIPTION.get(path, 'a custom path')})"
    if result.get("standin"):
        line += " - TEST STAND-IN: CPU numbers, not Neuron figures"
    if result.get("fallback"):
        line += ". FALLBACK: " + result["fallback"]
    return line + ("" if line.endswith(".") else ".")


# ------------------------------------------------------------------------------------ availability
def _import_sdk(path: str) -> dict:
    if path == TNX:
        # The model class is MistralForSampling. transformers_neuronx.mistral.model.MistralForCausalLM (the
        # seed's import) is no model: in the real package that name is only the internal CPU checkpoint
        # container that MistralForSampling loads weights into.
        from transformers_neuronx import MistralForSampling

        return {"MistralForSampling": MistralForSampling}
    if path == NXDI:
        from neuronx_distributed_inference.models.config import NeuronConfig
        from neuronx_distributed_inference.models.mistral.modeling_mistral import (
            MistralInferenceConfig, NeuronMistralForCausalLM)
        from neuronx_distributed_inference.utils.hf_adapter import (
            HuggingFaceGenerationAdapter, load_pretrained_config)

        return {"NeuronConfig": NeuronConfig, "MistralInferenceConfig": MistralInferenceConfig,
                "NeuronMistralForCausalLM": NeuronMistralForCausalLM,
                "HuggingFaceGenerationAdapter": HuggingFaceGenerationAdapter,
                "load_pretrained_config": load_pretrained_config}
    raise bad_param("path", path, f"one of {TNX}, {NXDI}")


def visible_cores() -> int:
    """NeuronCores this process may use, read as the Neuron backend reads them (sysfs, NEURON_RT_VISIBLE_CORES)."""
    from workbook.backends.neuron import NeuronBackend, discover_cores

    if not discover_cores():
        return 0
    return NeuronBackend().core_count()


def _check_cores(tp_degree: int | None) -> int:
    from workbook.backends.neuron import NO_CORES

    n = visible_cores()
    if n == 0:
        raise NeuronUnavailable(NO_CORES)
    if tp_degree is not None and tp_degree > n:
        raise NeuronUnavailable(f"tp_degree={tp_degree} needs {tp_degree} NeuronCores but {n} are visible")
    return n


class NeuronUnavailable(WorkbookError):
    """No NeuronCores (or too few for tp_degree) in this process."""


def available(path: str, tp_degree: int | None = None) -> tuple[bool, str]:
    """(usable here, why): the path's SDK imports and enough NeuronCores are visible (sysfs, as the Neuron
    backend reads them, and ``NEURON_RT_VISIBLE_CORES``)."""
    if path not in SDK_HINT:
        raise bad_param("path", path, f"one of {TNX}, {NXDI}")
    try:
        _import_sdk(path)
    except Exception as e:
        hint = " (the PyPI placeholder: pip uninstall it first)" if "WRONG PACKAGE" in str(e) else ""
        return False, f"{SDK_HINT[path]}{hint} ({_err(e)})"
    try:
        n = _check_cores(tp_degree)
    except WorkbookError as e:
        return False, str(e)
    top = "transformers_neuronx" if path == TNX else "neuronx_distributed_inference"
    mod = sys.modules[top]
    what = (f"the TEST STAND-IN {top}" if getattr(mod, "STANDIN", False)
            else f"{top} {getattr(mod, '__version__', '(version unknown)')}")
    return True, f"{what} and {n} NeuronCores visible"


# ------------------------------------------------------------------------------------ the two paths
DESCRIPTION = {TNX: "transformers-neuronx MistralForSampling", NXDI: "NxDI NeuronMistralForCausalLM"}


def _encode(spec: LlmSpec) -> tuple[_Encoder, list[list[int]]]:
    """The prompts' token ids; a ParameterError when the longest prompt + max_new_tokens exceeds n_positions."""
    enc = _Encoder(spec.model_path)
    ids = [enc.encode(p) for p in spec.prompts]
    longest = max(len(i) for i in ids)
    if longest + spec.max_new_tokens > spec.n_positions:
        raise bad_param("n_positions", spec.n_positions, f"at least the longest prompt ({longest} tokens) + "
                        f"max_new_tokens ({spec.max_new_tokens}) = {longest + spec.max_new_tokens}")
    return enc, ids


def _encode_all(spec: LlmSpec, att: Attempt) -> tuple[_Encoder, list[list[int]]]:
    att.stage = "encode"
    enc, ids = _encode(spec)
    att.notes.append(f"prompts encoded with {enc.kind}" + (" (no tokenizer files in the model folder: bytes % "
                                                           "vocab_size)" if enc.kind == "bytes" else ""))
    return enc, ids


def _run_tnx(spec: LlmSpec, att: Attempt) -> dict:
    import torch

    sdk = _import_sdk(TNX)
    att.stage = "devices"
    _check_cores(spec.tp_degree)
    enc, ids = _encode_all(spec, att)
    groups = [ids[i:i + spec.batch_size] for i in range(0, len(ids), spec.batch_size)]
    for g in groups:
        if len({len(x) for x in g}) > 1:
            raise bad_param("batch_size", spec.batch_size, "1 for prompts of different token lengths on the "
                            f"{TNX} path (sample() takes no attention mask; lengths here: {[len(x) for x in g]})")
    att.stage = "load"
    t0 = time.perf_counter()
    model = sdk["MistralForSampling"].from_pretrained(
        spec.model_path, batch_size=spec.batch_size, tp_degree=spec.tp_degree, amp=spec.amp,
        n_positions=spec.n_positions, context_length_estimate=spec.context_length_estimate)
    att.timings["load_s"] = time.perf_counter() - t0
    att.stage = "compile"
    t0 = time.perf_counter()
    model.to_neuron()  # compiles every bucket and loads the shards onto tp_degree NeuronCores
    att.timings["compile_s"] = time.perf_counter() - t0
    att.notes.append("compile_s is to_neuron(): compile and load onto the NeuronCores in one call")
    sampling = (dict(top_k=spec.top_k, top_p=spec.top_p, temperature=spec.temperature) if spec.do_sample
                else dict(top_k=1))

    def gen(group, n_new):
        x = torch.tensor(group, dtype=torch.long)
        out = model.sample(x, sequence_length=x.shape[1] + n_new, **sampling)
        return out[:, x.shape[1]:]

    return _generate(spec, att, enc, ids, groups, gen)


def _run_nxdi(spec: LlmSpec, att: Attempt) -> dict:
    import torch

    sdk = _import_sdk(NXDI)
    att.stage = "devices"
    _check_cores(spec.tp_degree)
    enc, ids = _encode_all(spec, att)
    att.stage = "load"
    t0 = time.perf_counter()
    neuron_config = sdk["NeuronConfig"](tp_degree=spec.tp_degree, batch_size=spec.batch_size, seq_len=spec.n_positions,
                                        torch_dtype=getattr(torch, _AMP_TORCH[spec.amp]))
    config = sdk["MistralInferenceConfig"](neuron_config, load_config=sdk["load_pretrained_config"](spec.model_path))
    model = sdk["NeuronMistralForCausalLM"](spec.model_path, config)
    construct_s = time.perf_counter() - t0
    att.stage = "compile"
    compiled = spec.compiled_dir or tempfile.mkdtemp(prefix="workbook-nxdi-")
    if not spec.compiled_dir:
        att.notes.append(f"compiled into the temporary folder {compiled} (set compiled_dir to keep it)")
    t0 = time.perf_counter()
    model.compile(compiled)
    att.timings["compile_s"] = time.perf_counter() - t0
    att.stage = "load"
    t0 = time.perf_counter()
    model.load(compiled)
    att.timings["load_s"] = construct_s + time.perf_counter() - t0
    att.notes.append("load_s is building the config and model plus load(compiled_dir) onto the NeuronCores")
    adapter = sdk["HuggingFaceGenerationAdapter"](model)
    side = getattr(getattr(config, "neuron_config", None), "padding_side", "right")
    groups = [ids[i:i + spec.batch_size] for i in range(0, len(ids), spec.batch_size)]

    def gen(group, n_new):
        width = max(len(x) for x in group)
        x = torch.full((len(group), width), enc.pad_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, row in enumerate(group):
            sl = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            x[r, sl] = torch.tensor(row, dtype=torch.long)
            mask[r, sl] = 1
        out = adapter.generate(x, attention_mask=mask, max_new_tokens=n_new, do_sample=spec.do_sample,
                               top_k=spec.top_k, top_p=spec.top_p, temperature=spec.temperature)
        return out[:, width:]

    return _generate(spec, att, enc, ids, groups, gen)


def _generate(spec: LlmSpec, att: Attempt, enc: _Encoder, ids, groups, gen: Callable) -> dict:
    """Warm-up, then the one-token and full generations on the first batch (timed), then the rest."""
    import torch

    att.stage = "generate"
    torch.manual_seed(spec.seed)
    for _ in range(spec.warmup):
        gen(groups[0], spec.max_new_tokens)
    one, full, first = [], [], None
    for _ in range(spec.repeats):
        t0 = time.perf_counter()
        gen(groups[0], 1)
        one.append(time.perf_counter() - t0)
        torch.manual_seed(spec.seed)
        t0 = time.perf_counter()
        first = gen(groups[0], spec.max_new_tokens)
        full.append(time.perf_counter() - t0)
    outs = [first] + [gen(g, spec.max_new_tokens) for g in groups[1:]]
    t_one, t_full = statistics.median(one), statistics.median(full)
    steps = int(first.shape[1])
    rate = (len(groups[0]) * (steps - 1) / (t_full - t_one)) if steps > 1 and t_full > t_one else None
    name = spec.model_name or Path(spec.model_path).name
    generations = []
    new_rows = [row.tolist() for out in outs for row in out]
    for prompt, p_ids, new in zip(spec.prompts, ids, new_rows):
        kept, text, finish = enc.completion(new)
        generations.append({"text": text, "prompt": prompt, "model": name, "finish_reason": finish,
                            "usage": {"prompt_tokens": len(p_ids), "completion_tokens": len(kept),
                                      "total_tokens": len(p_ids) + len(kept)}})
    return {"load_s": att.timings.get("load_s"), "compile_s": att.timings.get("compile_s"),
            "ttft_ms": t_one * 1e3, "e2e_ms": t_full * 1e3, "decode_tokens_per_s": rate, "decode_steps": steps,
            "batch_size": spec.batch_size, "tp_degree": spec.tp_degree, "amp": spec.amp,
            "n_positions": spec.n_positions, "max_new_tokens": spec.max_new_tokens, "tokenizer": enc.kind,
            "generations": generations}


PATHS: dict[str, Callable[[LlmSpec, Attempt], dict]] = {TNX: _run_tnx, NXDI: _run_nxdi}

__all__ = ["AMP", "NXDI", "TNX", "PATHS", "Attempt", "LlmSpec", "NeuronUnavailable", "available", "headline",
           "run_chain"]
