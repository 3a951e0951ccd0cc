"""Where a served request's time goes: the engine alone, the server's own clock, the client.

The load generator times each request from outside (sent, first chunk, last chunk). The server
times the same requests from inside (:mod:`workbook.serve.clock`: arrival, batch start, first
and last token handed out by the engine's thread), and its ``/metrics`` is read around each
benchmark. Laid beside the engine alone, the three accounts split a request's time: what the
engine's thread spends beyond the engine measured alone (queueing, the steps as served), and what
lies between the server's clock and the client's (the event loop, HTTP, server-sent events and the
client's own parsing). Means throughout: the server's histograms give each span's sum and count.
Where the server ran on this machine's GPU, each benchmark's SM clock (mean, lowest, what held it
down) sits beside them: a GPU that idles between requests may serve the next one at a lower clock.
"""
from __future__ import annotations

CLOCK_COLUMNS = ["benchmark", "server_requests", "server_mean_queue_ms", "server_mean_prefill_ms",
                 "server_mean_ttft_ms", "mean_ttft_ms", "server_mean_tpot_ms", "mean_tpot_ms",
                 "server_mean_e2el_ms", "mean_e2el_ms", "client_minus_server_e2el_ms",
                 "gpu_sm_clock_mhz", "gpu_sm_clock_min_mhz", "gpu_clock_reasons"]


def per_benchmark(rec, load_rows: list[dict]) -> list[dict]:
    """Each benchmark's means on the server's clock beside the client's; [] (and a not-measured
    entry) when the server keeps no request histograms at ``/metrics``."""
    rows = []
    for r in load_rows:
        if r.get("server_requests"):
            gap = (r["mean_e2el_ms"] - r["server_mean_e2el_ms"]
                   if r.get("mean_e2el_ms") is not None
                   and r.get("server_mean_e2el_ms") is not None else None)
            row = {**{k: r.get(k) for k in CLOCK_COLUMNS}, "client_minus_server_e2el_ms": gap}
            rows.append({k: v for k, v in row.items() if v is not None or
                         not k.startswith("gpu_")})  # the GPU's clock where it was read
    why = next((r["gpu_unavailable"] for r in load_rows if r.get("gpu_unavailable")), None)
    if why:
        rec.not_measured("the GPU's SM clock per benchmark", why)
    if load_rows and not rows:
        rec.not_measured("the server's own clock per benchmark",
                         "the server answered no request histograms at /metrics (workbook serve "
                         "and vLLM keep them)")
    return rows


def batch1(direct_rows: list[dict], load_rows: list[dict]) -> list[dict]:
    """One request at a time: each span as the engine alone, the server's clock and the client
    see it (means), and the two differences; [] without the engine alone or the server's clock."""
    one, seq = batch1_rows(direct_rows, load_rows)
    if one is None or seq is None or not seq.get("server_requests") or not seq.get("completed"):
        return []
    made, e2el_ms = engine_e2el(one, seq)
    step = one["decode_step_ms_p50"]
    spans = [
        ("queue (arrival to the batch's start)", 0.0, seq.get("server_mean_queue_ms"), None),
        ("prefill (the batch's start to the first token)", one["prefill_ms"],
         seq.get("server_mean_prefill_ms"), None),
        ("TTFT", one["prefill_ms"], seq.get("server_mean_ttft_ms"), seq.get("mean_ttft_ms")),
        ("TPOT", step, seq.get("server_mean_tpot_ms"), seq.get("mean_tpot_ms")),
        (f"E2EL ({made:.0f} tokens)", e2el_ms,
         seq.get("server_mean_e2el_ms"), seq.get("mean_e2el_ms")),
    ]
    out = []
    for name, engine, server, client in spans:
        out.append({"span": name, "engine_alone_ms": engine, "server_clock_ms": server,
                    "client_ms": client,
                    "server_minus_engine_ms": None if server is None else server - engine,
                    "client_minus_server_ms": (None if server is None or client is None
                                               else client - server)})
    return out


