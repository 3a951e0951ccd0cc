"""The pos_interp notebook's parameters."""
from workbook.spec import Param, Spec

IMPLEMENTATIONS = ("hf_bicubic", "timm_bicubic_aa", "bicubic_ac", "bilinear", "bilinear_ac", "gather4")
DTYPES = ("float32", "bfloat16", "float16")

SPEC = Spec("pos_interp", [
    Param("device", "str", "auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda")),
    Param("implementations", "list", list(IMPLEMENTATIONS), "implementations compared (scientific)",
          choices=IMPLEMENTATIONS, item="str", nonempty=True),
    Param("reference", "str", "hf_bicubic", "what the others are compared with (HF/vLLM SigLIP's bicubic)",
          choices=IMPLEMENTATIONS),
    Param("candidate", "str", "gather4", "the seed's replacement (vLLM fast_pos_embed_interpolate)",
          choices=IMPLEMENTATIONS),
    Param("resolutions", "list", [224, 384, 512, 1024], "image sizes in px for per-call speed and table "
          "fidelity; the grid is size // patch", item="int", low=1, nonempty=True),
    Param("tower_resolutions", "list", [224, 384, 512], "image sizes in px for the vision-tower forward "
          "(1024 is slow on a 2-core CPU)", item="int", low=1),
    Param("dtypes", "list", ["float32"], "dtypes for per-call speed and table fidelity: float32, bfloat16, "
          "float16", choices=DTYPES, item="str", nonempty=True),
    Param("tower_dtype", "str", "float32", "dtype of the vision tower's forward", choices=DTYPES),
    Param("batch_sizes", "list", [1], "vision-tower batch sizes", item="int", low=1, nonempty=True),
    Param("model", "str", "ViT-SO400M-14-SigLIP", "open_clip SigLIP config (timm tower); its table is "
          "16x16x1152", nonempty=True),
    Param("depth", "int", 1, "transformer blocks (0 means as configured: 27 for SO400M); 1 keeps the CPU "
          "default cheap", low=0),
    Param("pretrained", "str", "", "open_clip pretrained tag (needs the model hub); empty for seeded random "
          "weights"),
    Param("checkpoint", "str", "", "local open_clip/timm/HF checkpoint: tower weights and an extra table "
          "for fidelity"),
    Param("iterations", "int", 5, "timed forwards per configuration (per-call interpolation timings use "
          "5x this)", low=1),
    Param("warmup", "int", 1, "untimed calls before timing", low=0),
    Param("seed", "int", 0, "seed for weights, tables and images", low=0, high=2 ** 32 - 1),
])
