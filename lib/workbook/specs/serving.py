"""The serving notebook's parameters."""
from workbook.spec import SEED_MAX, Param, Spec

BACKENDS = ("auto", "cuda", "cpu")
DTYPES = ("auto", "float32", "float16", "bfloat16")
INTERPS = ("hf_bicubic", "timm_bicubic_aa", "bicubic_ac", "bilinear", "bilinear_ac", "gather4")
SLO_KEYS = ("ttft", "tpot", "e2el")

SPEC = Spec("serving", [
    Param("url", "str", "", "an OpenAI-compatible server to drive (vLLM, vLLM-Neuron, TGI...); "
          "empty: the notebook starts workbook serve"),
    Param("served_model", "str", "", "with url: the model name to request; empty: the first "
          "one /v1/models lists"),
    Param("tokenizer", "str", "", "with url: a local tokenizer folder the load generator sizes "
          "prompts with; empty: the byte-level tokenizer of the workbook's models"),
    Param("model", "str", "", "workbook serve's model: a folder, or mistral-7b-shape (seeded "
          "random weights); empty: a tiny seeded Mistral"),
    Param("backend", "str", "auto", "auto, cuda or cpu", choices=BACKENDS),
    Param("dtype", "str", "auto", "auto (bfloat16 on cuda, float32 on cpu), float32, float16 or "
          "bfloat16", choices=DTYPES),
    Param("compile", "bool", False, "cuda: the decode step compiled into CUDA graphs"),
    Param("compile_prefill", "bool", False, "the prefill compiled too (torch.compile, dynamic "
          "shapes), in the server and the engine alone"),
    Param("tp_degree", "int", 1, "tensor-parallel ranks of workbook serve (GPUs, or CPU "
          "processes), rank 0 serving HTTP", low=1),
    Param("max_batch", "int", 8, "requests the server decodes together (static batching)",
          low=1),
    Param("context", "int", 256, "positions per sequence for the text runs", low=2),
    Param("prompt_tokens", "int", 64, "prompt length of every request", low=1),
    Param("output_tokens", "int", 32, "tokens every request makes", low=1),
    Param("request_rates", "list", [2.0, 8.0], "Poisson arrival rates, requests/s", item="float",
          above=0, nonempty=True, allowed="a non-empty list of positive requests/s"),
    Param("concurrency", "int", 4, "streams of the concurrency-bound run; 0: none", low=0),
    Param("max_requests", "int", 12, "requests per benchmark at most", low=1),
    Param("max_seconds", "float", 60.0, "seconds per benchmark at most", above=0),
    Param("slo_ms", "dict", {"ttft": 500, "tpot": 50}, "goodput's service-level objectives, ms",
          choices=SLO_KEYS, item="float", above=0,
          allowed="a dict of ttft, tpot and/or e2el to positive ms"),
    Param("batches", "list", [1, 2, 4, 8], "batch sizes of the engine's decode curve (without "
          "HTTP); empty: none", item="int", low=1),
    Param("vision_tower", "str", "SigLIP-Tiny", "SigLIP tower for the vision-prefix A/B; empty: "
          "no A/B"),
    Param("vision_depth", "int", 0, "tower blocks kept; 0: all", low=0),
    Param("ab_interps", "list", ["hf_bicubic", "gather4"], "A and B: the position "
          "interpolation of each server configuration", choices=INTERPS, item="str"),
    Param("ab_sizes", "list", [224], "image sizes of the A/B, px", item="int", low=1,
          nonempty=True, allowed="a non-empty list of image sizes in pixels"),
    Param("ab_rate", "float", 2.0, "Poisson arrival rate of the A/B, requests/s", above=0),
    Param("ab_rounds", "int", 2, "alternating rounds (A then B, then B then A, ...)", low=1),
    Param("ab_requests", "int", 6, "requests per configuration, size and round", low=1),
    Param("seed", "int", 0, "seed of arrivals, prompts and the image projection", low=0,
          high=SEED_MAX),
    Param("timeout_s", "float", 900.0, "seconds the load generator and a server start may take",
          above=0),
])
