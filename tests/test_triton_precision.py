"""The triton_precision experiment: its resumable sections (groups a killed run finished are taken,
not re-measured), the stack's variants taking turns, its ratios and benchmark bar, and configure's
rules.

The measuring itself needs a GPU (tests/test_notebooks.py runs the notebook on the CPU, where those
sections say 'not measured'); here the experiment's GPU seam (``cfg.gpu``) is the stand-in
``tests/standins/gpu_sections.py``, whose device primitives run on the CPU.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from workbook import record, targets
from workbook.experiments import triton_precision as exp
from workbook.experiments.triton_precision import bar as verdict
from workbook.experiments.triton_precision import kernel_speed, precision, stack
from workbook.record import Recorder
from workbook.spec import Values
from workbook.specs.triton_precision import SPEC
from workbook.telemetry import Telemetry

PARAMS = {"device": "cuda", "stack_batches": [256, 512]}
_spec = importlib.util.spec_from_file_location(
    "gpu_sections", Path(__file__).resolve().parent / "standins" / "gpu_sections.py")
gpu_sections = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_sections)
StandInGpu = gpu_sections.StandInGpu


def _cfg(gpu=None, **kw):
    """A configuration as configure makes one on a GPU machine, with ``gpu`` as its GPU (the values
    are not checked: the turn-taking tests name their variants A and B)."""
    base = dict(device="cuda", dtypes=["bfloat16"], kernels=["mlp"], tokens=8, hidden=8,
                intermediate=8, heads=2, claim_shape=[8, 8, 8], speed_tokens=[16, 32],
                stack_config="tiny", stack_batches=[256, 512],
                stack_variants=["transformers-sdpa", "fused"], stack_rounds=1, iterations=1,
                warmup=1,
                seed=0)
    p = Values({**SPEC.defaults(), **base, **kw})
    return exp.Config(p, targets.Target("cuda", "test", 1, "test GPU"), gpu or StandInGpu())


def _resuming(tmp_path, monkeypatch, table, groups):
    """A recorder resuming an unfinished run that completed ``groups`` ((key, rows) pairs) of
    ``table``."""
    prior = Recorder("triton_precision", PARAMS, run_dir=tmp_path / "prior")
    for key, rows in groups:
        prior.add_group(table, rows, **key)
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "prior"))
    return Recorder("triton_precision", PARAMS, run_dir=tmp_path / "run")


def _bar():
    bar = SimpleNamespace(n=0)
    bar.update = lambda k: setattr(bar, "n", bar.n + k)
    return bar


def test_stack_rows_take_finished_groups_and_measure_the_rest(tmp_path, monkeypatch, wb_root):
    done = [({"batch": 256}, [{"variant": v, "batch": 256, "status": "ok", "forward_ms": ms / 3,
                               "backward_ms": 2 * ms / 3, "fwd_bwd_ms": ms, "peak_gb": gb}
                              for v, ms, gb in (("transformers-sdpa", 450.0, 60.0),
                                                ("fused", 360.0, 42.0))])]
    # ^ the prior run finished batch 256 (both variants, one group) and was killed during batch 512
    rec = _resuming(tmp_path, monkeypatch, "stack", done)
    gpu = StandInGpu(oom_on_load=True)  # the stand-in GPU is out of memory
    bar = _bar()
    rows = stack.stack_rows(_cfg(gpu), rec, progress=bar)
    assert gpu.loads == [("transformers-sdpa", 512), ("fused", 512)]  # only what the prior left
    assert [(r["variant"], r["batch"]) for r in rows] == [
        ("transformers-sdpa", 256), ("fused", 256), ("transformers-sdpa", 512), ("fused", 512)]
    assert [r.get("resumed_from") for r in rows] == ["prior", "prior", None, None]
    assert [r["status"] for r in rows] == ["ok", "ok", "out of memory", "out of memory"]
    assert bar.n == 4
    saved = record.load(rec.path)
    assert saved["tables"]["stack"] == rows and len(saved["groups"]["stack"]) == 2
    assert saved["resumed"] == {"from": "prior", "groups": {"stack": 1}}
    ratio = exp.stack_ratios(rows)  # resumed rows feed the ratios like measured ones
    assert [(r["variant"], r["batch"], r["fwd_bwd_speedup"]) for r in ratio] == [("fused", 256,
                                                                                  1.25)]


class _MeasuresNothing(StandInGpu):
    def speed_group(self, *a, **kw):
        raise AssertionError("a finished group was measured again")


def test_speed_rows_resumed_entirely_build_nothing(tmp_path, monkeypatch, wb_root):
    def group(tokens):
        return ({"kernel": "mlp", "tokens": tokens},
                [{"kernel": "mlp", "tokens": tokens, "impl": i, "dtype": "bfloat16",
                  "fwd_bwd_ms": 1.0}
                 for i in ("triton", "eager", "torch.compile")])

    rec = _resuming(tmp_path, monkeypatch, "kernel_speed", [group(16), group(32)])
    rows, why = exp.speed_per_kernel(_cfg(_MeasuresNothing()), rec)
    assert why is None
    assert [(r["tokens"], r["impl"]) for r in rows] == [(t, i) for t in (16, 32)
                                                        for i in ("triton", "eager",
                                                                  "torch.compile")]
    assert all(r["resumed_from"] == "prior" for r in rows)
    saved = record.load(rec.path)
    assert saved["tables"]["kernel_speed"] == rows
    assert saved["keys"]["kernel_speed"] == ["kernel", "tokens", "impl"]


def test_gpu_sections_without_a_gpu_record_why(tmp_path, wb_root):
    """No GPU (or nothing to sweep): each section records 'not measured' with its reason and returns
    no rows, so the notebook prints the reason in one line."""
    rec = Recorder("triton_precision", PARAMS, run_dir=tmp_path / "run")
    cpu = exp.Config(_cfg().p, targets.Target("cpu", "test", 2, "test CPU"), None)
    assert exp.speed_per_kernel(cpu, rec) == (
        [], "the kernels run in the Triton interpreter on a CPU: its timings mean nothing")
    assert exp.stack_speed(cpu, rec) == ([], "no GPU: the stack's speed and memory need one")
    assert exp.speed_per_kernel(_cfg(speed_tokens=[]), rec) == ([], "speed_tokens is empty")
    assert exp.stack_speed(_cfg(stack_variants=[]), rec) == (
        [], "stack_variants or stack_batches is empty")
    saved = record.load(rec.path)
    assert [m["what"] for m in saved["not_measured"]] == [
        "per-kernel speed", "so400m stack speed and memory", "per-kernel speed",
        "so400m stack speed and memory"]
    assert "kernel_speed" not in saved["tables"] and "stack" not in saved["tables"]


def _step(variant, ms, p10, p90, gb, batch=256):
    return {"variant": variant, "batch": batch, "status": "ok", "forward_ms": ms / 3,
            "backward_ms": 2 * ms / 3, "fwd_bwd_ms": ms, "fwd_bwd_p10_ms": p10,
            "fwd_bwd_p90_ms": p90,
            "peak_gb": gb}


def test_bar_check_gives_the_verdict_of_the_medians_and_the_spread(wb_root):
    rows = [_step("transformers-sdpa", 448.5, 440.7, 454.7, 65.6),
            _step("fused", 351.6, 345.5, 360.0, 43.6),
            _step("transformers-sdpa", 939.3, 933.4, 963.2, 130.3, batch=512),
            _step("fused", 704.4, 699.5, 714.0, 85.9, batch=512)]
    ratios = exp.stack_ratios(rows)
    r256 = next(r for r in ratios if r["batch"] == 256)
    assert r256["fwd_bwd_speedup"] == pytest.approx(448.5 / 351.6)
    assert (r256["fwd_bwd_speedup_low"], r256["fwd_bwd_speedup_high"]) == pytest.approx(
        (440.7 / 360.0, 454.7 / 345.5))
    speed, memory = exp.bar_check(ratios, "so400m")  # batch 256 only
    assert speed["measured"] == pytest.approx(1.2756, abs=1e-4)
    assert speed["met"] == "no, the bar lies within the spread"
    assert speed["spread"].startswith("1.22-1.32")
    assert memory["met"] == "yes" and memory["measured"] == pytest.approx(43.6 / 65.6)
    clear = exp.bar_check(exp.stack_ratios([_step("transformers-sdpa", 450, 445, 455, 60),
                                            _step("fused", 300, 298, 302, 50)]), "so400m")
    assert clear[0]["met"] == "yes" and clear[1]["met"] == "no"  # 1.5x, 0.83x memory
    no_spread = exp.bar_check(exp.stack_ratios([{k: v for k, v in r.items() if "_p" not in k}
                                                for r in rows]), "so400m")
    assert no_spread[0]["met"] == "no" and "spread" not in no_spread[0]
    assert exp.bar_check(ratios, "tiny") == []  # the bar is for the so400m stack only


def test_stack_verdict_records_the_ratios_and_the_bar(tmp_path, wb_root):
    rec = Recorder("triton_precision", PARAMS, run_dir=tmp_path / "run")
    rows = [_step("transformers-sdpa", 448.5, 440.7, 454.7, 65.6),
            _step("fused", 351.6, 345.5, 360.0, 43.6)]
    ratios, bar = exp.stack_verdict(_cfg(stack_config="so400m"), rec, rows)
    saved = record.load(rec.path)["tables"]
    assert saved["stack_ratios"] == ratios and saved["bar"] == bar and len(bar) == 2


def test_bar_names_the_baseline_release_and_whether_it_resizes_per_image(wb_root):
    ratios = exp.stack_ratios([_step("transformers-sdpa", 496.4, 484.6, 508.6, 65.6),
                               _step("fused", 376.9, 369.2, 383.7, 42.4)])
    old_speed, old_memory = exp.bar_check(ratios, "so400m", baseline_version="5.17.0")
    assert old_speed["baseline"] == "transformers 5.17.0 (per-image position resize)"
    assert old_memory["baseline"] == "transformers 5.17.0"
    new_speed, _ = exp.bar_check(ratios, "so400m", baseline_version="5.25.0")
    assert new_speed["baseline"] == "transformers 5.25.0"
    assert exp.bar_check(ratios, "so400m")[0]["baseline"].startswith(
        f"transformers {exp.transformers_version()}")


def test_ratios_leave_out_energy_and_clock_a_row_did_not_measure(wb_root):
    """A zero energy (a counter that never advanced, in results written before telemetry refused it)
    gives no energy or clock ratio rather than a division by zero; the speed and memory ratios
    stay."""
    base = {**_step("transformers-sdpa", 6.25, 6.0, 6.5, 0.00088), "energy_j_per_step": 0.0,
            "sm_clock_mhz": 1980.0}
    fused = {**_step("fused", 7.04, 6.9, 7.2, 0.00084), "energy_j_per_step": 0.0,
             "sm_clock_mhz": 1980.0}
    (r,) = exp.stack_ratios([base, fused])
    assert r["fwd_bwd_speedup"] == pytest.approx(6.25 / 7.04)
    assert "energy_ratio" not in r and "sm_clock_ratio" not in r


@pytest.mark.parametrize("version, per_image",
                         [("4.57.6", True), ("5.17.0", True), ("5.23.0", True),
                                                ("5.24.0", False), ("5.25.0", False),
                                                ("5.30.0.dev0", False), ("6.0.0", False)])
def test_resizes_per_image_before_5_24(version, per_image):
    assert exp.resizes_per_image(version) is per_image
    note = exp.baseline_note([{"variant": "fused"}, {"variant": "transformers-sdpa"}], version)
    assert (note is not None) is per_image
    if note:
        assert f"transformers {version}" in note and "image by image" in note
    assert exp.baseline_note([{"variant": "fused"}], version) is None  # no transformers row


def test_resizes_per_image_refuses_what_is_not_a_version():
    with pytest.raises(ValueError, match="not a transformers version: 'main'"):
        exp.resizes_per_image("main")


def test_the_version_rule_matches_the_installed_transformers(monkeypatch):
    """The rule is about behaviour: the installed release interpolates once per image exactly when
    it says so."""
    import torch.nn.functional as F

    from workbook.models import siglip2 as S

    cfg = S.config("tiny")
    hf = S.hf_model(cfg)
    pv, _, shapes = S.inputs(cfg, 3, grids=[(4, 4), (3, 5), (2, 2)])
    calls = []
    real = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a,
                        **kw: calls.append(kw.get("size")) or real(*a, **kw))
    emb = hf.embeddings if hasattr(hf, "embeddings") else hf.vision_model.embeddings
    with torch.no_grad():
        emb(pv, shapes)
    assert (len(calls) == 3) is exp.resizes_per_image(exp.transformers_version()), calls


def test_stack_rows_record_clock_power_and_energy_of_the_timed_steps(wb_root, standin_nvml):
    """A measured (not resumed) row carries the telemetry of its timed window; without NVML it says
    why."""
    nvml = standin_nvml(clocks=(1640,), power_mw=(680_000,), reasons=(0x4,),
                        energy_mj=(0, 4_800_000))
    gpu = StandInGpu(weights={"fused": 1e9}, activations={"fused": 39e9},
                     step_ms={"fused": (100, 250)},
                     telemetry=lambda: Telemetry(0, period_s=0.001, nvml=nvml))
    (row,) = stack.measure_batch(_cfg(gpu, stack_variants=["fused"], iterations=4, warmup=1), gpu,
                                 256)
    assert row["fwd_bwd_ms"] == 350.0 and row["peak_gb"] == 40.0
    assert row["sm_clock_mhz"] == 1640 and row["power_w"] == 680
    assert row["power_capped_share"] == 1.0
    assert row["energy_j_per_step"] == pytest.approx(4800 / 4) and row["power_limit_w"] == 700
    assert row["clock_reasons"] == "sw power cap"

    gpu = StandInGpu(weights={"fused": 1e9}, activations={"fused": 39e9},
                     telemetry=lambda: Telemetry(0, nvml=standin_nvml(fail_init=True)))
    (row,) = stack.measure_batch(_cfg(gpu, stack_variants=["fused"], iterations=2, warmup=1), gpu,
                                 256)
    assert row["status"] == "ok" and "sm_clock_mhz" not in row
    assert row["telemetry"] == "not measured: NVML could not be opened (Driver Not Loaded)"


def test_the_stack_section_records_its_notes(tmp_path, wb_root, standin_nvml, capsys):
    """One call: the rows as one group per batch, the keys, telemetry that could not be read as 'not
    measured', and the notes, each printed too."""
    rec = Recorder("triton_precision", PARAMS, run_dir=tmp_path / "run")
    gpu = StandInGpu(weights={"transformers-sdpa": 2e9, "fused": 1e9},
                     telemetry=lambda: Telemetry(0, nvml=standin_nvml(fail_init=True)))
    rows, why = exp.stack_speed(_cfg(gpu, stack_batches=[256], iterations=2), rec)
    assert why is None and [r["status"] for r in rows] == ["ok", "ok"]
    saved = record.load(rec.path)
    assert saved["tables"]["stack"] == rows and saved["keys"]["stack"] == ["variant", "batch"]
    (nm,) = saved["not_measured"]
    assert nm["what"] == "GPU clock, power and energy of the stack steps"
    assert nm["why"] == "not measured: NVML could not be opened (Driver Not Loaded)"
    assert nm["why"] in capsys.readouterr().out
    assert (exp.baseline_note(rows) is None) == (not saved["notes"])


