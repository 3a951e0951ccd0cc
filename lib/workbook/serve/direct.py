"""The engine without HTTP: prefill and decode per batch size, and the roofline they sit under.

``python -m workbook.serve.direct CONFIG.json OUT.json`` loads the engine the server would load
(same model, dtype, cache, compiled step; CONFIG's ``inductor`` sets torch inductor options first,
to try one on the decode step), then for each batch size runs one batch the way the
server does (the tokens of every step go to the host) and times each decode step and its prefill
(the median of a few batches: one prefill is one sample),
and on a GPU the step alone (steps back to back on the device), whose difference is host overhead.
Beside it, the device's copy bandwidth is measured (bytes read and written per second by a plain
device-to-device copy, best of several), and each decode figure is put against the weight-read
limit it implies: weights read per step / bandwidth is the shortest a step can be.

What these numbers are for: the server's batch-1 TTFT and TPOT against this process's prefill and
decode step give the server's own overhead; the batch curve shows where decoding stops being
bound by reading the weights.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

PREFILL_REPEATS = 5  # prefills timed a batch size; the median is reported


def copy_bandwidth(device, nbytes: int, repeats: int = 8) -> dict:
    """GB/s (1e9) of a device-to-device copy, counting the bytes read and the bytes written."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy warms up
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            s = a.elapsed_time(b) / 1e3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            s = time.perf_counter() - t0
        best = min(best, s)
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    return {"copy_gb_s": moved / 1e9 / best, "copy_bytes": moved, "copy_repeats": repeats}


def _timed_batch(engine, batch: int, prompt_tokens: int, output_tokens: int) -> dict:
    """One batch as the server runs it; prefill and every decode step timed at the host, where
    the server hands tokens out."""
    from workbook.serve.engine import Request

    stamps: list[float] = []

    def emit(kind, _value):
        if kind == "token":
            stamps.append(time.perf_counter())

    reqs = [Request([3 + (i % 200) for i in range(prompt_tokens)], output_tokens,
                    emit=emit if i == 0 else (lambda *_: None)) for i in range(batch)]
    t0 = time.perf_counter()
    engine.run_batch(reqs)
    steps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]
    step = statistics.median(steps) if steps else None
    return {"batch": batch, "prefill_ms": (stamps[0] - t0) * 1e3, "decode_step_ms_p50": step,
            "decode_step_ms_p90": (sorted(steps)[int(0.9 * (len(steps) - 1))]
                                   if steps else None),
            "decode_tokens_s_per_seq": 1e3 / step if step else None,
            "decode_tokens_s_total": batch * 1e3 / step if step else None}


def measure(cfg: dict, log=print) -> dict:
    import torch

    from workbook.llm.decode import weight_bytes_per_step
    from workbook.serve.engine import Engine, EngineConfig

    ec = EngineConfig(**cfg["engine"])
    for key, value in cfg.get("inductor", {}).items():  # e.g. coordinate_descent_tuning: true
        import torch._inductor.config as inductor_config

        setattr(inductor_config, key, value)
    engine = Engine(ec, log=log)
    log(f"loaded in {engine.load_s:.1f} s; warming up")
    warm_s = engine.warm_up(sizes=cfg["batches"])  # a compiled step per size measured
    wbytes = weight_bytes_per_step(engine.model)
    rows = []
    for b in cfg["batches"]:
        _timed_batch(engine, b, cfg["prompt_tokens"], min(cfg["output_tokens"], 8))
        row = _timed_batch(engine, b, cfg["prompt_tokens"], cfg["output_tokens"])
        # the prefill is one sample a batch: its median over a few more, as the decode step's is
        pre = [row["prefill_ms"]] + [_timed_batch(engine, b, cfg["prompt_tokens"], 2)["prefill_ms"]
                                     for _ in range(PREFILL_REPEATS - 1)]
        row["prefill_ms"] = statistics.median(pre)
        row["device_step_ms"] = engine.time_steps(b)
        log(f"batch {b}: prefill {row['prefill_ms']:.1f} ms, decode step "
            f"{row['decode_step_ms_p50']:.2f} ms")
        rows.append(row)
    bw = copy_bandwidth(engine.device, cfg["copy_bytes"])
    limit_ms = wbytes / 1e9 / bw["copy_gb_s"] * 1e3
    for r in rows:
        step = r["decode_step_ms_p50"]
        r["weight_gb_s"] = wbytes / 1e9 / (step / 1e3) if step else None
        r["share_of_roofline"] = limit_ms / step if step else None
        dev = r["device_step_ms"]
        r["device_share_of_roofline"] = limit_ms / dev if dev else None
    dev = engine.device
    return {"engine": engine.describe(), "inductor": cfg.get("inductor", {}), "warm_up_s": warm_s,
            "weight_gb_per_step": wbytes / 1e9,
            **bw, "step_limit_ms": limit_ms, "roofline_tokens_s": 1e3 / limit_ms,
            "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"),
            "rows": rows}


def main(argv=None) -> int:
    from workbook.record import write_json_atomic

    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(Path(argv[0]).read_text())

    def log(msg):
        print(f"[direct] {msg}", flush=True)

    write_json_atomic(Path(argv[1]), measure(cfg, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
