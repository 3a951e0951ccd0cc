"""The triton_precision experiment's resumable sections (groups a killed run finished are taken, not re-measured)
and the stack's ratios and benchmark bar.

The measuring itself needs a GPU (tests/test_notebooks.py runs the notebook on the CPU, where these sections
say 'not measured'); here the GPU side is replaced by stand-ins that fail loudly if they are reached.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from workbook import record
from workbook.experiments import triton_precision as exp
from workbook.record import Recorder
from workbook.telemetry import Telemetry

PARAMS = {"device": "cuda", "stack_batches": [256, 512]}


def _cfg(**kw):
    base = dict(device="cuda", device_reason="test", device_name="test GPU", dtypes=["bfloat16"], kernels=["mlp"],
                tokens=8, hidden=8, intermediate=8, heads=2, claim_shape=[8, 8, 8], speed_tokens=[16, 32],
                stack_config="tiny", stack_batches=[256, 512], stack_variants=["transformers-sdpa", "fused"],
                stack_rounds=1, iterations=1, warmup=1, seed=0)
    base.update(kw)
    return exp.Config(**base)


def _resuming(tmp_path, monkeypatch, table, groups):
    """A recorder resuming an unfinished run that completed ``groups`` ((key, rows) pairs) of ``table``."""
    prior = Recorder("triton_precision", PARAMS, run_dir=tmp_path / "prior")
    for key, rows in groups:
        prior.add_group(table, rows, **key)
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "prior"))
    return Recorder("triton_precision", PARAMS, run_dir=tmp_path / "run")


class StandInAllocator:
    """TEST STAND-IN for the CUDA allocator's counters (this machine has no GPU): a built model adds its weights,
    a step raises the peak by its activations and gives them back."""

    def __init__(self, monkeypatch, total=80e9):
        self.alloc = self.peak = 0.0
        for name in ("empty_cache", "synchronize"):
            monkeypatch.setattr(torch.cuda, name, lambda *a: None)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: setattr(self, "peak", self.alloc))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: self.alloc)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: self.peak)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(total_memory=total))

    def step(self, activations):
        self.peak = max(self.peak, self.alloc + activations)


def test_stack_rows_take_finished_groups_and_measure_the_rest(tmp_path, monkeypatch, wb_root):
    done = [({"batch": 256}, [{"variant": v, "batch": 256, "status": "ok", "forward_ms": ms / 3,
                               "backward_ms": 2 * ms / 3, "fwd_bwd_ms": ms, "peak_gb": gb}
                              for v, ms, gb in (("transformers-sdpa", 450.0, 60.0), ("fused", 360.0, 42.0))])]
    # ^ the stand-in prior run finished batch 256 (both variants, one group) and was killed during batch 512
    rec = _resuming(tmp_path, monkeypatch, "stack", done)
    built = []

    def stack_step(variant, cfg_model, batch, device, dtype, seed):  # the stand-in GPU is out of memory
        built.append((variant, batch))
        raise torch.OutOfMemoryError("stand-in")

    monkeypatch.setattr(exp, "stack_step", stack_step)
    StandInAllocator(monkeypatch)
    bar = SimpleNamespace(n=0, update=lambda k: setattr(bar, "n", bar.n + k))
    rows = exp.stack_rows(_cfg(), rec, progress=bar)
    assert built == [("transformers-sdpa", 512), ("fused", 512)]  # only what the prior run had not finished
    assert [(r["variant"], r["batch"]) for r in rows] == [("transformers-sdpa", 256), ("fused", 256),
                                                          ("transformers-sdpa", 512), ("fused", 512)]
    assert [r.get("resumed_from") for r in rows] == ["prior", "prior", None, None]
    assert [r["status"] for r in rows] == ["ok", "ok", "out of memory", "out of memory"]
    assert bar.n == 4
    saved = record.load(rec.path)
    assert saved["tables"]["stack"] == rows and len(saved["groups"]["stack"]) == 2
    assert saved["resumed"] == {"from": "prior", "groups": {"stack": 1}}
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


def _step(variant, ms, p10, p90, gb, batch=256):
    return {"variant": variant, "batch": batch, "status": "ok", "forward_ms": ms / 3, "backward_ms": 2 * ms / 3,
            "fwd_bwd_ms": ms, "fwd_bwd_p10_ms": p10, "fwd_bwd_p90_ms": p90, "peak_gb": gb}


def test_bar_check_gives_the_verdict_of_the_medians_and_the_spread(wb_root):
    cfg = _cfg(stack_config="so400m")
    rows = [_step("transformers-sdpa", 448.5, 440.7, 454.7, 65.6), _step("fused", 351.6, 345.5, 360.0, 43.6),
            _step("transformers-sdpa", 939.3, 933.4, 963.2, 130.3, batch=512),
            _step("fused", 704.4, 699.5, 714.0, 85.9, batch=512)]
    ratios = exp.stack_ratios(rows)
    r256 = next(r for r in ratios if r["batch"] == 256)
    assert r256["fwd_bwd_speedup"] == pytest.approx(448.5 / 351.6)
    assert (r256["fwd_bwd_speedup_low"], r256["fwd_bwd_speedup_high"]) == pytest.approx((440.7 / 360.0, 454.7 / 345.5))
    speed, memory = exp.bar_check(ratios, cfg)  # batch 256 only
    assert speed["measured"] == pytest.approx(1.2756, abs=1e-4)
    assert speed["met"] == "no, the bar lies within the spread" and speed["spread"].startswith("1.22-1.32")
    assert memory["met"] == "yes" and memory["measured"] == pytest.approx(43.6 / 65.6)
    clear = exp.bar_check(exp.stack_ratios([_step("transformers-sdpa", 450, 445, 455, 60),
                                            _step("fused", 300, 298, 302, 50)]), cfg)
    assert clear[0]["met"] == "yes" and clear[1]["met"] == "no"  # 1.5x, 0.83x memory
    no_spread = exp.bar_check(exp.stack_ratios([{k: v for k, v in r.items() if "_p" not in k} for r in rows]), cfg)
    assert no_spread[0]["met"] == "no" and "spread" not in no_spread[0]
    assert exp.bar_check(ratios, _cfg()) == []  # the bar is for the so400m stack only


def test_bar_names_the_baseline_release_and_whether_it_resizes_per_image(wb_root):
    ratios = exp.stack_ratios([_step("transformers-sdpa", 496.4, 484.6, 508.6, 65.6), _step("fused", 376.9, 369.2, 383.7, 42.4)])
    cfg = _cfg(stack_config="so400m")
    old_speed, old_memory = exp.bar_check(ratios, cfg, baseline_version="5.17.0")
    assert old_speed["baseline"] == "transformers 5.17.0 (per-image position resize)"
    assert old_memory["baseline"] == "transformers 5.17.0"
    new_speed, _ = exp.bar_check(ratios, cfg, baseline_version="5.25.0")
    assert new_speed["baseline"] == "transformers 5.25.0"
    assert exp.bar_check(ratios, cfg)[0]["baseline"].startswith(f"transformers {exp.transformers_version()}")



def test_ratios_leave_out_energy_and_clock_a_row_did_not_measure(wb_root):
    """A zero energy (a counter that never advanced, in results written before telemetry refused it) gives no
    energy or clock ratio rather than a division by zero; the speed and memory ratios stay."""
    base = {**_step("transformers-sdpa", 6.25, 6.0, 6.5, 0.00088), "energy_j_per_step": 0.0, "sm_clock_mhz": 1980.0}
    fused = {**_step("fused", 7.04, 6.9, 7.2, 0.00084), "energy_j_per_step": 0.0, "sm_clock_mhz": 1980.0}
    (r,) = exp.stack_ratios([base, fused])
    assert r["fwd_bwd_speedup"] == pytest.approx(6.25 / 7.04)
    assert "energy_ratio" not in r and "sm_clock_ratio" not in r

@pytest.mark.parametrize("version, per_image", [("4.57.6", True), ("5.17.0", True), ("5.23.0", True),
                                                ("5.24.0", False), ("5.25.0", False), ("5.30.0.dev0", False),
                                                ("6.0.0", False)])
def test_resizes_per_image_before_5_24(version, per_image):
    assert exp.resizes_per_image(version) is per_image
    note = exp.baseline_note([{"variant": "fused"}, {"variant": "transformers-sdpa"}], version)
    assert (note is not None) is per_image
    if note:
        assert f"transformers {version}" in note and "image by image" in note
    assert exp.baseline_note([{"variant": "fused"}], version) is None  # no transformers row, nothing to say


def test_resizes_per_image_refuses_what_is_not_a_version():
    with pytest.raises(ValueError, match="not a transformers version: 'main'"):
        exp.resizes_per_image("main")


def test_the_version_rule_matches_the_installed_transformers(monkeypatch):
    """The rule is about behaviour: the installed release interpolates once per image exactly when it says so."""
    import torch.nn.functional as F

    from workbook.models import siglip2 as S

    cfg = S.config("tiny")
    hf = S.hf_model(cfg)
    pv, _, shapes = S.inputs(cfg, 3, grids=[(4, 4), (3, 5), (2, 2)])
    calls = []
    real = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **kw: calls.append(kw.get("size")) or real(*a, **kw))
    emb = hf.embeddings if hasattr(hf, "embeddings") else hf.vision_model.embeddings
    with torch.no_grad():
        emb(pv, shapes)
    assert (len(calls) == 3) is exp.resizes_per_image(exp.transformers_version()), calls


def test_stack_rows_record_clock_power_and_energy_of_the_timed_steps(monkeypatch, wb_root, standin_nvml):
    """A measured (not resumed) row carries the telemetry of its timed window; without NVML it says why."""
    nvml = standin_nvml(clocks=(1640,), power_mw=(680_000,), reasons=(0x4,), energy_mj=(0, 4_800_000))
    model = SimpleNamespace(zero_grad=lambda **kw: None)

    def stack_step(variant, cfg_model, batch, device, dtype, seed):
        gpu.alloc += 1e9
        return model, lambda: (torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True))

    def timed_steps(fwd, mdl, iterations, f, b):  # the stand-in GPU takes 100 + 250 ms a step
        gpu.step(39e9)
        f.extend([100.0] * iterations)
        b.extend([250.0] * iterations)

    monkeypatch.setattr(exp, "stack_step", stack_step)
    monkeypatch.setattr(exp, "timed_steps", timed_steps)
    gpu = StandInAllocator(monkeypatch)
    monkeypatch.setattr(exp, "Telemetry", lambda i: Telemetry(i, period_s=0.001, nvml=nvml))
    rows = exp.stack_rows(_cfg(stack_batches=[256], stack_variants=["fused"], iterations=4, warmup=1))
    (row,) = rows
    assert row["fwd_bwd_ms"] == 350.0 and row["peak_gb"] == 40.0
    assert row["sm_clock_mhz"] == 1640 and row["power_w"] == 680 and row["power_capped_share"] == 1.0
    assert row["energy_j_per_step"] == pytest.approx(4800 / 4) and row["power_limit_w"] == 700
    assert row["clock_reasons"] == "sw power cap"

    monkeypatch.setattr(exp, "Telemetry", lambda i: Telemetry(i, nvml=standin_nvml(fail_init=True)))
    (row,) = exp.stack_rows(_cfg(stack_batches=[256], stack_variants=["fused"], iterations=2, warmup=1))
    assert row["status"] == "ok" and "sm_clock_mhz" not in row
    assert row["telemetry"] == "not measured: NVML could not be opened (Driver Not Loaded)"


def _turns(monkeypatch, nvml, weights, activations, oom_at=None):
    """Stand-in stack_step/timed_steps on a StandInAllocator; returns the log of (variant, steps) calls.
    Variant A's steps take 150 + 300 ms, B's 120 + 240 ms; ``oom_at=(variant, n)``: that variant's n-th call
    runs out of memory."""
    gpu = StandInAllocator(monkeypatch)
    log, calls = [], {}

    def stack_step(variant, cfg_model, batch, device, dtype, seed):
        gpu.alloc += weights[variant]
        return SimpleNamespace(variant=variant), None

    def timed_steps(fwd, model, n, f, b):
        v = model.variant
        calls[v] = calls.get(v, 0) + 1
        if oom_at == (v, calls[v]):
            raise torch.OutOfMemoryError("stand-in")
        log.append((v, n))
        gpu.step(activations[v])
        f.extend([150.0 if v == "A" else 120.0] * n)
        b.extend([300.0 if v == "A" else 240.0] * n)

    monkeypatch.setattr(exp, "stack_step", stack_step)
    monkeypatch.setattr(exp, "timed_steps", timed_steps)
    monkeypatch.setattr(exp, "Telemetry", lambda i: Telemetry(i, nvml=nvml(fail_init=True)))  # "not measured"
    return log


def test_stack_variants_take_turns_in_alternating_rounds_and_each_peak_is_its_own(monkeypatch, wb_root,
                                                                                     standin_nvml):
    """Two variants, 6 timed steps each over 4 rounds (2, 2, 1, 1): A B | B A | A B | B A. A variant's first
    turn warms it up; a later turn that follows the other variant runs one untimed step; a turn that follows
    its own (B at the start of round 2) does not. Peaks leave out the other variant's resident weights."""
    log = _turns(monkeypatch, standin_nvml, weights={"A": 2e9, "B": 1e9}, activations={"A": 60e9, "B": 40e9})
    bar = SimpleNamespace(n=0, update=lambda k: setattr(bar, "n", bar.n + k))
    cfg = _cfg(stack_batches=[256], stack_variants=["A", "B"], stack_rounds=4, iterations=6, warmup=1)
    a, b = exp.stack_rows(cfg, progress=bar)
    assert log == [("A", 1), ("A", 2), ("B", 1), ("B", 2),  # round 1: each built, warmed up, timed
                   ("B", 2), ("A", 1), ("A", 2),            # round 2, reversed: B goes on, A warms again
                   ("A", 1), ("B", 1), ("B", 1),            # round 3
                   ("B", 1), ("A", 1), ("A", 1)]            # round 4, reversed
    assert bar.n == 2 * 4
    for row, ms, peak, held in ((a, 450.0, 62.0, 2.0), (b, 360.0, 41.0, 1.0)):
        assert row["status"] == "ok" and row["iterations"] == 6 and row["rounds"] == 4
        assert row["fwd_bwd_ms"] == ms and row["peak_gb"] == pytest.approx(peak)
        assert row["weights_and_inputs_gb"] == pytest.approx(held)
    assert exp.round_sizes(20, 4) == [5, 5, 5, 5] and exp.round_sizes(6, 4) == [2, 2, 1, 1]