def _turns(weights, activations, oom_at=None):
    """A stand-in GPU on which variant A's steps take 150 + 300 ms, B's 120 + 240 ms;
    ``oom_at=(variant, n)``: that variant's n-th call runs out of memory. Its ``log`` holds
    (variant, steps) per call."""
    return StandInGpu(weights=weights, activations=activations, oom_at=oom_at,
                      step_ms={"A": (150.0, 300.0), "B": (120.0, 240.0)})


def test_stack_variants_take_turns_in_alternating_rounds_and_each_peak_is_its_own(wb_root):
    """Two variants, 6 timed steps each over 4 rounds (2, 2, 1, 1): A B | B A | A B | B A. A
    variant's first turn warms it up; a later turn that follows the other variant runs one untimed
    step; a turn that follows its own (B at the start of round 2) does not. Peaks leave out the
    other variant's resident weights."""
    gpu = _turns(weights={"A": 2e9, "B": 1e9}, activations={"A": 60e9, "B": 40e9})
    bar = _bar()
    cfg = _cfg(gpu, stack_variants=["A", "B"], stack_rounds=4, iterations=6, warmup=1)
    a, b = stack.measure_batch(cfg, gpu, 256, progress=bar)
    # round 1: each built, warmed up, timed
    assert gpu.log == [("A", 1), ("A", 2), ("B", 1), ("B", 2),
                       # round 2, reversed: B goes on, A warms
                       ("B", 2), ("A", 1), ("A", 2),
                       ("A", 1), ("B", 1), ("B", 1),            # round 3
                       ("B", 1), ("A", 1), ("A", 1)]            # round 4, reversed
    assert bar.n == 2 * 4
    for row, ms, peak, held in ((a, 450.0, 62.0, 2.0), (b, 360.0, 41.0, 1.0)):
        assert row["status"] == "ok" and row["iterations"] == 6 and row["rounds"] == 4
        assert row["fwd_bwd_ms"] == ms and row["peak_gb"] == pytest.approx(peak)
        assert row["weights_and_inputs_gb"] == pytest.approx(held)
    assert stack.round_sizes(20, 4) == [5, 5, 5, 5] and stack.round_sizes(6, 4) == [2, 2, 1, 1]


