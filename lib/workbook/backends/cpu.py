"""The CPU backend: eager and torch.compile, ``cores`` = threads.

The CPU is where every accuracy comparison's reference runs (fp32 eager), and where the workbook
runs end to end on a laptop or a CI machine.
"""
from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from pathlib import Path

from workbook.backends.base import Backend, Prepared

DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "tfloat32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def _shown(p) -> str:
    from workbook.paths import shown

    return shown(p)


def inductor_cache(cache) -> dict:
    """Point torch.compile's caches at the artifact folder so a later run reuses them (None: leave
    them as they are)."""
    if cache is None:
        return {}
    d = cache.dir / "inductor"
    d.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(d)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    from workbook.paths import shown

    return {"inductor_cache": shown(d)}


@contextlib.contextmanager
def compile_log(cache):
    """Send torch.compile's own chatter (autotuning tables, rejected kernel choices) to
    ``compile.log`` in the artifact folder instead of the notebook: a report shows results, the log
    keeps the details."""
    import logging
    import sys

    import torch

    path = (cache.dir if cache is not None else Path(tempfile.mkdtemp())) / "compile.log"
    cfg = torch._inductor.config
    keys = ("autotune_num_choices_displayed", "max_autotune_report_choices_stats")
    saved = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
    for k in saved:
        setattr(cfg, k, 0 if k == "autotune_num_choices_displayed" else False)
    logger = logging.getLogger("torch._inductor")
    handler = logging.FileHandler(path)
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with open(path, "a") as f, contextlib.redirect_stderr(f):
            yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = old_propagate
        for k, v in saved.items():
            setattr(cfg, k, v)
        sys.stderr.flush()


def cache_has_graphs(cache) -> bool:
    return cache is not None and cache.exists() and any((cache.dir / "inductor").glob("*"))


def inductor_note(cache) -> str:
    return inductor_cache(cache).get("inductor_cache", "default")


class CPUBackend(Backend):
    name = "cpu"
    modes = ("eager", "compile")
    dtypes = tuple(DTYPES)
    unit = "CPU threads"
    clock = "cpu"

    def describe(self) -> dict:
        import torch

        from workbook.proc import usable_cpus
        from workbook.targets import cpu_name

        return {"backend": "cpu", "hardware": cpu_name(), "threads_available": usable_cpus(),
                "torch": torch.__version__}

    def prepare(self, model, example, *, mode, dtype, cores, options, cache) -> Prepared:
        import torch

        torch.set_num_threads(cores)
        # a copy: the caller's model stays as it is
        model = copy.deepcopy(model).to("cpu", torch_dtype(dtype)).eval()
        x = self.to_input(example, dtype)
        prep = Prepared(fn=model, backend="cpu", mode=mode, dtype=dtype, batch=example.shape[0],
                        cores=cores)
        if mode == "compile":
            had = cache_has_graphs(cache)
            prep.notes.append(f"inductor cache: {inductor_note(cache)}")
            torch._dynamo.reset()  # each configuration compiles afresh (or from the on-disk cache)
            fn = torch.compile(model)
            t0 = time.perf_counter()
            with torch.inference_mode(), compile_log(cache) as log:
                fn(x)
            prep.compile_s = time.perf_counter() - t0
            prep.notes.append(f"compile log: {_shown(log)}")
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