def headline(rows: list[dict]) -> dict:
    """The batch-1 request's E2EL split: ms the engine's thread adds, ms outside it."""
    e2el = next((r for r in rows if r["span"].startswith("E2EL")), None)
    if e2el is None:
        return {}
    return {"batch1_e2el_server_minus_engine_ms": e2el["server_minus_engine_ms"],
            "batch1_e2el_client_minus_server_ms": e2el["client_minus_server_ms"]}


def batch1_rows(direct_rows: list[dict], load_rows: list[dict]) -> tuple[dict | None, dict | None]:
    """The engine alone at batch 1 and the one-at-a-time run through the server (None: absent)."""
    return (next((r for r in direct_rows if r["batch"] == 1), None),
            next((r for r in load_rows if r["group"] == "sequential"), None))


def engine_e2el(one: dict, seq: dict) -> tuple[float, float]:
    """(tokens a request made, the engine alone's time for such a request: prefill plus a step
    a token after the first)."""
    made = seq["total_output_tokens"] / seq["completed"]
    return made, one["prefill_ms"] + (made - 1) * one["decode_step_ms_p50"]


def overhead(direct_rows: list[dict], load_rows: list[dict]) -> list[dict]:
    """Batch 1 through the server (one request at a time) against the engine alone."""
    one, seq = batch1_rows(direct_rows, load_rows)
    if one is None or seq is None or seq["median_ttft_ms"] is None:
        return []
    out = [{"metric": "TTFT vs prefill", "engine_ms": one["prefill_ms"],
            "server_ms": seq["median_ttft_ms"]},
           {"metric": "TPOT vs decode step", "engine_ms": one["decode_step_ms_p50"],
            "server_ms": seq["median_tpot_ms"]}]
    if seq.get("completed") and seq.get("median_e2el_ms") is not None:
        # the whole request, which does not depend on when the server's text counts as a token
        made, engine_ms = engine_e2el(one, seq)
        out.append({"metric": f"E2EL vs prefill + {made - 1:.0f} steps", "engine_ms": engine_ms,
                    "server_ms": seq["median_e2el_ms"]})
    for r in out:
        r["overhead_pct"] = (100 * (r["server_ms"] / r["engine_ms"] - 1)
                             if r["engine_ms"] and r["server_ms"] is not None else None)
    return out


# What a GPU run of the 7B shape is held to: batch-1 decode at no less than this share of the
# weight-read roofline measured in the same run, and TTFT and TPOT through the server within this
# many percent of the engine alone.
TARGETS = {"decode_share": 0.80, "overhead_pct": 10.0}


def targets(rec, direct_rows: list[dict], over: list[dict], device: str) -> list[dict]:
    """Each target, the run's figure and whether it is met, recorded as ``targets``; [] off CUDA,
    where the share of a roofline and a server's overhead on a tiny model sharing the host's
    cores say nothing about them. A figure the run did not measure is left out."""
    if device != "cuda":
        return []
    out = []
    one, _ = batch1_rows(direct_rows, [])
    if one is not None and one.get("share_of_roofline") is not None:
        share, bar = one["share_of_roofline"], TARGETS["decode_share"]
        row = {"target": "batch-1 decode step as served, share of the roofline",
               "bar": f">= {100 * bar:.0f} %", "measured_pct": 100 * share,
               "met": "yes" if share >= bar else "no", "note": ""}
        if one.get("device_share_of_roofline") is not None:
            row["note"] = (f"steps back to back on the device: "
                           f"{100 * one['device_share_of_roofline']:.1f} %")
        out.append(row)
    bar = TARGETS["overhead_pct"]
    for r in over:
        if r["metric"].split()[0] not in ("TTFT", "TPOT") or r["overhead_pct"] is None:
            continue
        out.append({"target": f"batch-1 {r['metric']} through the server",
                    "bar": f"<= +{bar:.0f} %", "measured_pct": r["overhead_pct"],
                    "met": "yes" if r["overhead_pct"] <= bar else "no",
                    "note": f"{r['server_ms']:.2f} ms against {r['engine_ms']:.2f} ms"})
    if out:
        rec.keys("targets", ["target"])
    for r in out:
        rec.add("targets", r)
    return out