def test_a_variant_out_of_memory_in_a_later_round_leaves_the_others_measured(wb_root):
    # B's fourth call is its untimed step at the start of round 3: it runs out of memory there
    gpu = _turns(weights={"A": 2e9, "B": 1e9}, activations={"A": 60e9, "B": 40e9}, oom_at=("B", 4))
    bar = _bar()
    cfg = _cfg(gpu, stack_variants=["A", "B"], stack_rounds=4, iterations=4, warmup=1)
    a, b = stack.measure_batch(cfg, gpu, 256, progress=bar)
    assert b["status"] == "out of memory" and "fwd_bwd_ms" not in b
    assert b["note"] == ("out of memory at 80 GB (2.0 GB of it the other variants' weights and "
                         "inputs) in round 3 of 4, its timed steps so far dropped")
    assert a["status"] == "ok" and a["iterations"] == 4 and a["fwd_bwd_ms"] == 450.0
    # round 4: A alone, no untimed step (B never ran)
    assert [v for v, _ in gpu.log[-2:]] == ["A", "A"]
    assert bar.n == 2 * 4
    assert a["telemetry"].startswith("not measured: ")


def test_ratios_and_the_power_note_give_energy_and_clock(wb_root):
    def tele(row, mhz, watts, joules, capped):
        return {**row, "sm_clock_mhz": mhz, "power_w": watts, "energy_j_per_step": joules,
                "power_capped_share": capped, "power_limit_w": 700.0}

    base = tele(_step("transformers-sdpa", 449.3, 440, 455, 65.6), 1795, 656, 295.0, 1.0)
    fused = tele(_step("fused", 353.9, 350, 360, 43.6), 1645, 676, 239.0, 1.0)
    (r,) = exp.stack_ratios([base, fused])
    assert r["energy_ratio"] == pytest.approx(239 / 295)
    assert r["sm_clock_ratio"] == pytest.approx(1645 / 1795)
    note = exp.power_note([base, fused])
    assert note.startswith("2 of 2 stack rows ran with the GPU at its power limit (700 W)")
    assert "transformers-sdpa at batch 256: 1795 MHz, 656 W, 295 J a step" in note
    assert "fused at batch 256: 1645 MHz, 676 W, 239 J a step" in note
    # rows below the cap, or without telemetry, give no note and no energy ratio
    plain = _step("fused", 353.9, 350, 360, 43.6)
    assert exp.power_note([{**base, "power_capped_share": 0.2}, plain]) is None
    assert "energy_ratio" not in exp.stack_ratios([base, plain])[0]
    # where NVML gave temperatures, each row's first and highest go with its clock
    warm = {**fused, "gpu_temp_start_c": 58.0, "gpu_temp_c": 66.2, "gpu_temp_max_c": 71.0}
    note = exp.power_note([base, warm])
    assert "energy per step, GPU temperature from the first sample to the highest:" in note
    assert "fused at batch 256: 1645 MHz, 676 W, 239 J a step, 58-71 C" in note
    assert "transformers-sdpa at batch 256: 1795 MHz, 656 W, 295 J a step;" in note


