"""The triton_precision experiment's resumable sections: groups a killed run finished are taken, not re-measured.

The measuring itself needs a GPU (tests/test_notebooks.py runs the notebook on the CPU, where these sections
say 'not measured'); here the GPU side is replaced by stand-ins that fail loudly if they are reached.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from workbook import record
from workbook.experiments import triton_precision as exp
from workbook.record import Recorder

PARAMS = {"device": "cuda", "stack_batches": [256, 512]}


def _cfg(**kw):
    base = dict(device="cuda", device_reason="test", device_name="test GPU", dtypes=["bfloat16"], kernels=["mlp"],
                tokens=8, hidden=8, intermediate=8, heads=2, claim_shape=[8, 8, 8], speed_tokens=[16, 32],
                stack_config="tiny", stack_batches=[256, 512], stack_variants=["transformers-sdpa", "fused"],
                iterations=1, warmup=1, seed=0)
    base.update(kw)
    return exp.Config(**base)


def _resuming(tmp_path, monkeypatch, table, groups):
    """A recorder resuming an unfinished run that completed ``groups`` ((key, rows) pairs) of ``table``."""
    prior = Recorder("triton_precision", PARAMS, run_dir=tmp_path / "prior")
    for key, rows in groups:
        prior.add_group(table, rows, **key)
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "prior"))
    return Recorder("triton_precision", PARAMS, run_dir=tmp_path / "run")


def test_stack_rows_take_finished_groups_and_measure_the_rest(tmp_path, monkeypatch, wb_root):
    done = [({"variant": v, "batch": 256}, [{"variant": v, "batch": 256, "status": "ok", "forward_ms": ms / 3,
                                             "backward_ms": 2 * ms / 3, "fwd_bwd_ms": ms, "peak_gb": gb}])
            for v, ms, gb in (("transformers-sdpa", 450.0, 60.0), ("fused", 360.0, 42.0))]  # the stand-in prior run
    rec = _resuming(tmp_path, monkeypatch, "stack", done)
    built = []

    def stack_step(variant, cfg_model, batch, device, dtype, seed):  # the stand-in GPU is out of memory
        built.append((variant, batch))
        raise torch.OutOfMemoryError("stand-in")

    monkeypatch.setattr(exp, "stack_step", stack_step)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(total_memory=141e9))
    bar = SimpleNamespace(n=0, update=lambda k: setattr(bar, "n", bar.n + k))
    rows = exp.stack_rows(_cfg(), rec, progress=bar)
    assert built == [("transformers-sdpa", 512), ("fused", 512)]  # only what the prior run had not finished
    assert [(r["variant"], r["batch"]) for r in rows] == [("transformers-sdpa", 256), ("fused", 256),
                                                          ("transformers-sdpa", 512), ("fused", 512)]
    assert [r.get("resumed_from") for r in rows] == ["prior", "prior", None, None]
    assert [r["status"] for r in rows] == ["ok", "ok", "out of memory", "out of memory"]
    assert bar.n == 4
    saved = record.load(rec.path)
    assert saved["tables"]["stack"] == rows and len(saved["groups"]["stack"]) == 4
    assert saved["resumed"] == {"from": "prior", "groups": {"stack": 2}}
    ratio = exp.stack_ratios(rows)  # resumed rows feed the ratios like measured ones
    assert [(r["variant"], r["batch"], r["fwd_bwd_speedup"]) for r in ratio] == [("fused", 256, 1.25)]


def test_speed_rows_resumed_entirely_build_nothing(tmp_path, monkeypatch, wb_root):
    def group(tokens):
        return ({"kernel": "mlp", "tokens": tokens},
                [{"kernel": "mlp", "tokens": tokens, "impl": i, "dtype": "bfloat16", "fwd_bwd_ms": 1.0}
                 for i in ("triton", "eager", "torch.compile")])

    rec = _resuming(tmp_path, monkeypatch, "kernel_speed", [group(16), group(32)])

    def no_case(*a):
        raise AssertionError("a finished group was measured again")

    monkeypatch.setattr(exp, "_kernel_case", no_case)
    rows = exp.speed_rows(_cfg(), rec=rec)
    assert [(r["tokens"], r["impl"]) for r in rows] == [(t, i) for t in (16, 32)
                                                        for i in ("triton", "eager", "torch.compile")]
    assert all(r["resumed_from"] == "prior" for r in rows)
    assert record.load(rec.path)["tables"]["kernel_speed"] == rows
