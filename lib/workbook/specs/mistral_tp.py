"""The mistral_tp notebook's parameters (the layers below import the choice lists from here)."""
from workbook.spec import SEED_MAX, Param, Spec

BACKENDS = ("auto", "neuron", "cuda", "cpu")
DTYPES = ("float32", "float16", "bfloat16")
NEURON_PATHS = ("nxdi", "transformers-neuronx")
TP_MECHANISMS = ("parallelize_module", "local_shards", "tp_plan", "auto")
PROMPT = "Tensor parallelism splits each layer across devices."

SPEC = Spec("mistral_tp", [
    Param("model", "str", "", "hub id, local folder, or mistral-7b-shape (config only, seeded "
          "random weights); empty: a tiny seeded Mistral"),
    Param("backend", "str", "auto", "auto, neuron, cuda or cpu", choices=BACKENDS),
    Param("tp_degree", "int", 2, "tensor-parallel ranks (NeuronCores, GPUs or CPU processes)",
          low=1),
    Param("batch_size", "int", 1, "sequences per generation, at least one per prompt (prompts "
          "are cycled to fill it)", low=1),
    Param("sequence_length", "int", 128, "positions compiled or budgeted for (prompt + new "
          "tokens)", low=1),
    Param("dtype", "str", "float32", "float32, float16 or bfloat16 (amp f32/f16/bf16 on Neuron)",
          choices=DTYPES),
    Param("prompts", "list", [PROMPT], "prompt texts", item="str", nonempty=True,
          allowed="a non-empty list of non-empty strings"),
    Param("max_tokens", "int", 16, "new tokens per sequence", low=1),
    Param("top_k", "int", 0, "0 with top_p 1 and temperature 1 is greedy; 1 is greedy; more "
          "samples from the top k", low=0),
    Param("top_p", "float", 1.0, "nucleus sampling threshold", above=0, high=1,
          allowed="a number in (0, 1]"),
    Param("temperature", "float", 1.0, "sampling temperature", above=0,
          allowed="a positive number"),
    Param("seed", "int", 0, "sampling seed", low=0, high=SEED_MAX),
    Param("neuron_paths", "list", list(NEURON_PATHS), "Neuron paths in the order to try",
          choices=NEURON_PATHS, item="str", nonempty=True),
    Param("allow_fallback", "bool", False, "let a failed Neuron path hand over to the next one "
          "(stated at the top)"),
    Param("compare_single", "bool", True, "also run one process and compare logits and greedy "
          "tokens"),
    Param("cache", "str", "dynamic", "KV cache for cuda and cpu: dynamic, or static (fixed "
          "shapes, needed by compile)", choices=("dynamic", "static")),
    Param("compile", "bool", False, "cuda: compile the decode step (CUDA graphs) so decode is not "
          "launch-bound"),
    Param("tp_mechanism", "str", "parallelize_module", "cuda/cpu sharding: parallelize_module "
          "(torch DTensor styles), local_shards (plain-tensor styles: the fast path for a "
          "compiled step), tp_plan (transformers' plan), auto (tp_plan where it can split the "
          "model)", choices=TP_MECHANISMS),
    Param("allreduce", "str", "nccl", "all-reduce inside the compiled step: nccl, or symm_mem "
          "(one-shot over NVLink peer access)", choices=("nccl", "symm_mem")),
])
