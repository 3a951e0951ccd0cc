"""Median ms of the so400m NaFlex embeddings' forward at batch 256 in bf16: transformers' with the
patch grids on the GPU and on the CPU (its per-image position resize syncs the host once per image
when they are on the GPU), the fused model's, and the number of synchronising calls in one
transformers forward.

Run on a CUDA machine, from the repository root: ``python <this file>`` (the output of the reference
runs is in emb_517.txt and emb_525.txt beside it).
"""
import statistics, time, torch
from workbook.models import siglip2 as S

cfg = S.config("so400m")
hf = S.hf_model(cfg, dtype=torch.bfloat16, device="cuda")
fused = S.from_hf(hf)
pv, mask, ss = S.inputs(cfg, 256, dtype=torch.bfloat16, device="cuda", seed=0)
emb = hf.embeddings if hasattr(hf, "embeddings") else hf.vision_model.embeddings

def timed(fn, n=10):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)

with torch.no_grad():
    print("transformers embeddings, shapes on cuda: %.2f ms" % timed(lambda: emb(pv, ss)))
    print("transformers embeddings, shapes on cpu:  %.2f ms" % timed(lambda: emb(pv, ss.cpu())))
    print("fused embeddings, shapes on cuda:        %.2f ms" % timed(lambda: fused.embeddings(pv, ss)))
torch.cuda.set_sync_debug_mode("warn")
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    with torch.no_grad():
        emb(pv, ss)
    print("synchronizing calls in one transformers embeddings forward:", len(w))
torch.cuda.set_sync_debug_mode(0)
def step(model, shapes):
    def f():
        o = model(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=shapes) if model is hf else model(pv, mask, shapes)
        last, pooled = (o.last_hidden_state, o.pooler_output) if model is hf else o
        return last, pooled
    return f
with torch.no_grad():
    print("transformers forward (no grad), shapes on cuda: %.1f ms" % timed(step(hf, ss), 5))
    print("transformers forward (no grad), shapes on cpu:  %.1f ms" % timed(step(hf, ss.cpu()), 5))
