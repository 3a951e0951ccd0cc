"""The mistral_tp experiment: Mistral loaded tensor-parallel generates, on Neuron, CUDA or CPU.

Seed: a Mistral-7B-Instruct service that moved from manual ``torch_neuronx`` tracing to
transformers-neuronx (``tp_degree`` across NeuronCores, ``amp``, ``batch_size``,
``context_length_estimate``, top_k/top_p/temperature sampling), with a fallback chain
transformers-neuronx -> torch_neuronx -> CPU and a response ``{text, prompt, model, usage}``. Its
import named a class transformers-neuronx does not export publicly, so its fallback could fire
unnoticed. Here every path tried is recorded with its error, a fallback happens only when asked for
and is stated at the top, and the report's first line names the path that produced the numbers.

Paths: ``neuron`` (transformers-neuronx or NxDI, :mod:`workbook.llm.neuron`); ``cuda``/``cpu``
(real tensor parallelism with torch.distributed over ``tp_degree`` torchrun processes, NCCL or
gloo, :mod:`workbook.llm.launch`), with the tensor-parallel logits and greedy tokens checked
against one process. :func:`configure` checks every rule between the parameters, the model and
the machine before anything loads; the layers below take its word.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from workbook.errors import bad_param
from workbook.llm import shard
from workbook.spec import Values
from workbook.specs.mistral_tp import BACKENDS, SPEC
from workbook.targets import Target


@dataclass
class Config:
    p: Values
    target: Target  # neuron, cuda or cpu, and why
    model: str  # the folder or hub id that runs (made here for an empty model or a shape name)
    model_note: str  # what was made, when configure made the model
    prompts: list[str]  # the batch: p.prompts cycled to batch_size
    tp_mechanism: str  # what shards on cuda/cpu (auto decided here); "neuron" on Neuron
    layout: shard.Layout
    notes: list[str] = field(default_factory=list)


def configure(P: Values) -> Config:
    """The rules between the parameters, the model and the machine, in one sentence on error."""
    from workbook import targets
    from workbook.llm import neuron
    from workbook.models import mistral

    if not all(P.prompts):  # the spec checks the list is not empty; its items are checked here
        raise bad_param("prompts", P.prompts, SPEC.params["prompts"].allowed)
    model, note = P.model, ""
    if not model or model in mistral.SHAPES:
        model, note = mistral.workbook_model(model)
    config = mistral.load_config(model)
    if P.sequence_length > config.max_position_embeddings:
        raise bad_param("sequence_length", P.sequence_length,
                        f"at most the model's {config.max_position_embeddings} positions")
    if P.batch_size < len(P.prompts):
        raise bad_param("batch_size", P.batch_size, f"at least the number of prompts "
                        f"({len(P.prompts)}): one generation runs batch_size sequences, the "
                        "prompts cycled to fill it")
    target = targets.resolve(P.backend, choices=BACKENDS, neuron=neuron.probe(P.neuron_paths))
    kind = target.name
    if P.compile and (kind != "cuda" or P.cache != "static"):
        raise bad_param("compile", P.compile, "False here: a compiled decode step needs backend "
                        "cuda and cache static")
    if P.allreduce == "symm_mem" and not (kind == "cuda" and P.compile and P.tp_degree > 1):
        raise bad_param("allreduce", P.allreduce, "nccl here: symm_mem needs backend cuda, "
                        "compile True and tp_degree > 1")
    mechanism, why = (("neuron", None) if kind == "neuron" else
                      shard.choose_mechanism(P.tp_mechanism, config, model, P.tp_degree))
    memory = target.memory_per_device
    if kind == "cpu":  # the ranks share the host's memory
        memory //= P.tp_degree
    layout = shard.check(config, P.tp_degree, mechanism=mechanism, devices=target.devices,
                         devices_are=target.unit, bytes_per_device=memory, batch=P.batch_size,
                         seq=P.sequence_length, dtype=P.dtype, shared_cores=kind == "cpu")
    _check_lengths(model, config, P.prompts, P.max_tokens, P.sequence_length)
    prompts = [P.prompts[i % len(P.prompts)] for i in range(P.batch_size)]
    notes = [n for n in (note, why) if n] + list(layout.notes)
    return Config(P, target, model, note, prompts, mechanism, layout, notes)


def _check_lengths(model: str, config, prompts: list[str], max_tokens: int, seq: int) -> None:
    """Every prompt encodes to a token at least, and the longest one plus ``max_tokens`` fits
    ``sequence_length`` (the positions the KV cache is budgeted or compiled for)."""
    from workbook.models import mistral

    enc = mistral.encoder_for(model, config)
    longest = max(len(i) for i in mistral.prompt_ids(enc, prompts))
    if longest + max_tokens > seq:
        raise bad_param("sequence_length", seq,
                        f"at least the longest prompt ({longest} tokens, {enc.kind}) + max_tokens "
                        f"({max_tokens}) = {longest + max_tokens}, or fewer max_tokens")


def start_record(cfg: Config, rec) -> str:
    """The set-up facts into ``rec``; returns them as text to print."""
    from workbook.paths import shown

    rec.set(backend=cfg.target.name, backend_reason=cfg.target.reason, model=shown(cfg.model))
    for n in cfg.notes:
        rec.note(n)
    return "\n".join(cfg.notes + [f"backend: {cfg.target.name}: {cfg.target.reason}"])


def greedy(cfg: Config) -> bool:
    """Greedy unless sampling is asked for: top_k 1, or the neutral top_k 0 / top_p 1 /
    temperature 1."""
    p = cfg.p
    return p.top_k == 1 or (p.top_k == 0 and p.top_p >= 1.0 and p.temperature == 1.0)


def run_torch(cfg: Config, nproc: int) -> dict:
    from workbook import console
    from workbook.llm.launch import RunSpec, launch

    p = cfg.p
    spec = RunSpec(model=cfg.model, prompts=cfg.prompts, max_new_tokens=p.max_tokens,
                   dtype=p.dtype, device=cfg.target.name, tp_mechanism=cfg.tp_mechanism,
                   do_sample=not greedy(cfg), temperature=p.temperature, top_k=p.top_k,
                   top_p=p.top_p, seed=p.seed, cache=p.cache, compile=p.compile,
                   allreduce=p.allreduce if nproc > 1 else "nccl")

    def show(line: str) -> None:  # rank 0 speaks for the group (a stuck rank's own lines are in
        if line.startswith("[rank 0 "):  # the log tail a timeout prints)
            console.relay(f"{nproc} rank{'s' if nproc > 1 else ''} · {line}")

    return launch(spec, nproc, timeout_s=1800, relay=show)


def run_neuron(cfg: Config) -> dict:
    from workbook.llm import neuron

    p = cfg.p
    spec = neuron.LlmSpec(model_path=cfg.model, prompts=cfg.prompts, max_new_tokens=p.max_tokens,
                          batch_size=p.batch_size, tp_degree=p.tp_degree, amp=neuron.AMP[p.dtype],
                          n_positions=p.sequence_length, do_sample=not greedy(cfg),
                          top_k=max(p.top_k, 1), top_p=p.top_p, temperature=p.temperature,
                          seed=p.seed)
    return neuron.run_chain(p.neuron_paths, spec, allow_fallback=p.allow_fallback)


def torch_rows(res: dict, label: str) -> list[dict]:
    """Measurements of one torchrun run, one row per rank."""
    return [{"run": label, "rank": r["rank"], "world_size": res["world_size"],
             "backend": res["backend"], "tp_mechanism": res.get("tp_mechanism"),
             "projections": res.get("projections", "not fused (tensor-parallel shards)"),
             "load_s": r["load_s"],
             "compile_s": res.get("warmup_generate_s") if res.get("compile") else None,
             "ttft_ms": res["ttft_ms"], "decode_ms_per_step_p50": res.get("decode_ms_per_step_p50"),
             "decode_tokens_s_per_seq": res["decode_tokens_s_per_seq"],
             "decode_tokens_s_total": res["decode_tokens_s_total"],
             "peak_memory_mib": r["peak_memory_mib"], "memory_kind": r["memory_kind"],
             "param_mib_local": r["param_mib_local"],
             "decode_weight_gb_s": r.get("decode_weight_gb_s"),
             "load_peak_mib": r.get("load_peak_mib")} for r in res["ranks"]]


def correctness(tp_res: dict, one_res: dict) -> dict:
    """Tensor-parallel logits against one process and the greedy tokens, with what is needed to
    read them.

    In fp32 the logits agree within 1e-4 (the tests' bound) and the tokens are identical. In bf16
    each rank rounds its partial sums before the all-reduce adds them, so the logits differ at
    bf16's resolution (read ``logits_max_rel_diff`` against the logits' scale) and a greedy decode
    over near-tied random-weight logits may part ways; where it does, ``first_differing_token``
    says after how many identical tokens."""
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
    by_pos = None
    if a.dim() >= 2:
        by_pos = (a - b).abs().reshape(-1, a.shape[-2], a.shape[-1]).amax(dim=(0, 2))
    rate_tp, rate_one = tp_res["decode_tokens_s_total"], one_res["decode_tokens_s_total"]
    return {"logits_max_abs_diff": logits_diff(a, b),
            "logits_max_abs": scale,
            "logits_max_rel_diff": logits_diff(a, b) / scale if scale else None,
            "fixed_forward_argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "tokens_identical": tok_a == tok_b,
            "first_differing_token": first,
            "tp_degree": tp_res["world_size"],
            "decode_speedup_over_one_process": rate_tp / rate_one if rate_tp and rate_one else None,
            "logits_max_abs_diff_by_position": by_pos.tolist() if by_pos is not None else None}


def step_rows(res: dict, label: str) -> list[dict]:
    """One row per timed decode step of a run (what the step-latency figure draws)."""
    return [{"run": label, "step": i + 1, "decode_step_ms": ms}
            for i, ms in enumerate(res.get("decode_steps_ms") or [])]


@dataclass
class Outcome:
    lead: str  # the path that produced the numbers: the report's first line
    tables: dict  # title -> rows, in the order to show them
    generations: list[dict]


def run(cfg: Config, rec) -> Outcome:
    """Load and generate on the target, recording the paths tried, fallbacks, measurements,
    correctness, generations and the headline in ``rec``."""
    tables = {}
    if cfg.target.name == "neuron":
        res = run_neuron(cfg)
        for a in res["attempts"]:
            rec.add("paths_tried", a)
        if res.get("fallback"):
            rec.fallback(res["fallback"])
        r = res["results"] or {}
        rows = [{"run": res["path"], "load_s": r.get("load_s"), "compile_s": r.get("compile_s"),
                 "ttft_ms": r.get("ttft_ms"), "decode_tokens_per_s": r.get("decode_tokens_per_s")}]
        lead, generations = res["headline"], r.get("generations", [])
        tables["Neuron paths tried"] = rec.table("paths_tried")
    else:
        lead, rows, generations = _run_tensor_parallel(cfg, rec)
        if rec.table("correctness"):
            tables["Tensor-parallel logits and tokens against one process"] = \
                rec.table("correctness")
    rec.set(lead=lead)
    for r in rows:
        rec.add("measurements", r)
    for g in generations:
        rec.add("generations", {"prompt": g["prompt"], "text": g["text"], **g["usage"]})
    _headline(rec, cfg, lead, rows)
    tables["Load, first token and decode, per run and rank"] = rows
    return Outcome(lead, tables, generations)


def _run_tensor_parallel(cfg: Config, rec) -> tuple[str, list[dict], list[dict]]:
    """The torchrun run over tp_degree ranks and, when asked, one process to compare it with."""
    tp = cfg.p.tp_degree
    tp_res = run_torch(cfg, tp)
    lead = (f"Numbers from: {cfg.target.name} tensor parallelism over {tp} torchrun processes "
            f"({tp_res['backend']}, {tp_res['tp_mechanism']})")
    rec.add("paths_tried", {"path": f"{cfg.target.name} torchrun tp={tp}", "ok": True,
                            "error": None})
    rows = torch_rows(tp_res, f"tp={tp}")
    steps = step_rows(tp_res, f"tp={tp}")
    if cfg.p.compare_single and tp > 1:
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
    return lead, rows, tp_res["generations"]


def _headline(rec, cfg: Config, lead: str, rows: list[dict]) -> None:
    """The path, time to first token, decode tokens/s and (when compared) the correctness check."""
    head = {"path": lead}
    neuron = cfg.target.name == "neuron"
    m = [r for r in rows if str(r.get("run", "")).startswith("tp=") or neuron]
    if m:
        head["ttft_ms"] = m[0].get("ttft_ms")
        head["decode_tokens_s"] = m[0].get("decode_tokens_s_total", m[0].get("decode_tokens_per_s"))
    check = rec.table("correctness")
    if check:
        head.update({k: check[0].get(k) for k in ("logits_max_abs_diff", "tokens_identical",
                                                  "decode_speedup_over_one_process")})
    rec.headline(**head)


def figure(rec):
    """The run at a glance: decode step latency over the generation, decode tokens/s and peak
    memory per rank for each run, and the tensor-parallel logits' largest difference from one
    process at each position."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from workbook import plots

    m = rec.table("measurements")
    steps, by_pos = rec.table("decode_steps"), rec.table("logits_by_position")
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.12, vertical_spacing=0.2,
                        subplot_titles=("decode step latency over the generation",
                                        "decode tokens/s", "peak memory per rank",
                                        "logits: largest |tp - one process| by position"))
    runs = list(dict.fromkeys(r["run"] for r in m))
    for i, label in enumerate(runs):
        c = plots.color(i)
        st = [r for r in steps if r["run"] == label]
        if st:
            fig.add_trace(go.Scatter(x=[r["step"] for r in st], y=[r["decode_step_ms"] for r in st],
                                     name=label, legendgroup=label, mode="lines+markers",
                                     line=dict(color=c)), row=1, col=1)
        mine = [r for r in m if r["run"] == label]
        tps = mine[0].get("decode_tokens_s_total", mine[0].get("decode_tokens_per_s"))
        fig.add_trace(go.Bar(x=[label], y=[tps], name=label, legendgroup=label, marker_color=c,
                             showlegend=not st), row=1, col=2)
        mem = [r for r in mine if r.get("peak_memory_mib") is not None]
        if mem:
            fig.add_trace(go.Bar(x=[f"{label} · rank {r['rank']}" for r in mem],
                                 y=[r["peak_memory_mib"] for r in mem], name=label,
                                 legendgroup=label, marker_color=c, showlegend=False),
                          row=2, col=1)
    if by_pos:
        fig.add_trace(go.Scatter(x=[r["position"] for r in by_pos],
                                 y=[r["logits_max_abs_diff"] for r in by_pos],
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


def generations_text(cfg: Config, out: Outcome) -> str:
    """The generations in the service's response shape, after why the text is gibberish when the
    weights are seeded random numbers."""
    text = json.dumps(out.generations, indent=2, ensure_ascii=False)
    if not cfg.model_note:  # set exactly when configure made a model with seeded random weights
        return text
    return ("The weights are seeded random numbers, so the generated text means nothing: random "
            "token ids, many of them pieces of multi-byte characters, which decode to '\ufffd' "
            "(the replacement character) on their own. Timings and the tensor-parallel checks do "
            "not depend on the text.\n\n" + text)
