"""The siglip_neuron notebook's parameters."""
from workbook.spec import SEED_MAX, Param, Spec

BACKENDS = ("auto", "cpu", "cuda", "neuron")
DTYPES = ("float32", "tfloat32", "bfloat16", "float16")
# each backend runs its own subset of these (workbook.backends.*.modes)
MODES = ("auto", "eager", "compile", "compile-cudagraphs", "compile-max-autotune", "trace")
AUTO_CAST = ("none", "matmult", "all")
AUTO_CAST_TYPES = ("bf16", "fp16", "tf32", "fp8_e4m3")


SPEC = Spec("siglip_neuron", [
    Param("model", "str", "ViT-SO400M-14-SigLIP",
          "open_clip SigLIP config, or SigLIP-Tiny (a small test config)", nonempty=True),
    Param("pretrained", "str", "",
          "empty for seeded random weights, an open_clip tag, or a checkpoint path"),
    Param("image_size", "int", 224, "input size in px, a multiple of the patch size", low=1,
          allowed="a positive integer, a multiple of the model's patch size"),
    Param("backend", "str", "auto", "auto, cpu, cuda or neuron", choices=BACKENDS),
    Param("modes", "list", ["auto"],
          "auto (eager on cpu/cuda; neuron: compile on Trn2/Trn3, trace on Inf2/Trn1), eager, "
          "compile (cpu, cuda; neuron: TorchNeuron), compile-* (cuda), trace (neuron)",
          choices=MODES, item="str", nonempty=True),
    Param("dtypes", "list", ["float32"], "float32, tfloat32 (cuda), bfloat16, float16 (cuda)",
          choices=DTYPES, item="str", nonempty=True),
    Param("cores", "int", 2, "cpu: threads; cuda: GPUs (data parallel); neuron: NeuronCores",
          low=1),
    Param("batch_sizes", "list", [1, 2], "batch sizes to measure", item="int", low=1,
          nonempty=True),
    Param("runs", "list", [], "mode:dtype:batch triples instead of modes x dtypes x batch_sizes",
          item="str"),
    Param("warmup", "int", 1, "untimed calls before timing", low=0),
    Param("iters", "int", 3, "timed calls per configuration", low=1),
    Param("tolerances", "dict",
          {"float32": 1e-4, "tfloat32": 2e-3, "bfloat16": 2e-2, "float16": 5e-3},
          "relative L2 error allowed against CPU fp32, per dtype", choices=DTYPES, item="float",
          low=0, allowed="a mapping from dtypes (" + ", ".join(DTYPES) + ") to relative-L2-error "
          "tolerances (numbers of at least 0)"),
    Param("artifact_dir", "str", "", "compiled-artifact cache folder; empty for artifacts/"),
    Param("seed", "int", 0, "seed for weights and input tensors", low=0, high=SEED_MAX),
    Param("images", "str", "", "folder of real images; empty for seeded tensors"),
    Param("cpu_reference_max_batch", "int", 8, "largest batch timed on the CPU (fp32 eager)",
          low=0),
    Param("compiler_args", "str", "--model-type transformer", "neuron: neuronx-cc flags"),
    Param("auto_cast", "str", "matmult", "neuron: none, matmult or all", choices=AUTO_CAST),
    Param("auto_cast_type", "str", "bf16", "neuron: type for auto-cast", choices=AUTO_CAST_TYPES),
])
