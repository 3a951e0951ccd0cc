"""The vision-prefix A/B: does a position-interpolation change move TTFT in a served VLM?

One server holds the tower and serves each configuration as a model name (``NAME:INTERP@SIZE``),
so A and B share the process, the weights and the warm caches. Rounds alternate the order (A then
B, then B then A, ...) so that drift in the machine lands on both; each round's delta is B's mean
TTFT over A's, and the noise band is the spread of the rounds' deltas. Beside it, the same change of
the server's own prefill span (batch start to first token: tower, projection and prefill, without
the queueing that TTFT under load holds), where the server keeps a clock. The seed's claim (vLLM
Qwen-VL, 10 requests/s: TTFT -10 to -15 % overall; -3 to -5 % at 384 px, -8 to -12 % at 512 px,
-15 to -20 % at 1024 px) is checked against the deltas measured here, on this workbook's
VLM-shaped stack with seeded random weights, not on vLLM.
"""
from __future__ import annotations

import statistics

from workbook.experiments.serving import (
    Config,
    drive,
    save_vllm_result,
    server_options,
    summarize,
)

# The seed's claimed TTFT change of B (gather4) against A (hf_bicubic), in %, per image size.
CLAIMS = {384: (-5.0, -3.0), 512: (-12.0, -8.0), 1024: (-20.0, -15.0)}
LABEL = "measured on the workbook's VLM-shaped stack (seeded random weights), not on vLLM"


def ab_items(cfg: Config):
    from workbook.serve.bench import Item

    p = cfg.p
    a, b = p.ab_interps
    items = []
    for rnd in range(p.ab_rounds):
        order = (a, b) if rnd % 2 == 0 else (b, a)
        for size in p.ab_sizes:
            for interp in order:
                items.append(Item(f"{interp}@{size} round {rnd + 1}",
                                  f"{cfg.served}:{interp}@{size}", "poisson", p.ab_rate,
                                  p.ab_requests, p.max_seconds, seed=p.seed + 100 + rnd,
                                  group="ab", config=interp, round=rnd + 1))
    return items


def run(cfg: Config, rec, log=print) -> list[dict]:
    """Every round of every size and configuration against one vision server; a row each."""
    p = cfg.p
    if not p.vision_tower or cfg.external:
        rec.not_measured("the vision-prefix A/B", "vision_tower is empty" if not p.vision_tower
                         else "the server at url is not workbook serve (its model names carry "
                              "no image prefix)")
        return []
    done = rec.done_group("ab_rounds", timed=True)
    if done is not None:
        return done
    variants = [(s, i) for s in p.ab_sizes for i in p.ab_interps]
    options = server_options(cfg, context=cfg.ab_context(), vision=variants)
    items, _ = drive(cfg, rec, "ab", ab_items(cfg), options, log)
    rows = []
    for item in items:
        size = int(item["model"].rsplit("@", 1)[1])
        row = {**summarize(item, p.slo_ms), "config": item["config"], "size": size,
               "round": item["round"]}
        save_vllm_result(row, rec.run_dir / "vllm", {"backend": "openai",
                                                     "model_id": item["model"]})
        rows.append(row)
    rec.keys("ab_rounds", ["config", "size", "round"])
    rec.add_group("ab_rounds", rows)
    return rows


