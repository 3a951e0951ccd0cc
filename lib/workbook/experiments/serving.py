"""The serving experiment: how fast a loaded model answers under load, measured end to end.

Three measurements, each in processes of their own (the kernel only reads their files):

1. The engine alone (:mod:`workbook.serve.direct`): prefill and decode per batch size, the device's
   copy bandwidth and the share of the weight-read roofline each decode step reaches.
2. The server under load: ``workbook serve`` (or any OpenAI-compatible server at ``url``) driven by
   GuideLLM (:mod:`workbook.serve.bench`) with Poisson arrivals at each request rate, one
   request at a time, and a concurrency-bound run; metrics as ``vllm bench serve`` defines them
   (:mod:`workbook.serve.metrics`), also written under its ``--save-result`` field names.
3. The vision-prefix A/B (:mod:`workbook.experiments.serving_ab`).

The server's own overhead is its batch-1 TTFT and TPOT against the engine's prefill and decode step;
:mod:`workbook.experiments.serving_split` splits it with the server's own clock.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from workbook import console
from workbook.errors import bad_param
from workbook.experiments.serving_split import batch1_rows
from workbook.spec import Values
from workbook.specs.serving import BACKENDS

SEQUENTIAL_REQUESTS = 8  # requests of the one-at-a-time run (batch 1 through the server)


@dataclass
class Config:
    p: Values
    device: str  # cuda or cpu ("" with url)
    device_reason: str
    dtype: str
    model: str  # the folder workbook serve loads ("" with url)
    model_note: str
    served: str  # the model name requests carry
    answered_by: dict = field(default_factory=dict)  # /v1/models of a url server
    patch: int = 0  # the vision tower's patch size (0: no A/B)
    notes: list[str] = field(default_factory=list)

    @property
    def external(self) -> bool:
        return bool(self.p.url)

    def ab_context(self) -> int:
        p = self.p
        return max((s // self.patch) ** 2 for s in p.ab_sizes) + p.prompt_tokens + p.output_tokens


def _models_of(url: str) -> dict:
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", timeout=10)
        r.raise_for_status()
        return r.json()
    except Exception as e:  # noqa: BLE001 - any failure: the url does not serve
        raise bad_param("url", url, f"an OpenAI-compatible server answering GET /v1/models "
                        f"({type(e).__name__}: {str(e)[:160]})") from None


def configure(P: Values) -> Config:
    """Every rule between the parameters, the model and the machine, before anything starts."""
    from workbook.serve.metrics import check_slos

    check_slos(P.slo_ms)
    if P.vision_tower and (len(P.ab_interps) != 2 or P.ab_interps[0] == P.ab_interps[1]):
        raise bad_param("ab_interps", P.ab_interps, "two different implementations, A and B")
    if P.url:
        return _configure_url(P)
    from workbook import targets
    from workbook.models import mistral

    model, note = P.model, ""
    if not model or model in mistral.SHAPES:
        model, note = mistral.workbook_model(model)
    config = mistral.load_config(model)
    target = targets.resolve(P.backend, param="backend", choices=BACKENDS)
    dtype = P.dtype if P.dtype != "auto" else ("bfloat16" if target.name == "cuda" else "float32")
    if P.compile and target.name != "cuda":
        raise bad_param("compile", P.compile, "False unless the backend is cuda (the compiled "
                        "step is captured in CUDA graphs)")
    need = P.prompt_tokens + P.output_tokens
    if P.context < need:
        raise bad_param("context", P.context, f"at least prompt_tokens + output_tokens ({need})")
    if P.context > config.max_position_embeddings:
        raise bad_param("context", P.context,
                        f"at most the model's {config.max_position_embeddings} positions")
    if P.tp_degree > 1:
        from workbook.llm import shard

        ok = shard.degrees(config, "local_shards")
        if P.tp_degree not in ok:
            raise bad_param("tp_degree", P.tp_degree, "a degree that splits this model's heads "
                            "and MLP: " + ", ".join(map(str, ok)))
        if P.tp_degree > target.devices:
            raise bad_param("tp_degree", P.tp_degree, f"at most the {target.devices} "
                            f"{target.unit} here (one rank each)")
    cfg = Config(P, target.name, target.reason, dtype, model, note, Path(model).name,
                 notes=[n for n in (note,) if n])
    if P.vision_tower:
        from workbook.models.siglip import patch_size

        cfg.patch = patch_size(P.vision_tower)
        small = [s for s in P.ab_sizes if s < cfg.patch]
        if small:
            raise bad_param("ab_sizes", P.ab_sizes, f"sizes of at least one patch ({cfg.patch} px)")
        if cfg.ab_context() > config.max_position_embeddings:
            raise bad_param("ab_sizes", P.ab_sizes, f"sizes whose image tokens, prompt and output "
                            f"fit the model's {config.max_position_embeddings} positions (the "
                            f"largest needs {cfg.ab_context()})")
    return cfg


def _configure_url(P: Values) -> Config:
    listed = _models_of(P.url)
    names = [m.get("id") for m in listed.get("data", []) if m.get("id")]
    if not names:
        raise bad_param("url", P.url, "a server whose /v1/models lists at least one model")
    served = P.served_model or names[0]
    if served not in names:
        raise bad_param("served_model", served, "one of the models the server lists: "
                        + ", ".join(names))
    notes = [f"driving the server at {P.url}; it lists {', '.join(names)}"]
    if not P.tokenizer:
        notes.append("prompts are sized with the workbook's byte-level tokenizer (tokenizer is "
                     "empty): token counts come from the server's usage")
    cfg = Config(P, "", "", "", "", "", served, answered_by=listed, notes=notes)
    return cfg


def start_record(cfg: Config, rec) -> str:
    from workbook.paths import shown

    if cfg.external:
        rec.set(answered_by=cfg.served, url=cfg.p.url, server="external")
    else:
        rec.set(backend=cfg.device, backend_reason=cfg.device_reason, model=shown(cfg.model),
                served_model=cfg.served, dtype=cfg.dtype, server="workbook serve")
    for n in cfg.notes:
        rec.note(n)
    lines = list(cfg.notes)
    if not cfg.external:
        lines.append(f"backend: {cfg.device}: {cfg.device_reason}; dtype {cfg.dtype}")
    return "\n".join(lines)


# -- pieces shared with the A/B -----------------------------------------------------------------
def server_options(cfg: Config, *, context: int, vision: list[tuple[int, str]] = ()) -> list[str]:
    p = cfg.p
    opts = ["--model", cfg.model, "--device", cfg.device, "--dtype", cfg.dtype,
            "--max-batch", str(p.max_batch), "--max-queue", str(max(64, 4 * p.max_batch)),
            "--context", str(context), "--seed", str(p.seed)]
    if p.compile:
        opts.append("--compile")
    if p.compile_prefill:
        opts.append("--compile-prefill")
    if p.tp_degree > 1:
        opts += ["--tp-degree", str(p.tp_degree)]
    if vision:
        opts += ["--vision-tower", p.vision_tower, "--vision-depth", str(p.vision_depth),
                 "--vision-variants", ",".join(f"{s}:{i}" for s, i in vision)]
    return opts


def tokenizer_dir(cfg: Config, run_dir: Path) -> str:
    if cfg.p.tokenizer:
        return cfg.p.tokenizer
    from workbook.models.mistral import write_byte_tokenizer

    path = run_dir / "tokenizer"
    if not (path / "tokenizer.json").exists():
        write_byte_tokenizer(path)
    return str(path)


def summarize(item: dict, slo_ms: dict) -> dict:
    """One benchmark's row: what it was, how arrivals went, vLLM's metrics."""
    from workbook.serve import bench
    from workbook.serve.metrics import summary

    s = summary(bench.timings(item), bench.duration_s(item), slo_ms)
    a = bench.arrivals(item)
    return {"benchmark": item["label"], "kind": item["kind"], "value": item["value"],
            "achieved_rate": a["achieved_rate"], "gap_cv": a["gap_cv"], **s,
            **(item.get("server_clock") or {}),  # the server's own means (serving_split)
            **{f"gpu_{k}": v for k, v in (item.get("gpu") or {}).items()}}


def save_vllm_result(row: dict, folder: Path, extra: dict) -> None:
    """The row under ``vllm bench serve --save-result``'s names, one file per benchmark."""
    from workbook.record import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    name = row["benchmark"].replace(" ", "-").replace("/", "-").replace("@", "-")
    keep = {k: v for k, v in row.items() if k not in ("benchmark", "kind", "value")}
    rate = row["value"] if row["kind"] == "poisson" else "inf"
    conc = int(row["value"]) if row["kind"] == "concurrent" else None
    write_json_atomic(folder / f"{name}.json", {
        **extra, "request_rate": rate, "burstiness": 1.0, "max_concurrency": conc, **keep})