def test_headline_reads_the_recorded_tables(tmp_path, wb_root):
    rec = Recorder("triton_precision", PARAMS, run_dir=tmp_path / "run")
    rec.add_group("precision", [
        {"kernel": "mlp", "dtype": "bfloat16", "tensor": "output", "impl": "triton", "max_abs": 1.0,
         "mean_ulp": 0.3, "verdict": "FAIL"},
        {"kernel": "mlp", "dtype": "bfloat16", "tensor": "output", "impl": "eager", "max_abs": 0.4,
         "mean_ulp": 0.5, "verdict": ""}], kernel="mlp", dtype="bfloat16")
    for impl, ulp in ((precision.CLAIM_IMPLS[0], 0.6), (precision.CLAIM_IMPLS[1], 0.3)):
        rec.add("claim", {"dtype": "bfloat16", "impl": impl, "mean_ulp": ulp})
    rec.add_group("stack",
                  [_step("transformers-sdpa", 450, 445, 455, 60),
                   _step("fused", 300, 298, 302, 30)],
                  batch=256)
    figures = exp.headline(rec)
    assert figures == {"precision_verdict": "FAIL: mlp/bfloat16",
                       "fc1_gelu_bf16_mean_ulp_eager": 0.6,
                       "fc1_gelu_bf16_mean_ulp_triton": 0.3, "stack_b256_fwd_bwd_speedup": 1.5,
                       "stack_b256_peak_memory_ratio": 0.5}
    assert record.load(rec.path)["headline"] == figures


