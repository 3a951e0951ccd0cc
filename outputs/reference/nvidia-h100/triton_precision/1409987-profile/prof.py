"""Median ms of transformers' so400m NaFlex embeddings, forward+backward at batch 256 in bf16, in
the installed transformers; with PROFILE=1 also the device time, by kernel, of one batch-256 bf16
training step of transformers (sdpa) and of the fused model.

Run on a CUDA machine, from the repository root: ``[PROFILE=1] python <this file>`` (the output of
the reference runs is in prof_517.txt and prof_525.txt beside it).
"""
import os, statistics, time, torch
import transformers
from workbook.models import siglip2 as S
from workbook.experiments.triton_precision.stack import build_variant

print("transformers", transformers.__version__)
cfg = S.config("so400m")
hf = S.hf_model(cfg, dtype=torch.bfloat16, device="cuda")
pv, mask, ss = S.inputs(cfg, 256, dtype=torch.bfloat16, device="cuda", seed=0)
emb = hf.embeddings if hasattr(hf, "embeddings") else hf.vision_model.embeddings

def timed(fn, n=8):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)

def fb():
    e = emb(pv, ss)
    e.backward(torch.ones_like(e))
print("transformers embeddings forward+backward: %.2f ms" % timed(fb))
del hf, emb
torch.cuda.empty_cache()
if os.environ.get("PROFILE"):
    from torch.profiler import profile, ProfilerActivity
    for variant in ("transformers-sdpa", "fused"):
        model, fwd = build_variant(variant, cfg, 256, "cuda", torch.bfloat16, 0)
        def step():
            a, p = fwd()
            torch.autograd.backward([a, p], [torch.ones_like(a), torch.ones_like(p)])
            model.zero_grad(set_to_none=True)
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(); torch.cuda.synchronize()
        evs = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        tot = sum(e.self_device_time_total for e in evs) / 1e3
        print(f"== {variant}: device time {tot:.1f} ms in {sum(e.count for e in evs)} kernels")
        for e in sorted(evs, key=lambda e: -e.self_device_time_total)[:22]:
            print(f"{e.self_device_time_total / 1e3:8.2f} ms {e.count:5d}  {e.key[:110]}")
        del model, fwd
        torch.cuda.empty_cache()