# -- 1. the engine alone -------------------------------------------------------------------------
def direct(cfg: Config, rec) -> list[dict]:
    """Prefill and decode per batch size, without HTTP, and the roofline (not with url)."""
    from workbook import proc
    from workbook.errors import WorkbookError

    p = cfg.p
    why = ("the server is external" if cfg.external else "batches is empty" if not p.batches
           else "it runs one process, and tp_degree is above 1" if p.tp_degree > 1 else "")
    if why:
        rec.not_measured("the engine alone (prefill, decode, roofline)", why)
        return []
    facts = rec.done_group("roofline", timed=True)  # recorded after the rows, so both are there
    if facts:
        rec.set(**{k: v for k, v in facts[0].items() if k != "resumed_from"})
        return rec.done_group("direct", timed=True)
    folder = rec.run_dir / "direct"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"engine": {"model": cfg.model, "dtype": cfg.dtype, "device": cfg.device,
                       "max_batch": max(p.batches), "context": p.context, "compile": p.compile,
                       "compile_prefill": p.compile_prefill},
            "batches": sorted(set(p.batches)), "prompt_tokens": p.prompt_tokens,
            "output_tokens": p.output_tokens,
            "copy_bytes": 2**30 if cfg.device == "cuda" else 2**28}
    (folder / "config.json").write_text(json.dumps(spec))
    import sys

    r = proc.run([sys.executable, "-m", "workbook.serve.direct", str(folder / "config.json"),
                  str(folder / "result.json")], log=folder / "direct.log", timeout_s=p.timeout_s,
                 relay=console.relay)
    if r.returncode != 0:
        how = "timed out" if r.timed_out else f"exit code {r.returncode}"
        raise WorkbookError(f"The engine measurement failed ({how}); last lines of its log:\n"
                            f"{proc.tail_text(folder / 'direct.log')}")
    res = json.loads((folder / "result.json").read_text())
    facts = {"copy_gb_s": res["copy_gb_s"], "weight_gb_per_step": res["weight_gb_per_step"],
             "roofline_tokens_s": res["roofline_tokens_s"], "device_name": res["device_name"],
             "scheduling": res["engine"]["scheduling"], "step": res["engine"]["step"]}
    rec.set(**facts)
    rows = [{**r, "roofline_tokens_s": res["roofline_tokens_s"]} for r in res["rows"]]
    rec.keys("direct", ["batch"])
    rec.add_group("direct", rows)
    rec.add_group("roofline", [facts])
    return rows


