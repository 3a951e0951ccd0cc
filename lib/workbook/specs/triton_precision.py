"""The triton_precision notebook's parameters."""
from workbook.spec import SEED_MAX, Param, Spec

DTYPES = ("float32", "bfloat16", "float16")
KERNELS = ("layernorm", "linear_gelu", "mlp", "qkv", "block")
VARIANTS = ("transformers-sdpa", "fused", "fused-store-norm", "transformers-sdpa-checkpointing")
STACK_CONFIGS = ("so400m", "tiny")

SPEC = Spec("triton_precision", [
    Param("device", "str", "auto",
          "auto, cpu or cuda (cpu runs the kernels in the Triton interpreter)",
          choices=("auto", "cpu", "cuda")),
    Param("dtypes", "list", list(DTYPES), "dtypes for the precision study", choices=DTYPES,
          item="str", nonempty=True),
    Param("kernels", "list", list(KERNELS), "block is one encoder layer", choices=KERNELS,
          item="str", nonempty=True),
    Param("tokens", "int", 64, "rows (tokens) in the precision study", low=1),
    Param("hidden", "int", 72, "hidden size in the precision study (so400m uses 1152)", low=1),
    Param("intermediate", "int", 100, "MLP size in the precision study (so400m uses 4304)", low=1),
    Param("heads", "int", 3,
          "attention heads of the block case (head size hidden/heads, a multiple of 8)", low=1),
    Param("claim_shape", "list", [256, 128, 96],
          "tokens, in and out features of the fc1 + GELU claim check", item="int", low=1,
          nonempty=True),
    Param("speed_tokens", "list", [], "token counts for the per-kernel speed sweep (GPU only)",
          item="int", low=1),
    Param("stack_config", "str", "so400m",
          "stack size for the speed and memory run: so400m or tiny", choices=STACK_CONFIGS),
    Param("stack_batches", "list", [256],
          "batch sizes of the stack run, 256 patches each (GPU only)", item="int", low=1),
    Param("stack_variants", "list", ["transformers-sdpa", "fused"],
          "the variants the stack run times, in turns", choices=VARIANTS, item="str"),
    Param("stack_rounds", "int", 2, "rounds the stack variants take turns in, order alternating",
          low=1),
    Param("iterations", "int", 5, "timed iterations", low=1),
    Param("warmup", "int", 2, "untimed iterations", low=0),
    Param("seed", "int", 0, "seeds weights and inputs", low=0, high=SEED_MAX),
])
