"""The pos_interp notebook's parameters."""
from workbook.spec import SEED_MAX, Param, Spec

IMPLEMENTATIONS = ("hf_bicubic", "timm_bicubic_aa", "bicubic_ac", "bilinear", "bilinear_ac",
                   "gather4")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
PX = "a non-empty list of integer image sizes in pixels, each at least one patch"

SPEC = Spec("pos_interp", [
    Param("device", "str", "auto", "auto, cpu or cuda", choices=DEVICES),
    Param("implementations", "list", list(IMPLEMENTATIONS), "implementations compared",
          choices=IMPLEMENTATIONS, item="str", nonempty=True),
    Param("reference", "str", "hf_bicubic", "what the others are compared with (HF's bicubic)",
          choices=IMPLEMENTATIONS),
    Param("candidate", "str", "gather4", "the seed's replacement (vLLM's 4-point gather)",
          choices=IMPLEMENTATIONS),
    Param("resolutions", "list", [224, 384, 512, 1024], "px for per-call speed and fidelity",
          item="int", low=1, nonempty=True, allowed=PX),
    Param("tower_resolutions", "list", [224, 384, 512], "px for the vision-tower forward",
          item="int", low=1, nonempty=True, allowed=PX),
    Param("dtypes", "list", ["float32"], "dtypes for per-call speed and table fidelity",
          choices=DTYPES, item="str", nonempty=True),
    Param("tower_dtype", "str", "float32", "dtype of the vision tower's forward", choices=DTYPES),
    Param("batch_sizes", "list", [1], "vision-tower batch sizes", item="int", low=1,
          nonempty=True),
    Param("model", "str", "ViT-SO400M-14-SigLIP", "open_clip SigLIP config (timm tower)",
          nonempty=True),
    Param("depth", "int", 1, "transformer blocks; 0 for as configured", low=0),
    Param("pretrained", "str", "", "open_clip pretrained tag; empty for seeded random weights"),
    Param("checkpoint", "str", "", "local checkpoint: tower weights and an extra table"),
    Param("iterations", "int", 5, "timed forwards per configuration (per-call: 5x)", low=1),
    Param("warmup", "int", 1, "untimed calls before timing", low=0),
    Param("seed", "int", 0, "seed for weights, tables and images", low=0, high=SEED_MAX),
])