def test_a_variant_out_of_memory_in_a_later_round_leaves_the_others_measured(monkeypatch, wb_root, standin_nvml):
    # B's fourth call is its untimed step at the start of round 3: it runs out of memory there
    log = _turns(monkeypatch, standin_nvml, weights={"A": 2e9, "B": 1e9}, activations={"A": 60e9, "B": 40e9},
                 oom_at=("B", 4))
    bar = SimpleNamespace(n=0, update=lambda k: setattr(bar, "n", bar.n + k))
    cfg = _cfg(stack_batches=[256], stack_variants=["A", "B"], stack_rounds=4, iterations=4, warmup=1)
    a, b = exp.stack_rows(cfg, progress=bar)
    assert b["status"] == "out of memory" and "fwd_bwd_ms" not in b
    assert b["note"] == ("out of memory at 80 GB (2.0 GB of it the other variants' weights and inputs) in round 3 "
                         "of 4, its timed steps so far dropped")
    assert a["status"] == "ok" and a["iterations"] == 4 and a["fwd_bwd_ms"] == 450.0
    assert [v for v, _ in log[-2:]] == ["A", "A"]  # round 4: A alone, without an untimed step (B never ran)
    assert bar.n == 2 * 4
    assert a["telemetry"].startswith("not measured: ")