# ---- configure: the rules between parameters, after the spec's single-value checks --------------
def _take(**kw):
    """The first cell's checks: the spec's (as SPEC.take does), then configure's."""
    return exp.configure(SPEC.check({"device": "cpu", **kw}))


@pytest.mark.parametrize("kw, sentence", [
    (dict(intermediate=0), "Parameter intermediate=0 is not allowed: an integer of at least 1."),
    (dict(iterations=0), "Parameter iterations=0 is not allowed: an integer of at least 1."),
    (dict(stack_rounds=0), "Parameter stack_rounds=0 is not allowed: an integer of at least 1."),
    (dict(stack_rounds=6, iterations=5), "Parameter stack_rounds=6 is not allowed: at most "
     "iterations=5, since each round times at least one step of every stack variant."),
    (dict(warmup=-1), "Parameter warmup=-1 is not allowed: an integer of at least 0."),
    (dict(speed_tokens=[64, 0]),
     "Parameter speed_tokens=[64, 0] is not allowed: a list of integers "
     "of at least 1."),
    (dict(stack_batches="[256, -1]"),
     "Parameter stack_batches='[256, -1]' is not allowed: a list of "
     "integers of at least 1."),
    (dict(seed=-3), "Parameter seed=-3 is not allowed: an integer from 0 to 4294967295."),
    (dict(heads=5, kernels=["block"]),
     "Parameter heads=5 is not allowed: a divisor of hidden=72 giving "
     "a head size that is a multiple of 8 for the block kernel (fused SDPA kernels need it; "
     "72/5 = 14.4)."),
    (dict(claim_shape=[4, 8]),
     "Parameter claim_shape=[4, 8] is not allowed: three positive integers "
     "[tokens, in_features, out_features]."),
    (dict(hidden=20000),
     "Parameter hidden=20000 is not allowed: at most 16384: the Triton LayerNorm "
     "keeps one row in a program."),
])
def test_configure_refuses_with_one_sentence(kw, sentence):
    from workbook.errors import ParameterError

    with pytest.raises(ParameterError) as e:
        _take(**kw)
    assert str(e.value) == sentence


