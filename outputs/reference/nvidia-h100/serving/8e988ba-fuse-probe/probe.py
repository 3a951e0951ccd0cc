"""Decode step, fused vs unfused projections: direct.measure in this process (NOFUSE=1: unfused)."""
import json, os, sys
from workbook.models import mistral
if os.environ.get("NOFUSE") == "1":
    import workbook.llm.fuse as fz
    fz.fuse_projections = lambda model: "projections not fused (probe baseline)"
from workbook.serve import direct
model, _ = mistral.workbook_model("mistral-7b-shape")
cfg = {"engine": {"model": model, "dtype": "bfloat16", "device": "cuda", "max_batch": 8,
                  "context": 256, "compile": True},
       "batches": [int(b) for b in os.environ.get("BATCHES", "1,8").split(",")],
       "prompt_tokens": 128, "output_tokens": 128, "copy_bytes": 2**30}
res = direct.measure(cfg, log=lambda m: print("[direct]", m, flush=True))
tag = os.environ.get("TAG", "x")
json.dump(res, open(f"{os.environ['OUT']}/direct-{tag}.json", "w"), indent=1)
print(tag, res["engine"]["projections"], "copy", round(res["copy_gb_s"]), "roofline", round(res["roofline_tokens_s"], 1))
for r in res["rows"]:
    print(tag, "b", r["batch"], "step", round(r["decode_step_ms_p50"], 3), "dev", round(r["device_step_ms"], 3),
          "share", round(r["share_of_roofline"] * 100, 1), "dev share", round(r["device_share_of_roofline"] * 100, 1),
          "prefill", round(r["prefill_ms"], 1), "tok/s", round(r["decode_tokens_s_total"], 1))