def test_ratios_and_the_power_note_give_energy_and_clock(wb_root):
    def tele(row, mhz, watts, joules, capped):
        return {**row, "sm_clock_mhz": mhz, "power_w": watts, "energy_j_per_step": joules,
                "power_capped_share": capped, "power_limit_w": 700.0}

    base = tele(_step("transformers-sdpa", 449.3, 440, 455, 65.6), 1795, 656, 295.0, 1.0)
    fused = tele(_step("fused", 353.9, 350, 360, 43.6), 1645, 676, 239.0, 1.0)
    (r,) = exp.stack_ratios([base, fused])
    assert r["energy_ratio"] == pytest.approx(239 / 295) and r["sm_clock_ratio"] == pytest.approx(1645 / 1795)
    note = exp.power_note([base, fused])
    assert note.startswith("2 of 2 stack rows ran with the GPU at its power limit (700 W)")
    assert "transformers-sdpa at batch 256: 1795 MHz, 656 W, 295 J a step" in note
    assert "fused at batch 256: 1645 MHz, 676 W, 239 J a step" in note
    # rows below the cap, or without telemetry, give no note and no energy ratio
    assert exp.power_note([{**base, "power_capped_share": 0.2}, _step("fused", 353.9, 350, 360, 43.6)]) is None
    assert "energy_ratio" not in exp.stack_ratios([base, _step("fused", 353.9, 350, 360, 43.6)])[0]
    # where NVML gave temperatures, each row's first and highest go with its clock
    warm = {**fused, "gpu_temp_start_c": 58.0, "gpu_temp_c": 66.2, "gpu_temp_max_c": 71.0}
    note = exp.power_note([base, warm])
    assert "energy per step, GPU temperature from the first sample to the highest:" in note
    assert "fused at batch 256: 1645 MHz, 676 W, 239 J a step, 58-71 C" in note
    assert "transformers-sdpa at batch 256: 1795 MHz, 656 W, 295 J a step;" in note