# -- 2. the server under load ----------------------------------------------------------------------
def load_items(cfg: Config):
    from workbook.serve.bench import Item

    p = cfg.p
    items = [Item(f"rate {r:g}", cfg.served, "poisson", r, p.max_requests, p.max_seconds,
                  seed=p.seed + i, group="rates") for i, r in enumerate(p.request_rates)]
    items.append(Item("one at a time", cfg.served, "concurrent", 1,
                      min(p.max_requests, SEQUENTIAL_REQUESTS), p.max_seconds, group="sequential"))
    if p.concurrency:
        items.append(Item(f"concurrency {p.concurrency}", cfg.served, "concurrent",
                          p.concurrency, p.max_requests, p.max_seconds, group="concurrency"))
    return items


def drive(cfg: Config, rec, name: str, items, options: list[str] | None, log=print):
    """GuideLLM runs ``items`` (in ``rec.run_dir / name``) against a workbook serve started with
    ``options``, or against ``url`` when ``options`` is None; (every item's records, tokenizer)."""
    from workbook.serve import bench
    from workbook.serve.process import ServerProcess

    p = cfg.p
    folder = rec.run_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    plan = bench.Plan(p.url, tokenizer_dir(cfg, rec.run_dir), p.prompt_tokens, p.output_tokens,
                      items, gpu=options is not None and cfg.device == "cuda")
    if options is None:
        return bench.run(plan, folder, log_file=folder / "guidellm.log",
                         timeout_s=p.timeout_s, relay=console.relay), plan.tokenizer
    with ServerProcess(options, folder / "server.log", start_timeout_s=p.timeout_s,
                       relay=console.relay) as server:
        log(f"server up at {server.url}; {len(items)} benchmarks from the load generator")
        plan.url = server.url
        return bench.run(plan, folder, log_file=folder / "guidellm.log",
                         timeout_s=p.timeout_s, relay=console.relay), plan.tokenizer


def load(cfg: Config, rec, log=print) -> list[dict]:
    """Every rate, one at a time, and the concurrency run against one server; a row each."""
    p = cfg.p
    done = rec.done_group("load", timed=True)
    if done is not None:
        return done
    options = None if cfg.external else server_options(cfg, context=p.context)
    items, tokenizer = drive(cfg, rec, "load", load_items(cfg), options, log)
    rows = []
    for item in items:
        row = {**summarize(item, p.slo_ms), "group": item["group"]}
        save_vllm_result(row, rec.run_dir / "vllm", {"backend": "openai", "model_id": cfg.served,
                                                     "tokenizer_id": tokenizer})
        rows.append(row)
    rec.keys("load", ["benchmark"])
    rec.add_group("load", rows)
    return rows