def test_the_head_rule_applies_only_to_the_block_kernel():
    cfg = _take(heads=5, kernels=["layernorm", "mlp"])
    assert cfg.p.heads == 5 and cfg.p.kernels == ["layernorm", "mlp"]


def test_configure_on_the_cpu_has_no_gpu_and_drops_repeated_list_items(wb_root, tmp_path):
    cfg = _take(kernels=["mlp", "layernorm", "mlp"], stack_batches=[256, 256])
    assert cfg.device == "cpu" and cfg.gpu is None and cfg.target.reason == "requested"
    assert cfg.p.kernels == ["mlp", "layernorm"] and cfg.p.stack_batches == [256]
    assert any("Triton interpreter" in n for n in cfg.notes)
    (setup,) = exp.describe(cfg)
    assert setup["kernels"] == "mlp, layernorm" and setup["precision shape"] == "64 x 72 (MLP 100)"
    rec = Recorder("triton_precision", dict(cfg.p), run_dir=tmp_path / "run")
    exp.start_record(cfg, rec)
    saved = record.load(rec.path)
    assert saved["device"] == "cpu" and saved["notes"] == cfg.notes


def test_model_check_compares_nonzero_outputs_and_gradients():
    """The fused tower matches transformers on the tiny config, and each row carries the sizes it
    was measured against, so that a zero difference between all-zero tensors cannot pass for
    agreement."""
    rows = precision.model_check_rows("cpu", 0)
    assert [r["grids"] for r in rows] == ["all 4x4", "4x4, 3x5 (padded), 2x2 (padded)"]
    for r in rows:
        assert r["last_hidden_abs_max"] > 0.1 and r["grad_abs_max"] > 0.1
        # every parameter of the tiny tower gets a gradient
        assert r["grads_nonzero"] == r["grads"] > 40
        assert r["last_hidden_max_abs_diff"] < 1e-5 * r["last_hidden_abs_max"] * 10
        # the kernels differ from cuBLAS/aten in the last bits
        assert 0 < r["worst_grad_max_abs_diff"] < 1e-4


def test_model_check_problems_name_comparisons_of_zeros():
    good = {"grids": "all 4x4", "last_hidden_abs_max": 3.1, "grads_nonzero": 48, "grads": 48,
            "last_hidden_max_abs_diff": 1e-6, "worst_grad_max_abs_diff": 2e-5}
    assert exp.model_check_problems([good]) == []
    zeros = dict(good, last_hidden_abs_max=0.0, grads_nonzero=3, last_hidden_max_abs_diff=0.0,
                 worst_grad_max_abs_diff=0.0)
    (why,) = exp.model_check_problems([good, zeros])
    assert "45 of 48 gradients are all zero" in why and "do not show that the models agree" in why


def test_the_seam_holds_every_cuda_call():
    """The sections reach torch.cuda only through the seam: none of their modules but gpu.py names
    it."""
    import inspect

    for mod in (exp, precision, kernel_speed, stack, verdict):
        assert "torch.cuda" not in inspect.getsource(mod), mod.__name__
