"""Rows of the siglip_neuron report, shaped from what run_matrix measured.

Kept apart from the experiment's steps so that the measuring code stays short: these functions bin
the output differences, spread memory figures into columns and reshape recorded rows for the
notebook's tables and figures; none of them measures anything.
"""
from __future__ import annotations

import torch

HIST_EDGES = [10.0 ** (e / 4) for e in range(-40, 1)]  # 1e-10 .. 1, four bins a decade


def error_histogram(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Counts of |out - ref| per log-spaced bin (exact zeros counted apart), for the histogram."""
    d = (out.double() - ref.double()).abs().flatten()
    edges = torch.tensor(HIST_EDGES, dtype=torch.float64)
    idx = torch.bucketize(d[d > 0], edges)
    counts = torch.bincount(idx, minlength=len(edges) + 1).tolist()
    return {"zero_count": int((d == 0).sum()), "bin_upper_edges": HIST_EDGES + [float("inf")],
            "counts": counts}


def flat_memory(mem: dict) -> dict:
    """CUDA figures are flat already; the Neuron per-core list becomes per-core columns."""
    out = {k: v for k, v in mem.items() if not isinstance(v, list)}
    for core in mem.get("neuron_cores", []):
        name = core.get("core", "?").replace(":", "_")
        for k, v in core.items():
            if k != "core" and isinstance(v, (int, float)):
                out[f"{name}_{k}"] = v
    return out


def summary(rows: list[dict], cpu_rows: list[dict]) -> list[dict]:
    """The seed report's shape: one line per configuration."""
    out = [{"configuration": f"cpu eager float32 ×{r['threads']} threads, batch {r['batch']}",
            "compile_s": None, "first_inference_s": None, "latency_ms_p50": r["latency_median_ms"],
            "ms_per_image": r["ms_per_image"], "throughput_img_s": r["throughput_img_s"],
            "speedup_vs_cpu": 1.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0, "rel_l2_err": 0.0,
            "accuracy": "reference"} for r in cpu_rows]
    for r in rows:
        verdict = "pass" if r["accuracy_pass"] else "FAIL"
        out.append({
            "configuration": f"{r['backend']} {r['mode']} {r['dtype']} ×{r['cores']}, "
                             f"batch {r['batch']} (cache {r['cache']})",
            "compile_s": r["compile_s"], "first_inference_s": r["first_inference_s"],
            "latency_ms_p50": r["latency_median_ms"], "ms_per_image": r["ms_per_image"],
            "throughput_img_s": r["throughput_img_s"],
            "speedup_vs_cpu": r["speedup_vs_cpu_same_batch"] or r["speedup_vs_cpu_best"],
            "max_abs_diff": r["max_abs_diff"], "mean_abs_diff": r["mean_abs_diff"],
            "rel_l2_err": r["rel_l2_err"],
            "accuracy": f"{verdict} (rel L2 ≤ {r['tolerance_rel_l2']:g})"})
    return out


def throughput_rows(rows: list[dict], cpu_rows: list[dict]) -> list[dict]:
    """Throughput against batch size, one series per configuration; the CPU fp32 reference is a
    series of its own (on a CPU run it would otherwise share the eager fp32 run's name and the two
    lines would zig-zag)."""
    out = [{"series": "CPU fp32 reference", "batch": r["batch"],
            "throughput_img_s": r["throughput_img_s"]} for r in cpu_rows]
    out += [{"series": f"{r['backend']} {r['mode']} {r['dtype']}", "batch": r["batch"],
             "throughput_img_s": r.get("throughput_img_s")}
            for r in rows if r.get("throughput_img_s") is not None]
    return out


def histogram_rows(hist: list[dict]) -> list[dict]:
    """Long-format rows (configuration, bin upper edge, count) for plotting; empty bins left out."""
    out = []
    for h in hist:
        name = f"{h['mode']} {h['dtype']} b{h['batch']}"
        for edge, count in zip(h["bin_upper_edges"], h["counts"]):
            if count and edge is not None and edge != float("inf"):
                out.append({"configuration": name, "abs_diff_upper": edge, "count": count})
    return out


def memory_rows(rows: list[dict]) -> list[dict]:
    keep = ("mode", "dtype", "batch", "host_rss_mb")
    return [{k: v for k, v in r.items() if k in keep or k.endswith("_mb")} for r in rows]