def roofline(rec) -> list[dict]:
    """The engine-alone run's device, copy bandwidth, weights per step and scheduling, as a row."""
    return [{k: rec.data[k] for k in ("device_name", "copy_gb_s", "weight_gb_per_step",
                                      "roofline_tokens_s", "step", "scheduling")}]


LOAD_COLUMNS = ["benchmark", "achieved_rate", "gap_cv", "completed", "failed",
                "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms",
                "mean_itl_ms", "median_e2el_ms", "p99_e2el_ms", "request_throughput",
                "output_throughput", "request_goodput"]
DIRECT_COLUMNS = ["batch", "prefill_ms", "decode_step_ms_p50", "decode_step_ms_p90",
                  "decode_tokens_s_per_seq", "decode_tokens_s_total", "weight_gb_s",
                  "share_of_roofline", "device_step_ms", "device_share_of_roofline"]


def direct_columns(rows: list[dict]) -> list[str]:
    """The engine-alone table's columns that hold figures (the step alone is timed on GPUs)."""
    return [c for c in DIRECT_COLUMNS if any(r.get(c) is not None for r in rows)]


def headline(rec, direct_rows, load_rows, over, extra: dict | None = None) -> None:
    head = dict(extra or {})
    one, seq = batch1_rows(direct_rows, load_rows)
    if seq:
        head.update(batch1_ttft_ms=seq["median_ttft_ms"], batch1_tpot_ms=seq["median_tpot_ms"])
    if load_rows:
        head["peak_output_tokens_s"] = max(r["output_throughput"] for r in load_rows)
    if one:
        head["batch1_share_of_roofline"] = one["share_of_roofline"]
    for r in over:
        head["server_overhead_pct_" + r["metric"].split()[0].lower()] = r["overhead_pct"]
    rec.headline(**head)


def load_figure(rows: list[dict]):
    """TTFT and TPOT percentiles and throughput against the Poisson request rate."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from workbook import plots

    rates = sorted((r for r in rows if r["kind"] == "poisson"), key=lambda r: r["value"])
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=("TTFT (ms)", "TPOT (ms)", "output tokens/s"))
    x = [r["value"] for r in rates]
    for col, metric in ((1, "ttft"), (2, "tpot")):
        for i, q in enumerate(("median", "p90", "p99")):
            fig.add_trace(go.Scatter(x=x, y=[r[f"{q}_{metric}_ms"] for r in rates],
                                     mode="lines+markers", name=f"{metric.upper()} {q}",
                                     line={"color": plots.color(i),
                                           "dash": ("solid", "dot")[col - 1]}),
                          row=1, col=col)
    fig.add_trace(go.Scatter(x=x, y=[r["output_throughput"] for r in rates], mode="lines+markers",
                             name="output tokens/s", line=dict(color=plots.color(3))), row=1, col=3)
    fig.update_xaxes(title_text="request rate (requests/s, Poisson)")
    fig.update_layout(title="Latency and throughput against request rate", showlegend=True)
    return fig


def direct_figure(rows: list[dict]):
    """Decode throughput per batch size, and each step's share of the weight-read roofline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from workbook import plots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("decode tokens/s (all sequences)",
                                        "share of the weight-read roofline"))
    x = [r["batch"] for r in rows]
    fig.add_trace(go.Scatter(x=x, y=[r["decode_tokens_s_total"] for r in rows],
                             mode="lines+markers", name="decode tokens/s",
                             line=dict(color=plots.color(0))), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[r["share_of_roofline"] for r in rows], mode="lines+markers",
                             name="share of roofline, served step",
                             line=dict(color=plots.color(1))), row=1, col=2)
    if any(r.get("device_share_of_roofline") for r in rows):
        fig.add_trace(go.Scatter(x=x, y=[r.get("device_share_of_roofline") for r in rows],
                                 mode="lines+markers", name="share of roofline, step alone",
                                 line=dict(color=plots.color(2), dash="dot")), row=1, col=2)
    fig.update_xaxes(title_text="batch size", type="log", tickvals=x)
    fig.update_yaxes(tickformat=".3~%", rangemode="tozero", row=1, col=2)
    fig.update_layout(title="The engine alone: decode against batch size", showlegend=True)
    return fig
