"""The two Neuron generation paths, transformers-neuronx and NxDI, that workbook.llm.neuron runs.

Each path takes an :class:`~workbook.llm.neuron.LlmSpec` and an
:class:`~workbook.llm.neuron.Attempt`, whose ``stage`` it moves along (encode, load, compile,
generate) so that a failure is recorded where it happened, and returns its timings and the
generations in the service's response shape ``{text, prompt, model, finish_reason, usage}``.
Prompts are encoded with the model folder's tokenizer or the byte-level encoding the CUDA/CPU path
uses, so both give the same ids.

Timing: loading and compiling apart from generation; warm-up excluded; ``ttft_ms`` is the median
wall time of a one-new-token generation, ``decode_tokens_per_s`` = batch x (steps - 1) / (full
generation - one-token generation). These calls return CPU tensors when the device is done, so
wall time is the clock. Imports no torch or Neuron SDK until a path runs.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from workbook.errors import bad_param
from workbook.llm.neuron import NXDI, TNX, TORCH_DTYPE, Attempt, LlmSpec, import_sdk


class _Encoder:
    """``AutoTokenizer`` when the model folder has tokenizer files, else the byte-level encoding
    of :mod:`workbook.models.mistral` (the same ids as the CUDA/CPU path), and a service's EOS."""

    def __init__(self, model_path: str):
        from workbook.models.mistral import TOKENIZER_FILES

        cfg = json.loads((Path(model_path) / "config.json").read_text())
        self.vocab_size = int(cfg["vocab_size"])
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
        """(tokens counted, text, finish_reason): cut after the first EOS (counted, not shown)."""
        for i, t in enumerate(new_ids):
            if t in self.eos_ids:
                return new_ids[: i + 1], self.decode(new_ids[:i]), "stop"
        return new_ids, self.decode(new_ids), "length"


def _encode_all(spec: LlmSpec, att: Attempt) -> tuple[_Encoder, list[list[int]]]:
    att.stage = "encode"
    enc = _Encoder(spec.model_path)
    ids = [enc.encode(p) for p in spec.prompts]
    att.notes.append(f"prompts encoded with {enc.kind}" + (
        " (no tokenizer files in the model folder: bytes)" if enc.kind == "bytes" else ""))
    return enc, ids


def _batches(spec: LlmSpec, ids: list[list[int]]) -> list[list[list[int]]]:
    return [ids[i:i + spec.batch_size] for i in range(0, len(ids), spec.batch_size)]


def _run_tnx(spec: LlmSpec, att: Attempt) -> dict:
    import torch

    sdk = import_sdk(TNX)
    enc, ids = _encode_all(spec, att)
    groups = _batches(spec, ids)
    for g in groups:
        if len({len(x) for x in g}) > 1:
            raise bad_param("batch_size", spec.batch_size, "1 for prompts of different token "
                            f"lengths on the {TNX} path (sample() takes no attention mask; "
                            f"lengths here: {[len(x) for x in g]})")
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
    sampling = (dict(top_k=spec.top_k, top_p=spec.top_p, temperature=spec.temperature)
                if spec.do_sample else dict(top_k=1))

    def gen(group, n_new):
        x = torch.tensor(group, dtype=torch.long)
        out = model.sample(x, sequence_length=x.shape[1] + n_new, **sampling)
        return out[:, x.shape[1]:]

    return _generate(spec, att, enc, ids, groups, gen)


def nxdi_model(model_path: str, tp: int, batch: int, seq: int, dtype: str):
    """(the SDK's names, ``NeuronMistralForCausalLM`` for (tp, batch, seq) in ``dtype``), not yet
    compiled or loaded; mistral_tp and the export search's NxD Inference tries build it alike."""
    import torch

    sdk = import_sdk(NXDI)
    neuron_config = sdk["NeuronConfig"](tp_degree=tp, batch_size=batch, seq_len=seq,
                                        torch_dtype=getattr(torch, dtype))
    config = sdk["MistralInferenceConfig"](neuron_config,
                                           load_config=sdk["load_pretrained_config"](model_path))
    return sdk, sdk["NeuronMistralForCausalLM"](model_path, config)


def _run_nxdi(spec: LlmSpec, att: Attempt) -> dict:
    import torch

    import_sdk(NXDI)
    enc, ids = _encode_all(spec, att)
    att.stage = "load"
    t0 = time.perf_counter()
    sdk, model = nxdi_model(spec.model_path, spec.tp_degree, spec.batch_size, spec.n_positions,
                            TORCH_DTYPE[spec.amp])
    config = model.config
    construct_s = time.perf_counter() - t0
    att.stage = "compile"
    compiled = spec.compiled_dir or tempfile.mkdtemp(prefix="workbook-nxdi-")
    if not spec.compiled_dir:
        att.notes.append(f"compiled into the temporary folder {compiled} (set compiled_dir to "
                         "keep it)")
    t0 = time.perf_counter()
    model.compile(compiled)
    att.timings["compile_s"] = time.perf_counter() - t0
    att.stage = "load"
    t0 = time.perf_counter()
    model.load(compiled)
    att.timings["load_s"] = construct_s + time.perf_counter() - t0
    att.notes.append("load_s is building the config and model plus load(compiled_dir) onto the "
                     "NeuronCores")
    adapter = sdk["HuggingFaceGenerationAdapter"](model)
    side = getattr(getattr(config, "neuron_config", None), "padding_side", "right")

    def gen(group, n_new):
        width = max(len(x) for x in group)
        x = torch.full((len(group), width), enc.pad_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, row in enumerate(group):
            sl = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            x[r, sl] = torch.tensor(row, dtype=torch.long)
            mask[r, sl] = 1
        out = adapter.generate(x, attention_mask=mask, max_new_tokens=n_new,
                               do_sample=spec.do_sample, top_k=spec.top_k, top_p=spec.top_p,
                               temperature=spec.temperature)
        return out[:, width:]

    return _generate(spec, att, enc, ids, _batches(spec, ids), gen)


def _generate(spec: LlmSpec, att: Attempt, enc: _Encoder, ids, groups, gen: Callable) -> dict:
    """Warm-up, then the one-token and full generations on the first batch (timed), the rest."""
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
    rate = (len(groups[0]) * (steps - 1) / (t_full - t_one)
            if steps > 1 and t_full > t_one else None)
    name = spec.model_name or Path(spec.model_path).name
    generations = []
    new_rows = [row.tolist() for out in outs for row in out]
    for prompt, p_ids, new in zip(spec.prompts, ids, new_rows):
        kept, text, finish = enc.completion(new)
        generations.append({"text": text, "prompt": prompt, "model": name,
                            "finish_reason": finish,
                            "usage": {"prompt_tokens": len(p_ids), "completion_tokens": len(kept),
                                      "total_tokens": len(p_ids) + len(kept)}})
    return {"load_s": att.timings.get("load_s"), "compile_s": att.timings.get("compile_s"),
            "ttft_ms": t_one * 1e3, "e2e_ms": t_full * 1e3, "decode_tokens_per_s": rate,
            "decode_steps": steps, "batch_size": spec.batch_size, "tp_degree": spec.tp_degree,
            "amp": spec.amp, "n_positions": spec.n_positions,
            "max_new_tokens": spec.max_new_tokens, "tokenizer": enc.kind,
            "generations": generations}


PATHS: dict[str, Callable[[LlmSpec, Attempt], dict]] = {TNX: _run_tnx, NXDI: _run_nxdi}

