"""The CUDA backend: eager, torch.compile, compile with CUDA graphs, and max-autotune;
fp32/tf32/bf16/fp16.

``cores`` is the number of GPUs used for data parallelism, done with one replica per GPU inside
this process: the batch is split along dim 0, each chunk runs on its GPU (the launches overlap,
since CUDA calls return at once), and the outputs are gathered on the first GPU. torch.compile's
caches live in the artifact folder, so a second run finds its compiled kernels there.
"""
from __future__ import annotations

import time

from workbook.backends.base import Backend, Prepared
from workbook.backends.cpu import (_shown, cache_has_graphs, compile_log, inductor_note,
                                   torch_dtype)

COMPILE_MODES = {"compile": "default", "compile-cudagraphs": "reduce-overhead",
                 "compile-max-autotune": "max-autotune"}


def set_matmul_precision(dtype: str) -> None:
    """fp32 means IEEE fp32 (tf32 off, also for cuDNN convolutions); tfloat32 turns tf32 on."""
    import torch

    tf32 = dtype == "tfloat32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


class CUDABackend(Backend):
    name = "cuda"
    modes = ("eager", *COMPILE_MODES)
    dtypes = ("float32", "tfloat32", "bfloat16", "float16")
    unit = "GPUs"
    clock = "cuda"

    def describe(self) -> dict:
        import torch

        return {"backend": "cuda", "gpus": [torch.cuda.get_device_name(i) for i in _gpus()],
                "torch": torch.__version__, "cuda": torch.version.cuda,
                "data_parallel": "one replica per GPU in one process, batch split along dim 0"}

    def prepare(self, model, example, *, mode, dtype, cores, options, cache) -> Prepared:
        import torch

        set_matmul_precision(dtype)
        # copies: the caller's model keeps its dtype and stays on the CPU
        replicas = [_copy(model).to(f"cuda:{i}", torch_dtype(dtype)).eval() for i in range(cores)]
        prep = Prepared(fn=None, backend="cuda", mode=mode, dtype=dtype, batch=example.shape[0],
                        cores=cores)
        if mode != "eager":
            had = cache_has_graphs(cache)
            prep.notes.append(f"inductor cache: {inductor_note(cache)}")
            torch._dynamo.reset()  # each configuration compiles afresh (or from the on-disk cache)
            replicas = [torch.compile(r, mode=COMPILE_MODES[mode]) for r in replicas]
            prep.cache = "hit" if had else ("miss" if cache is not None else "none")
        prep.fn = replicas[0] if cores == 1 else _scatter_gather(replicas)
        if mode != "eager":
            x = self.to_input(example, dtype)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode(), compile_log(cache) as log:
                prep.fn(x)
                if mode == "compile-cudagraphs":
                    prep.fn(x)  # CUDA graphs are recorded on the second call
                self.synchronize()
            prep.compile_s = time.perf_counter() - t0
            prep.notes.append(f"compile log: {_shown(log)}")
            if cache is not None and not had:
                cache.commit(compile_s=prep.compile_s, mode=mode)
        return prep

    def to_input(self, x, dtype):
        return x.to("cuda:0", torch_dtype(dtype), non_blocking=False)

    def synchronize(self) -> None:
        import torch

        for i in _gpus():
            torch.cuda.synchronize(i)

    def reset_peak_memory(self) -> None:
        import torch

        for i in _gpus():
            torch.cuda.reset_peak_memory_stats(i)

    def memory(self) -> dict:
        import torch

        out = {}
        for i in _gpus():
            out[f"cuda{i}_peak_allocated_mb"] = torch.cuda.max_memory_allocated(i) / 2**20
            out[f"cuda{i}_peak_reserved_mb"] = torch.cuda.max_memory_reserved(i) / 2**20
        return out


def _gpus() -> range:
    """The GPU indices torch sees here (none without CUDA)."""
    import torch

    return range(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _scatter_gather(replicas):
    import torch

    def fn(x):
        chunks = torch.chunk(x, len(replicas), dim=0)
        outs = [r(c.to(f"cuda:{i}", non_blocking=True))
                for i, (r, c) in enumerate(zip(replicas, chunks))]
        return torch.cat([o.to("cuda:0") for o in outs], dim=0)

    return fn
