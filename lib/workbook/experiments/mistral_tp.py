"""The mistral_tp experiment: load a Mistral causal LM tensor-parallel and generate, on Neuron, CUDA or CPU.

Seed: a Mistral-7B-Instruct service that moved from manual ``torch_neuronx`` tracing to transformers-neuronx
(``tp_degree`` across NeuronCores, ``amp``, ``batch_size``, ``context_length_estimate``, top_k/top_p/temperature
sampling), with a fallback chain transformers-neuronx -> torch_neuronx -> CPU and a response
``{text, prompt, model, usage}``. Its import named a class transformers-neuronx does not export publicly, so its
fallback could fire unnoticed. Here every path tried is recorded with its error, a fallback happens only when
asked for and is stated at the top, and the report's first line names the path that produced the numbers.

Paths: ``neuron`` (transformers-neuronx ``MistralForSampling`` or NxDI ``NeuronMistralForCausalLM``,
:mod:`workbook.llm.neuron`); ``cuda``/``cpu`` (real tensor parallelism with torch.distributed over
``tp_degree`` torchrun processes, NCCL or gloo, :mod:`workbook.llm`), with the tensor-parallel logits and greedy
tokens checked against one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from workbook import checks
from workbook.targets import cuda_available
from workbook.errors import bad_param
from workbook.params import as_list

BACKENDS = ("auto", "neuron", "cuda", "cpu")
DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
NEURON_PATHS = ("nxdi", "transformers-neuronx")
TP_MECHANISMS = ("parallelize_module", "local_shards", "tp_plan", "auto")


@dataclass
class Config:
    model: str
    model_note: str
    backend: str
    backend_reason: str
    tp_degree: int
    batch_size: int
    sequence_length: int
    dtype: str
    prompts: list[str]
    max_tokens: int
    top_k: int
    top_p: float
    temperature: float
    seed: int
    neuron_paths: list[str]
    allow_fallback: bool
    compare_single: bool
    cache: str = "dynamic"
    compile: bool = False
    tp_mechanism: str = "parallelize_module"
    allreduce: str = "nccl"
    tp_notes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _backend(requested: str, paths: list[str]) -> tuple[str, str]:
    from workbook.llm import neuron as neuron_llm

    if requested not in BACKENDS:
        raise bad_param("backend", requested, "one of " + ", ".join(BACKENDS))
    if requested in ("neuron", "auto"):
        why = []
        for p in paths:
            ok, reason = neuron_llm.available(p)
            if ok:
                return "neuron", f"{requested}: {reason}"
            why.append(f"{p}: {reason}")
        if requested == "neuron":
            raise bad_param("backend", requested, "cuda or cpu here, since no Neuron path can run (" + "; ".join(why) + ")")
    if requested == "cuda" and not cuda_available():
        raise bad_param("backend", requested, "cpu or neuron here: torch sees no CUDA GPU")
    if requested == "auto":
        if cuda_available():
            return "cuda", "auto: a CUDA GPU is visible and no Neuron SDK is"
        return "cpu", "auto: no Neuron SDK and no CUDA GPU, so tensor parallelism runs over CPU processes (gloo)"
    return requested, f"{requested}: asked for"


def configure(*, model: str, backend: str, tp_degree: int, batch_size: int, sequence_length: int, dtype: str, prompts,
              max_tokens: int, top_k: int, top_p: float, temperature: float, seed: int, neuron_paths,
              allow_fallback: bool, compare_single: bool, cache: str = "dynamic", compile: bool = False,
              tp_mechanism: str = "parallelize_module", allreduce: str = "nccl") -> Config:
    """Check every parameter and the tensor-parallel rules before anything loads; one sentence on error."""
    checks.injected_are_parameters(configure)  # a misspelt `papermill -p` name is refused, not ignored
    import psutil

    from workbook.models import mistral

    for name, v in (("tp_degree", tp_degree), ("batch_size", batch_size), ("sequence_length", sequence_length),
                    ("max_tokens", max_tokens)):
        checks.integer(name, v, 1)
    checks.integer("top_k", top_k, 0)
    checks.seed(seed)
    allow_fallback = checks.boolean("allow_fallback", allow_fallback)
    compare_single = checks.boolean("compare_single", compare_single)
    compile = checks.boolean("compile", compile)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise bad_param("top_p", top_p, "a number in (0, 1]")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise bad_param("temperature", temperature, "a positive number")
    if dtype not in DTYPES:
        raise bad_param("dtype", dtype, "one of " + ", ".join(DTYPES))
    ps = [str(p) for p in as_list("prompts", prompts)]
    if not ps or not all(ps):
        raise bad_param("prompts", prompts, "a non-empty list of non-empty strings")
    paths = [str(p) for p in as_list("neuron_paths", neuron_paths)]
    if not paths or any(p not in NEURON_PATHS for p in paths):
        raise bad_param("neuron_paths", neuron_paths, "a non-empty list from " + ", ".join(NEURON_PATHS))
    if cache not in ("dynamic", "static"):
        raise bad_param("cache", cache, "dynamic or static")
    if tp_mechanism not in TP_MECHANISMS:
        raise bad_param("tp_mechanism", tp_mechanism, "one of " + ", ".join(TP_MECHANISMS))
    note = ""
    if not model or model in mistral.SHAPES:
        model, note = mistral.workbook_model(model)
    config = mistral.load_config(model)
    if sequence_length > config.max_position_embeddings:
        raise bad_param("sequence_length", sequence_length,
                        f"at most the model's {config.max_position_embeddings} positions")
    kind, why = _backend(backend, paths)
    if compile and (kind != "cuda" or cache != "static"):
        raise bad_param("compile", compile, "False here: a compiled decode step needs backend cuda and cache static")
    if allreduce not in ("nccl", "symm_mem"):
        raise bad_param("allreduce", allreduce, "nccl or symm_mem")
    if allreduce == "symm_mem" and not (kind == "cuda" and compile and tp_degree > 1):
        raise bad_param("allreduce", allreduce, "nccl here: symm_mem needs backend cuda, compile True and tp_degree > 1")
    if kind == "cuda":
        import torch

        devices, per_device = torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory
        unit = "GPUs"
    elif kind == "cpu":
        devices = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        per_device = psutil.virtual_memory().total // tp_degree  # the ranks share the host's memory
        unit = "CPU cores"
    else:  # NeuronCores as the Neuron paths will see them (sysfs, NEURON_RT_VISIBLE_CORES); memory per core unknown
        from workbook.llm import neuron as neuron_llm

        devices, per_device, unit = neuron_llm.visible_cores(), None, "NeuronCores"
    check = mistral.check_tp(config, tp_degree, devices, per_device, batch_size, sequence_length, dtype,
                             devices_are=unit)
    if kind != "neuron" and tp_mechanism == "tp_plan" and check.kv_replicated:
        raise bad_param("tp_mechanism", tp_mechanism,
                        f"auto or parallelize_module at tp_degree={tp_degree}: transformers' tp_plan splits KV heads "
                        f"and cannot replicate the model's {config.num_key_value_heads} KV heads over {tp_degree} ranks")
    _check_lengths(model, config, ps, max_tokens, sequence_length)
    batch = [ps[i % len(ps)] for i in range(batch_size)]
    cfg = Config(model, note, kind, why, tp_degree, batch_size, sequence_length, dtype, batch, max_tokens, top_k,
                 float(top_p), float(temperature), seed, paths, allow_fallback, compare_single,
                 cache, compile, tp_mechanism, allreduce, tp_notes=list(check.notes))
    if note:
        cfg.notes.append(note)
    return cfg


def _check_lengths(model: str, config, prompts: list[str], max_tokens: int, sequence_length: int) -> None:
    """Every prompt encodes to at least one token, and the longest one plus ``max_tokens`` fits
    ``sequence_length`` (the positions the KV cache is budgeted or compiled for), with the tokenizer the run uses."""
    from workbook.models import mistral

    enc = mistral.encoder_for(model, config)
    longest = max(len(i) for i in mistral.prompt_ids(enc, prompts))
    if longest + max_tokens > sequence_length:
        raise bad_param("sequence_length", sequence_length,
                        f"at least the longest prompt ({longest} tokens, {enc.kind}) + max_tokens ({max_tokens}) = "
                        f"{longest + max_tokens}, or fewer max_tokens")


def greedy(cfg: Config) -> bool:
    """Greedy unless sampling is asked for: top_k 1, or the neutral top_k 0 / top_p 1 / temperature 1."""
    return cfg.top_k == 1 or (cfg.top_k == 0 and cfg.top_p >= 1.0 and cfg.temperature == 1.0)


def run_torch(cfg: Config, nproc: int) -> dict:
    from workbook.llm.launch import launch

    spec = {"model": cfg.model, "prompts": cfg.prompts, "max_new_tokens": cfg.max_tokens, "dtype": cfg.dtype,
            "device": cfg.backend, "tp_mechanism": cfg.tp_mechanism, "do_sample": not greedy(cfg),
            "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p, "seed": cfg.seed,
            "cache": cfg.cache, "compile": cfg.compile, "allreduce": cfg.allreduce if nproc > 1 else "nccl"}
    return launch(spec, nproc, timeout_s=1800)


def run_neuron(cfg: Config) -> dict:
    from workbook.llm import neuron as neuron_llm

    spec = {"model_path": cfg.model, "prompts": cfg.prompts, "max_new_tokens": cfg.max_tokens,
            "batch_size": cfg.batch_size, "tp_degree": cfg.tp_degree, "amp": DTYPES[cfg.dtype],
            "n_positions": cfg.sequence_length, "do_sample": not greedy(cfg), "top_k": max(cfg.top_k, 1),
            "top_p": cfg.top_p, "temperature": cfg.temperature, "seed": cfg.seed}
    return neuron_llm.run_chain(cfg.neuron_paths, spec, allow_fallback=cfg.allow_fallback)


def torch_rows(res: dict, label: str) -> list[dict]:
    """Measurements of one torchrun run, one row per rank."""
    return [{"run": label, "rank": r["rank"], "world_size": res["world_size"], "backend": res["backend"],
             "tp_mechanism": res.get("tp_mechanism"), "load_s": r["load_s"],
             "compile_s": res.get("warmup_generate_s") if res.get("compile") else None, "ttft_ms": res["ttft_ms"],
             "decode_ms_per_step_p50": res.get("decode_ms_per_step_p50"),
             "decode_tokens_s_per_seq": res["decode_tokens_s_per_seq"],
             "decode_tokens_s_total": res["decode_tokens_s_total"], "peak_memory_mib": r["peak_memory_mib"],
             "memory_kind": r["memory_kind"], "param_mib_local": r["param_mib_local"],
             "decode_weight_gb_s": r.get("decode_weight_gb_s"),
             "load_peak_mib": r.get("load_peak_mib")} for r in res["ranks"]]


def correctness(tp_res: dict, one_res: dict) -> dict:
    """Tensor-parallel logits against one process and the greedy tokens, with what is needed to read them.

    In fp32 the logits agree within 1e-4 (the tests' bound) and the tokens are identical. In bf16 each rank
    rounds its partial sums before the all-reduce adds them, so the logits differ at bf16's resolution (read
    ``logits_max_rel_diff`` against the logits' scale) and a greedy decode over near-tied random-weight logits
    may part ways; where it does, ``first_differing_token`` says after how many identical tokens."""
    from workbook.llm.launch import logits_diff

    a, b = tp_res["logits"].float(), one_res["logits"].float()
    scale = float(b.abs().max())
    tok_a, tok_b = tp_res["generated_ids"], one_res["generated_ids"]
    first = None
    for sa, sb in zip(tok_a, tok_b):
        for i, (x, y) in enumerate(zip(sa, sb)):
            if x != y:
                first = i if first is None else min(first, i)
                break
    by_pos = (a - b).abs().reshape(-1, a.shape[-2], a.shape[-1]).amax(dim=(0, 2)) if a.dim() >= 2 else None
    return {"logits_max_abs_diff": logits_diff(a, b),
            "logits_max_abs": scale,
            "logits_max_rel_diff": logits_diff(a, b) / scale if scale else None,
            "fixed_forward_argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "tokens_identical": tok_a == tok_b,
            "first_differing_token": first,
            "tp_degree": tp_res["world_size"],
            "decode_speedup_over_one_process": (tp_res["decode_tokens_s_total"] / one_res["decode_tokens_s_total"]
                                                if tp_res["decode_tokens_s_total"] and one_res["decode_tokens_s_total"]
                                                else None),
            "logits_max_abs_diff_by_position": by_pos.tolist() if by_pos is not None else None}


def step_rows(res: dict, label: str) -> list[dict]:
    """One row per timed decode step of a run (what the step-latency figure draws)."""
    return [{"run": label, "step": i + 1, "decode_step_ms": ms} for i, ms in enumerate(res.get("decode_steps_ms") or [])]


def run(cfg: Config, rec) -> tuple[str, list[dict], list[dict]]:
    """Load and generate on the chosen backend, recording paths tried, fallbacks and correctness in ``rec``.

    Returns ``(lead, measurement rows, generations)``; ``lead`` names the path that produced the numbers and is
    the report's first line.
    """
    if cfg.backend == "neuron":
        res = run_neuron(cfg)
        for a in res["attempts"]:
            rec.add("paths_tried", a)
        if res.get("fallback"):
            rec.fallback(res["fallback"])
        r = res["results"] or {}
        rows = [{"run": res["path"], "load_s": r.get("load_s"), "compile_s": r.get("compile_s"),
                 "ttft_ms": r.get("ttft_ms"), "decode_tokens_per_s": r.get("decode_tokens_per_s")}]
        lead, generations = res["headline"], r.get("generations", [])
    else:
        tp_res = run_torch(cfg, cfg.tp_degree)
        lead = (f"Numbers from: {cfg.backend} tensor parallelism over {cfg.tp_degree} torchrun processes "
                f"({tp_res['backend']}, {tp_res['tp_mechanism']})")
        for fb in tp_res.get("fallbacks", []):
            rec.fallback(fb)
        rec.add("paths_tried", {"path": f"{cfg.backend} torchrun tp={cfg.tp_degree}", "ok": True, "error": None})
        rows = torch_rows(tp_res, f"tp={cfg.tp_degree}")
        steps = step_rows(tp_res, f"tp={cfg.tp_degree}")
        generations = tp_res["generations"]
        if cfg.compare_single and cfg.tp_degree > 1:
            one = run_torch(cfg, 1)
            rows += torch_rows(one, "one process")
            steps += step_rows(one, "one process")
            check = correctness(tp_res, one)
            by_pos = check.pop("logits_max_abs_diff_by_position")
            rec.add("correctness", check)
            for i, d in enumerate(by_pos or []):
                rec.add("logits_by_position", {"position": i, "logits_max_abs_diff": d})
        for r in steps:
            rec.add("decode_steps", r)
    rec.set(lead=lead)
    for r in rows:
        rec.add("measurements", r)
    for g in generations:
        rec.add("generations", {"prompt": g["prompt"], "text": g["text"], **g["usage"]})
    return lead, rows, generations


def headline(rec, cfg: Config, lead: str, rows: list[dict]) -> None:
    """The path, time to first token, decode tokens/s and (when compared) the correctness check."""
    head = {"path": lead}
    m = [r for r in rows if str(r.get("run", "")).startswith("tp=") or cfg.backend == "neuron"]
    if m:
        head["ttft_ms"] = m[0].get("ttft_ms")
        head["decode_tokens_s"] = m[0].get("decode_tokens_s_total", m[0].get("decode_tokens_per_s"))
    if rec.table("correctness"):
        head.update({k: rec.table("correctness")[0].get(k) for k in ("logits_max_abs_diff", "tokens_identical",
                                                                      "decode_speedup_over_one_process")})
    rec.headline(**head)


def figure(rec):
    """The run at a glance: decode step latency over the generation, decode tokens/s and peak memory per rank
    for each run, and the tensor-parallel logits' largest difference from one process at each position."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from workbook import plots

    m = rec.table("measurements")
    steps, by_pos = rec.table("decode_steps"), rec.table("logits_by_position")
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.12, vertical_spacing=0.2, subplot_titles=(
        "decode step latency over the generation", "decode tokens/s", "peak memory per rank",
        "logits: largest |tp - one process| by position"))
    runs = list(dict.fromkeys(r["run"] for r in m))
    for i, run_label in enumerate(runs):
        c = plots.color(i)
        st = [r for r in steps if r["run"] == run_label]
        if st:
            fig.add_trace(go.Scatter(x=[r["step"] for r in st], y=[r["decode_step_ms"] for r in st], name=run_label,
                                     legendgroup=run_label, mode="lines+markers", line=dict(color=c)), row=1, col=1)
        mine = [r for r in m if r["run"] == run_label]
        tps = mine[0].get("decode_tokens_s_total", mine[0].get("decode_tokens_per_s"))
        fig.add_trace(go.Bar(x=[run_label], y=[tps], name=run_label, legendgroup=run_label, marker_color=c,
                             showlegend=not st), row=1, col=2)
        mem = [r for r in mine if r.get("peak_memory_mib") is not None]
        if mem:
            fig.add_trace(go.Bar(x=[f"{run_label} · rank {r['rank']}" for r in mem], y=[r["peak_memory_mib"] for r in mem],
                                 name=run_label, legendgroup=run_label, marker_color=c, showlegend=False), row=2, col=1)
    if by_pos:
        fig.add_trace(go.Scatter(x=[r["position"] for r in by_pos], y=[r["logits_max_abs_diff"] for r in by_pos],
                                 name="tp against one process", mode="lines+markers",
                                 line=dict(color=plots.color(len(runs)))), row=2, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_yaxes(title_text="ms", row=1, col=1)
    fig.update_yaxes(title_text="tokens / s (all sequences)", row=1, col=2)
    fig.update_yaxes(title_text="MiB", row=2, col=1)
    fig.update_xaxes(title_text="position in the fixed forward", row=2, col=2)
    fig.update_yaxes(title_text="max |difference|", exponentformat="e", row=2, col=2)
    fig.update_layout(title="Mistral tensor-parallel run", height=640, showlegend=True)
    return fig


def random_weights_note(cfg: "Config") -> str | None:
    """Why the generated text is gibberish when the weights are seeded random numbers, said beside it."""
    if cfg.model_note:  # set exactly when configure made the model from a config with seeded random weights
        return ("The weights are seeded random numbers, so the generated text means nothing: random token ids, many "
                "of them pieces of multi-byte characters, which decode to '\ufffd' (the replacement character) on "
                "their own. Timings and the tensor-parallel checks do not depend on the text.")
    return None
