"""Prefill at 128 tokens, eager vs compiled (CP=1): main thread and a worker thread, plus warm-up time."""
import json, os, statistics, threading, time
from workbook.models import mistral
from workbook.serve.engine import Engine, EngineConfig
from workbook.serve.direct import _timed_batch
CPU = os.environ.get("DEV") == "cpu"
CP = os.environ.get("CP") == "1"
N = int(os.environ.get("N", "15"))
model, _ = mistral.workbook_model("" if CPU else "mistral-7b-shape")
t0 = time.perf_counter()
eng = Engine(EngineConfig(model=model, dtype="float32" if CPU else "bfloat16", device="cpu" if CPU else "cuda",
                          max_batch=8, context=256, compile=not CPU, compile_prefill=CP), log=lambda m: None)
load = time.perf_counter() - t0
warm = eng.warm_up(sizes=[1, 8])
tag = "cp" if CP else "eager"
out = {"tag": tag, "load_s": load, "warm_s": warm}
def stats(v):
    v = sorted(v); return {"p50": round(statistics.median(v), 2), "min": round(v[0], 2), "max": round(v[-1], 2), "all": [round(x, 1) for x in v]}
for b in (1, 8):
    first = _timed_batch(eng, b, 128, 8)["prefill_ms"]
    pre = [_timed_batch(eng, b, 128, 2)["prefill_ms"] for _ in range(N)]
    out[f"b{b}_first"] = round(first, 1); out[f"b{b}_main"] = stats(pre)
res = {}
def worker():
    res["v"] = [_timed_batch(eng, 1, 128, 2)["prefill_ms"] for _ in range(N)]
    res["step"] = _timed_batch(eng, 1, 128, 128)["decode_step_ms_p50"]
th = threading.Thread(target=worker); th.start(); th.join()
out["b1_thread"] = stats(res["v"]); out["b1_step_thread"] = round(res["step"], 3)
out["b1_step_main"] = round(_timed_batch(eng, 1, 128, 128)["decode_step_ms_p50"], 3)
json.dump(out, open(f"{os.environ.get('OUT', '.')}/prefill-{tag}.json", "w"), indent=1)
print(tag, "load", round(load, 1), "warm", round(warm, 1), "b1 first", out["b1_first"], "b8 first", out["b8_first"])
for k in ("b1_main", "b8_main", "b1_thread"):
    print(tag, k, out[k]["p50"], out[k]["min"], out[k]["max"], out[k]["all"])
print(tag, "step main", out["b1_step_main"], "thread", out["b1_step_thread"])
