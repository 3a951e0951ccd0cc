"""The export_search notebook's parameters, and the choice lists the search's lower layers take from
here (validators, dtypes, Neuron instance types)."""
from workbook.spec import Param, Spec

VALIDATORS = ("auto", "neuron", "cuda", "cpu")
DTYPES = ("float32", "bfloat16", "float16")
INSTANCE_TYPES = ("trn1", "inf2", "trn2")
NEURON_PATHS = ("auto", "nxdi", "optimum")

SPEC = Spec("export_search", [
    Param("model", "str", "",
          "hub id or local folder of a causal LM; empty: a tiny seeded Mistral"),
    Param("validator", "str", "auto",
          "auto, neuron (NxD Inference or optimum-cli: neuron_path), cuda or cpu (torchrun)",
          choices=VALIDATORS),
    Param("neuron_path", "str", "auto",
          "how the neuron validator compiles: nxdi (NxD Inference: Mistral, where it is "
          "installed), optimum (optimum-cli export, the architectures the installed "
          "optimum-neuron exports) or auto",
          choices=NEURON_PATHS),
    Param("total_cores", "int", 2, "NeuronCores, GPUs or CPU cores the search may use", low=2,
          allowed="an integer of at least 2 (tensor parallelism needs two cores)"),
    Param("cores_per_device", "int", 1,
          "cores per device (2 on trn1/inf2); tp is a multiple of it", low=1,
          allowed="a positive integer (NeuronCores per device, 2 on trn1/inf2)"),
    Param("batch_sizes", "list", [1, 4, 8, 16, 32, 64, 128], "batch sizes to try (largest first)",
          item="int", low=1, nonempty=True),
    Param("min_seq", "int", 1024,
          "shortest sequence tried (powers of two from it, below the model's positions)", low=1),
    Param("memory_budget_gb", "float", 0.05,
          "GB (10**9 B) per device: weights + KV cache per rank (cuda: peak)", above=0,
          allowed="a positive number of GB per device"),
    Param("dtype", "str", "float32",
          "weights and cache dtype for the cuda and cpu validators and NxD Inference",
          choices=DTYPES),
    Param("timeout_s", "float", 300, "per attempt (all its steps)", above=0,
          allowed="a positive number of seconds per attempt"),
    Param("state_dir", "str", "",
          "folder of <model>.json and attempt logs; empty: outputs/export_search/state"),
    Param("executor", "str", "local",
          "where tries run: local (here, one at a time) or ray (Ray tasks, several at a time)",
          choices=("local", "ray")),
    Param("address", "str", "",
          "with executor ray: the cluster (host:port, or auto); empty: a local cluster"),
    Param("max_parallel", "int", 0,
          "with executor ray: tries at once (0: as many as the cluster's devices fit)", low=0,
          allowed="0 (as the cluster allows) or a positive number of tries at once"),
    Param("instance_type", "str", "",
          "neuron without a device: trn1, inf2 or trn2 (passed to optimum-cli)",
          choices=("",) + INSTANCE_TYPES, allowed="empty or one of " + ", ".join(INSTANCE_TYPES)),
])
