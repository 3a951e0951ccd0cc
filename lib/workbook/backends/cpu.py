"""The CPU backend: eager and torch.compile, ``cores`` = threads.

The CPU is where every accuracy comparison's reference runs (fp32 eager), and where the workbook runs
end to end on a laptop or a CI machine.
"""
from __future__ import annotations

import copy
import os
import time

from workbook.backends.base import Backend, Prepared

DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "tfloat32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def inductor_cache(cache) -> dict:
    """Point torch.compile's caches at the artifact folder so a later run reuses them (None: leave as is)."""
    if cache is None:
        return {}
    d = cache.dir / "inductor"
    d.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(d)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    from workbook.paths import shown

    return {"inductor_cache": shown(d)}


class CPUBackend(Backend):
    name = "cpu"
    modes = ("eager", "compile")
    dtypes = tuple(DTYPES)
    unit = "CPU threads"
    clock = "cpu"

    def available(self) -> tuple[bool, str]:
        return True, "the CPU is always there"

    def core_count(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def describe(self) -> dict:
        import torch

        from workbook.device import cpu_name

        return {"backend": "cpu", "hardware": cpu_name(), "threads_available": self.core_count(),
                "torch": torch.__version__}

    def prepare(self, model, example, *, mode, dtype, cores, options, cache) -> Prepared:
        import torch

        torch.set_num_threads(cores)
        model = copy.deepcopy(model).to("cpu", torch_dtype(dtype)).eval()  # the caller's model stays as it is
        x = self.to_input(example, dtype)
        prep = Prepared(fn=model, backend="cpu", mode=mode, dtype=dtype, batch=example.shape[0], cores=cores)
        if mode == "compile":
            had = cache is not None and cache.exists() and any((cache.dir / "inductor").glob("*"))
            prep.notes.append(f"inductor cache: {inductor_cache(cache).get('inductor_cache', 'default')}")
            torch._dynamo.reset()  # each configuration compiles afresh (or from the on-disk cache)
            fn = torch.compile(model)
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn(x)
            prep.compile_s = time.perf_counter() - t0
            prep.cache = "hit" if had else ("miss" if cache is not None else "none")
            if cache is not None and not had:
                cache.commit(compile_s=prep.compile_s)
            prep.fn = fn
        return prep

    def to_input(self, x, dtype):
        return x.to("cpu", torch_dtype(dtype))

    def memory(self) -> dict:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"host_peak_rss_mb": peak_kb / 1024}