def deltas(cfg: Config, rows: list[dict]) -> list[dict]:
    """Per size: A's and B's mean TTFT over the rounds, B's change per round, its mean and band."""
    a, b = cfg.p.ab_interps
    out = []
    for size in sorted({r["size"] for r in rows}):
        per = {}
        for r in rows:
            if r["size"] == size and r["mean_ttft_ms"] is not None:
                per.setdefault(r["round"], {})[r["config"]] = r
        changes = [100 * (x[b]["mean_ttft_ms"] / x[a]["mean_ttft_ms"] - 1)
                   for x in per.values() if a in x and b in x]
        tpot = [100 * (x[b]["mean_tpot_ms"] / x[a]["mean_tpot_ms"] - 1)
                for x in per.values() if a in x and b in x
                and x[a]["mean_tpot_ms"] and x[b]["mean_tpot_ms"]]
        mean = statistics.fmean(changes) if changes else None
        # the server's own span from the batch's start to the first token: tower, projection and
        # prefill without the queueing that TTFT under load also holds (None: no server clock)
        pre = [100 * (x[b]["server_mean_prefill_ms"] / x[a]["server_mean_prefill_ms"] - 1)
               for x in per.values() if a in x and b in x
               and x[a].get("server_mean_prefill_ms") and x[b].get("server_mean_prefill_ms")]
        pre_mean = statistics.fmean(pre) if pre else None
        out.append({"size": size, "rounds": len(changes),
                    f"{a}_ttft_ms": _mean(x[a]["mean_ttft_ms"] for x in per.values() if a in x),
                    f"{b}_ttft_ms": _mean(x[b]["mean_ttft_ms"] for x in per.values() if b in x),
                    "ttft_change_pct": mean,
                    "band_low_pct": min(changes) if changes else None,
                    "band_high_pct": max(changes) if changes else None,
                    "tpot_change_pct": statistics.fmean(tpot) if tpot else None,
                    "verdict": _verdict(mean, changes),
                    "server_prefill_change_pct": pre_mean,
                    "server_prefill_band_pct": (f"{min(pre):.1f} to {max(pre):.1f}" if pre
                                                else None),
                    "server_prefill_verdict": _verdict(pre_mean, pre) if pre else
                    "not measured: the server keeps no clock"})
    return out


def _mean(values):
    v = list(values)
    return statistics.fmean(v) if v else None


def _verdict(mean, changes) -> str:
    if mean is None:
        return "not measured"
    lo, hi = min(changes), max(changes)
    if len(changes) < 2:
        return "one round: no noise band"
    if lo <= 0 <= hi:
        return "no change beyond the rounds' spread"
    return "B faster" if hi < 0 else "B slower"


def claim_check(cfg: Config, d: list[dict]) -> list[dict]:
    """The seed's claim per size against the measured change of TTFT."""
    a, b = cfg.p.ab_interps
    by_size = {r["size"]: r for r in d}
    rows = []
    for size, (lo, hi) in CLAIMS.items():
        r = by_size.get(size)
        got = r["ttft_change_pct"] if r else None
        if (a, b) != ("hf_bicubic", "gather4"):
            verdict = f"not checked: the claim is gather4 against hf_bicubic, not {b} against {a}"
        elif got is None:
            verdict = "not measured: size not in ab_sizes"
        else:
            verdict = _against(got, r["band_low_pct"], r["band_high_pct"], lo, hi)
        rows.append({"image_size": size, "claimed_pct": f"{lo:g} to {hi:g}",
                     "measured_pct": got, "band": (f"{r['band_low_pct']:.1f} to "
                                                   f"{r['band_high_pct']:.1f}" if got is not None
                                                   else ""),
                     "verdict": verdict, "where": LABEL})
    return rows


def _against(got, band_lo, band_hi, lo, hi) -> str:
    if lo <= got <= hi:
        return "within the claim"
    if band_lo <= hi and band_hi >= lo:
        return "consistent with the claim within the rounds' spread"
    return ("not reproduced: TTFT fell less than claimed (or rose)" if band_lo > hi
            else "TTFT fell more than claimed")


def figure(cfg: Config, d: list[dict]):
    import plotly.graph_objects as go

    a, b = cfg.p.ab_interps
    fig = go.Figure(go.Scatter(
        x=[str(r["size"]) for r in d], y=[r["ttft_change_pct"] for r in d], mode="markers",
        name=f"{b} vs {a}", error_y=dict(type="data", symmetric=False,
                                         array=[r["band_high_pct"] - r["ttft_change_pct"]
                                                for r in d],
                                         arrayminus=[r["ttft_change_pct"] - r["band_low_pct"]
                                                     for r in d])))
    claimed = [(s, lo, hi) for s, (lo, hi) in CLAIMS.items() if s in {r["size"] for r in d}]
    if claimed:
        fig.add_trace(go.Bar(x=[str(s) for s, _, _ in claimed],
                             y=[hi - lo for _, lo, hi in claimed],
                             base=[lo for _, lo, _ in claimed], name="seed's claim",
                             opacity=0.3, width=0.4))
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(title=f"TTFT change of {b} against {a} (mean over rounds, band: "
                            "the rounds' spread)", xaxis_title="image size (px)",
                      yaxis_title="TTFT change (%)", showlegend=True)
    return fig


def headline(rec, d: list[dict]) -> dict:
    return {f"ttft_change_pct_{r['size']}px": r["ttft_change_pct"] for r in d}