# ---- configure: the first cell's checks of the parameters the notebook tests do not feed bad values -------
def _params(**kw):
    from workbook.params import notebook_parameters
    from workbook.paths import notebooks_dir

    p = {n: q.default for n, q in notebook_parameters(notebooks_dir() / "triton_precision.ipynb").items()}
    p.update(device="cpu")
    p.update(kw)
    return p


@pytest.mark.parametrize("kw, sentence", [
    (dict(intermediate=0), "Parameter intermediate=0 is not allowed: a positive integer."),
    (dict(iterations=0), "Parameter iterations=0 is not allowed: a positive integer."),
    (dict(stack_rounds=0), "Parameter stack_rounds=0 is not allowed: a positive integer."),
    (dict(stack_rounds=6, iterations=5), "Parameter stack_rounds=6 is not allowed: at most iterations=5, since each "
                                         "round times at least one step of every stack variant."),
    (dict(warmup=-1), "Parameter warmup=-1 is not allowed: an integer of at least 0."),
    (dict(speed_tokens=[64, 0]), "Parameter speed_tokens=[64, 0] is not allowed: a list of positive integers."),
    (dict(stack_batches="[256, -1]"), "Parameter stack_batches='[256, -1]' is not allowed: a list of positive "
                                      "integers."),
    (dict(seed=-3), "Parameter seed=-3 is not allowed: an integer from 0 to 4294967295."),
    (dict(heads=5, kernels=["block"]), "Parameter heads=5 is not allowed: a divisor of hidden=72 giving a head size "
                                       "that is a multiple of 8 for the block kernel (fused SDPA kernels need it; "
                                       "72/5 = 14.4)."),
])
def test_configure_refuses_with_one_sentence(kw, sentence):
    from workbook.errors import ParameterError

    with pytest.raises(ParameterError) as e:
        exp.configure(**_params(**kw))
    assert str(e.value) == sentence


