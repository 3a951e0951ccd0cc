"""Batch-1 decode of the Mistral-7B shape (seeded bf16 weights, static cache, context 256) under
several torch.compile settings, with one load: the step timed as the server times it (host, one
token handed out per step) and back to back on the device (CUDA events), the copy bandwidth, and a
profiler table of one step compiled without CUDA graphs (prof.txt). ONLY=0,1 picks variants."""
import json, os, statistics, sys, time
import torch
from workbook.models.mistral import workbook_model
from workbook.serve.engine import Engine, EngineConfig, Request
from workbook.serve.direct import copy_bandwidth
from workbook.llm.decode import weight_bytes_per_step, full_tensor

out = {}
path, _ = workbook_model("mistral-7b-shape")
ec = EngineConfig(model=path, dtype="bfloat16", device="cuda", max_batch=1, context=256, compile=False)
t0 = time.perf_counter(); eng = Engine(ec); print("load", time.perf_counter() - t0, flush=True)
wb = weight_bytes_per_step(eng.model); out["weight_gb"] = wb / 1e9
bw = copy_bandwidth(eng.device, 2 << 30); out.update(bw); print(bw, flush=True)
for nb in (1 << 30, 4 << 30):
    out[f"copy_{nb>>30}g"] = copy_bandwidth(eng.device, nb)["copy_gb_s"]
out["roof_tok_s"] = bw["copy_gb_s"] / (wb / 1e9)

def timed(step_fn, n=96, tag=""):
  with torch.inference_mode():
    return _timed(step_fn, n, tag)

def _timed(step_fn, n=96, tag=""):
    eng.step_fn = step_fn
    stamps = []
    req = Request([5 + i % 100 for i in range(128)], n, emit=lambda k, v: stamps.append(time.perf_counter()) if k == "token" else None)
    eng.run_batch([Request([7]*8, 8, emit=lambda *_: None)])
    eng.run_batch([Request([7]*8, 8, emit=lambda *_: None)])
    eng.run_batch([req])
    steps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]
    # GPU-only time of the step: events around step_fn in a tight loop
    kv = eng._cache(1); mask = torch.ones(1, 256, dtype=torch.long, device="cuda")
    ids = torch.tensor([[5]], device="cuda"); pos = torch.tensor([[130]], device="cuda"); cp = torch.tensor([130], device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            step_fn(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=kv, use_cache=True, cache_position=cp)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(50):
            o = step_fn(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=kv, use_cache=True, cache_position=cp)
        b.record(); b.synchronize()
    back = a.elapsed_time(b) / 50
    r = {"host_step_ms": statistics.median(steps), "b2b_step_ms": back}
    r["tok_s"] = 1e3 / r["host_step_ms"]; r["share"] = out["roof_tok_s"] and r["tok_s"] / out["roof_tok_s"]
    r["b2b_share"] = (1e3 / back) / out["roof_tok_s"]
    print(tag, r, flush=True)
    return r

import torch._inductor.config as ic
import torch._dynamo
cdt = {"coordinate_descent_tuning": True}
variants = [("reduce-overhead", {}), ("reduce-overhead", cdt),
            ("max-autotune", cdt),
            ("reduce-overhead", {**cdt, "freezing": True}),
            ("reduce-overhead", {**cdt, "freezing": True, "pre_grad_fusion_options": {"batch_linear_lhs": {}}}),
            ("reduce-overhead", {**cdt, "pre_grad_fusion_options": {"batch_linear_lhs": {}}})]
only = os.environ.get("ONLY")
for i, (mode, opts) in enumerate(variants):
    if only and str(i) not in only.split(","):
        continue
    torch._dynamo.reset()
    saved = {k: getattr(ic, k) for k in opts}
    for k, v in opts.items(): setattr(ic, k, v)
    t0 = time.perf_counter()
    try:
        fn = torch.compile(eng.model, mode=mode, fullgraph=False)
        r = timed(fn, tag=f"{mode} {opts}"); r["wall_s"] = time.perf_counter() - t0
    except Exception as e:
        r = {"error": repr(e)[:500]}; print("ERR", mode, opts, r, flush=True)
    out[f"{mode} {json.dumps(opts)}"] = r
    for k, v in saved.items(): setattr(ic, k, v)
    json.dump(out, open(os.environ["OUT"] + "/probe.json", "w"), indent=1)

if os.environ.get("NOPROF"):
    sys.exit(0)
# kernel breakdown: compiled without CUDA graphs, under the profiler
torch._dynamo.reset()
fn = torch.compile(eng.model, mode="max-autotune-no-cudagraphs" if os.environ.get("PROF_MA") else "default")
timed(fn, n=16, tag="nocg")
from torch.profiler import profile, ProfilerActivity
with torch.inference_mode():
  kv = eng._cache(1); mask = torch.ones(1, 256, dtype=torch.long, device="cuda")
  ids = torch.tensor([[5]], device="cuda"); pos = torch.tensor([[130]], device="cuda"); cp = torch.tensor([130], device="cuda")
with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        fn(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=kv, use_cache=True, cache_position=cp)
    torch.cuda.synchronize()
open(os.environ["OUT"] + "/prof.txt", "w").write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
out["prof_kernels_per_step"] = len(ev) / 5
out["prof_gpu_ms_per_step"] = sum(e.device_time for e in ev) / 5 / 1e3 if hasattr(ev[0], "device_time") else None
json.dump(out, open(os.environ["OUT"] + "/probe.json", "w"), indent=1)
print(json.dumps(out, indent=1))