def test_the_head_rule_applies_only_to_the_block_kernel():
    cfg = exp.configure(**_params(heads=5, kernels=["layernorm", "mlp"]))
    assert cfg.heads == 5 and cfg.kernels == ["layernorm", "mlp"]


def test_model_check_compares_nonzero_outputs_and_gradients():
    """The fused tower matches transformers on the tiny config, and each row carries the sizes it was measured
    against, so that a zero difference between all-zero tensors cannot pass for agreement."""
    rows = exp.model_check(SimpleNamespace(device="cpu", seed=0))
    assert [r["grids"] for r in rows] == ["all 4x4", "4x4, 3x5 (padded), 2x2 (padded)"]
    for r in rows:
        assert r["last_hidden_abs_max"] > 0.1 and r["grad_abs_max"] > 0.1
        assert r["grads_nonzero"] == r["grads"] > 40  # every parameter of the tiny tower gets a gradient
        assert r["last_hidden_max_abs_diff"] < 1e-5 * r["last_hidden_abs_max"] * 10
        assert 0 < r["worst_grad_max_abs_diff"] < 1e-4  # the kernels differ from cuBLAS/aten in the last bits


def test_model_check_problems_name_comparisons_of_zeros():
    good = {"grids": "all 4x4", "last_hidden_abs_max": 3.1, "grads_nonzero": 48, "grads": 48,
            "last_hidden_max_abs_diff": 1e-6, "worst_grad_max_abs_diff": 2e-5}
    assert exp.model_check_problems([good]) == []
    zeros = dict(good, last_hidden_abs_max=0.0, grads_nonzero=3, last_hidden_max_abs_diff=0.0,
                 worst_grad_max_abs_diff=0.0)
    (why,) = exp.model_check_problems([good, zeros])
    assert "45 of 48 gradients are all zero" in why and "do not show that the models agree" in why
