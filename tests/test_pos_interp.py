"""The pos_interp experiment module: parameter checks, claim logic, the 2x2 effects, fidelity and
timing rows.

Parameter checks go through the spec and ``configure`` (the first cell's calls); everything that
runs a tower uses a tiny SO400M-shaped one (1 block, width 64: patch 14, native grid 16 at 224 px),
so the file runs in seconds on a CPU and reaches no model hub.
"""
from __future__ import annotations

import pytest
import torch

from workbook import interp, metrics
from workbook.errors import ParameterError
from workbook.experiments import pos_interp as P
from workbook.experiments.pos_interp_claims import verdict
from workbook.record import Recorder, load
from workbook.specs.pos_interp import SPEC

NAME = "ViT-SO400M-14-SigLIP"  # patch 14
ALL = list(interp.IMPLEMENTATIONS)
TINY = dict(embed_dim=64, num_heads=2)


def defaults(**kw) -> dict:
    """The notebook's parameters, cheap."""
    d = dict(device="cpu", implementations=list(ALL), reference="hf_bicubic", candidate="gather4",
             resolutions=[224, 384], tower_resolutions=[224], dtypes=["float32"],
             tower_dtype="float32", batch_sizes=[1], model=NAME, depth=1, pretrained="",
             checkpoint="", iterations=1, warmup=0, seed=0)
    d.update(kw)
    return d


def config(**kw) -> P.Config:
    """The first cell's checks: the spec's (SPEC.take), then configure's."""
    return P.configure(SPEC.check(defaults(**kw)))


def config_error(**kw) -> str:
    with pytest.raises(ParameterError) as e:
        config(**kw)
    return str(e.value)


def assert_sentence(msg: str, name: str, value, *allowed: str) -> None:
    """One sentence: ``Parameter NAME=VALUE is not allowed: ALLOWED.``, naming what is allowed."""
    assert msg.startswith(f"Parameter {name}={value!r} is not allowed: "), msg
    assert msg.endswith(".") and "\n" not in msg, msg
    for a in allowed:
        assert a in msg, (a, msg)


def tiny_config(**kw) -> P.Config:
    """A Config for the tiny tower's small grids (resolutions of a few patches)."""
    d = dict(resolutions=[32, 48], tower_resolutions=[48])
    d.update(kw)
    return config(**d)


@pytest.fixture(scope="module")
def tower():
    from workbook.models import build_tower

    t = build_tower(NAME, depth=1, overrides=TINY)
    assert (t.patch, t.grid, t.width, t.depth) == (14, 16, 64, 1)
    return t


@pytest.fixture
def rec(tmp_path):
    return Recorder("pos_interp", {}, run_dir=tmp_path)


# ---- configure: every bad parameter is one sentence in the first cell ---------------------------

PX = "each at least one patch (14 px for ViT-SO400M-14-SigLIP)"
KNOWN = "hf_bicubic, timm_bicubic_aa, bicubic_ac, bilinear, bilinear_ac, gather4"

BAD = [
    pytest.param(dict(implementations=["bicubicc"]), "implementations", ["bicubicc"],
                 ["from " + KNOWN], id="unknown-implementation"),
    pytest.param(dict(implementations=["hf_bicubic", "gather4", "nope"]), "implementations",
                 ["hf_bicubic", "gather4", "nope"], [KNOWN], id="one-unknown-among-known"),
    pytest.param(dict(implementations=[]), "implementations", [], ["a non-empty list", KNOWN],
                 id="no-implementation"),
    pytest.param(dict(reference="bicubicc"), "reference", "bicubicc", ["one of " + KNOWN],
                 id="unknown-reference"),
    pytest.param(dict(candidate="gather5"), "candidate", "gather5", ["one of " + KNOWN],
                 id="unknown-candidate"),
    pytest.param(dict(resolutions=[10]), "resolutions", [10], [PX, "integer"],
                 id="smaller-than-a-patch"),
    pytest.param(dict(resolutions=[224, 13]), "resolutions", [224, 13], [PX],
                 id="one-below-a-patch"),
    pytest.param(dict(resolutions=[224.5]), "resolutions", [224.5],
                 ["integer image sizes", "each at least one patch"], id="not-integer"),
    pytest.param(dict(resolutions="abc"), "resolutions", "abc", ["integer image sizes"],
                 id="string-abc"),
    pytest.param(dict(resolutions="224.5"), "resolutions", "224.5", ["integer image sizes"],
                 id="string-224.5"),
    pytest.param(dict(resolutions=[]), "resolutions", [], ["a non-empty list"],
                 id="empty-resolutions"),
    pytest.param(dict(resolutions=[True]), "resolutions", [True], ["integer image sizes"],
                 id="bool-resolution"),
    pytest.param(dict(tower_resolutions=[10]), "tower_resolutions", [10], [PX],
                 id="tower-smaller-than-a-patch"),
    pytest.param(dict(tower_resolutions=[]), "tower_resolutions", [], ["a non-empty list"],
                 id="no-tower-resolution"),
    pytest.param(dict(device="tpu"), "device", "tpu", ["one of auto, cpu, cuda"],
                 id="unknown-device"),
    pytest.param(dict(batch_sizes=[0]), "batch_sizes", [0], ["integers of at least 1"],
                 id="batch-0"),
    pytest.param(dict(dtypes=["float64"]), "dtypes", ["float64"], ["float32, bfloat16, float16"],
                 id="dtype-float64"),
    pytest.param(dict(tower_dtype="int8"), "tower_dtype", "int8",
                 ["one of float32, bfloat16, float16"], id="tower-dtype-int8"),
    pytest.param(dict(iterations=0), "iterations", 0, ["an integer of at least 1"],
                 id="iterations-0"),
    pytest.param(dict(iterations=True), "iterations", True, ["an integer of at least 1"],
                 id="iterations-bool"),
    pytest.param(dict(warmup=-1), "warmup", -1, ["an integer of at least 0"],
                 id="warmup-negative"),
    pytest.param(dict(depth=-1), "depth", -1, ["an integer of at least 0"], id="depth-negative"),
    pytest.param(dict(model="ViT-SO400M-14-SigLIPP"), "model", "ViT-SO400M-14-SigLIPP",
                 ["unknown model", "closest open_clip names:", "ViT-SO400M-14-SigLIP,"],
                 id="unknown-model"),
    # checked before the checkpoint is read, so the path need not exist
    pytest.param(dict(pretrained="webli", checkpoint="/no/such/ckpt.pt"), "pretrained", "webli",
                 ["empty when a checkpoint is given"], id="pretrained-and-checkpoint"),
    # before any download or random init
    pytest.param(dict(pretrained="webli", depth=1), "depth", 1,
                 ["0 (as configured) when loading pretrained weights"], id="pretrained-and-depth"),
    pytest.param(dict(seed=-1), "seed", -1, ["an integer from 0 to 4294967295"],
                 id="seed-negative"),
    pytest.param(dict(seed="abc"), "seed", "abc", ["an integer from 0 to 4294967295"],
                 id="seed-text"),
    pytest.param(dict(seed=2 ** 32), "seed", 2 ** 32, ["an integer from 0 to 4294967295"],
                 id="seed-too-large"),
]


@pytest.mark.parametrize("kw, name, value, allowed", BAD)
def test_configure_rejects_bad_parameters(kw, name, value, allowed):
    assert_sentence(config_error(**kw), name, value, *allowed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_configure_cuda_without_gpu():
    msg = config_error(device="cuda")
    assert_sentence(msg, "device", "cuda", "no CUDA GPU", "cpu here")


def test_configure_checkpoint_errors(tmp_path):
    missing = str(tmp_path / "nope.pt")
    assert_sentence(config_error(checkpoint=missing), "checkpoint", missing, "an existing file",
                    ".safetensors")

    no_table = str(tmp_path / "foo.pt")
    torch.save({"foo": torch.zeros(3)}, no_table)
    assert_sentence(config_error(checkpoint=no_table), "checkpoint", no_table,
                    "square position table", "pos_embed")

    with_table = str(tmp_path / "table.pt")
    torch.save({"pos_embed": torch.zeros(1, 16 * 16, 8)}, with_table)
    # a file with a table passes; its depth is checked by the strict load in build (a cut-down
    # tower's checkpoint loads at depth=1, see test_models_siglip), so configure keeps the depth
    for depth in (0, 1):
        cfg = config(checkpoint=with_table, depth=depth)
        assert (cfg.p.checkpoint, cfg.p.depth, cfg.p.pretrained) == (with_table, depth, "")


@pytest.mark.parametrize("given, expected", [
    ("224,384", [224, 384]),
    ("[224, 384]", [224, 384]),
    ("384", [384]),
    ([384, 224, 384], [384, 224]),  # order kept, duplicates dropped
    ([14], [14]),  # exactly one patch is allowed
    ([224.0], [224]),  # a whole number is an integer
])
def test_configure_resolution_forms(given, expected):
    cfg = config(resolutions=given, tower_resolutions=given)
    assert cfg.resolutions == expected and cfg.tower_resolutions == expected


@pytest.mark.parametrize("given", ["[hf_bicubic, gather4]", '["hf_bicubic", "gather4"]',
                                   "hf_bicubic, gather4", ["hf_bicubic", "gather4", "hf_bicubic"]])
def test_configure_implementation_forms(given):
    """Plain papermill (-p) hands lists over as strings; every form gives the same list."""
    assert config(implementations=given).implementations == ["hf_bicubic", "gather4"]


def test_configure_valid():
    cfg = config()
    assert isinstance(cfg, P.Config)
    assert cfg.target.name == "cpu" and cfg.target.reason == "requested"
    assert cfg.patch == 14 and cfg.p.model == NAME
    assert cfg.implementations == ALL and cfg.resolutions == [224, 384] and cfg.notes == []
    # reference and candidate are always measured, even when not listed
    cfg = config(implementations=["bilinear"])
    assert cfg.implementations == ["bilinear", "hf_bicubic", "gather4"]
    cfg = config(implementations="bilinear, gather4", reference="bicubic_ac")
    assert cfg.implementations == ["bilinear", "gather4", "bicubic_ac"]
    assert (cfg.p.reference, cfg.p.candidate) == ("bicubic_ac", "gather4")
    cfg = config(dtypes="float32,bfloat16", batch_sizes="[1, 8]")
    assert cfg.dtypes == ["float32", "bfloat16"] and cfg.batch_sizes == [1, 8]
    # float16 on the CPU is allowed, with a note a reader sees
    cfg = config(tower_dtype="float16")
    assert len(cfg.notes) == 1 and "float16" in cfg.notes[0]


# ---- verdicts and the claim check (synthetic rows, no compute) -----------------------------------

def test_verdict_outcomes():
    assert verdict(20.0, 1.0, 10.0).startswith("not contradicted")
    assert verdict(10.0, 1.0, 10.0).startswith("not contradicted")  # at the low end of the claim
    assert verdict(1.0, 0.5, 10.0).startswith("not supported")
    assert verdict(-5.0, 1.0, 3.0).startswith("not supported")  # slower is not a saving
    assert verdict(8.0, 5.0, 10.0).startswith("inconclusive")  # the spread reaches the claim
    assert verdict(12.0, 15.0, 10.0).startswith("inconclusive")  # above the claim, inside the noise


def speed(res, batch, impl, median, ref_median, *, spread=0.1, native=False):
    return {"resolution": res, "batch": batch, "implementation": impl, "native": native,
            "forward_median_ms": median, "forward_p10_ms": median - spread / 2,
            "forward_p90_ms": median + spread / 2,
            "saving_vs_reference_pct": 100 * (1 - median / ref_median)}


def table_row(table, impl, cos, grid="16->27", dtype="float32"):
    return {"table": table, "resolution": 384, "grid": grid, "dtype": dtype, "implementation": impl,
            "cosine_min": cos}


def by_claim(rows):
    return {r["claim"].split(":")[0]: r for r in rows}


def test_claim_check_speed_verdicts(rec, tmp_path):
    cfg = tiny_config(resolutions=[224, 384], tower_resolutions=[384, 512], batch_sizes=[1])
    rows = [
        # 384 px: a clear 20 % saving with a 1 % spread
        speed(384, 1, "hf_bicubic", 100.0, 100.0, spread=1.0),
        speed(384, 1, "gather4", 80.0, 100.0, spread=1.0),
        # 512 px: 1 % saved with a tiny spread
        speed(512, 1, "hf_bicubic", 100.0, 100.0), speed(512, 1, "gather4", 99.0, 100.0),
        # other implementations do not enter the verdict, however fast
        speed(512, 1, "bilinear", 1.0, 100.0),
    ]
    out = by_claim(P.claim_check(cfg, [], rows, [], [], rec))
    assert out["TTFT -10..15 % overall (serving benchmark)"]["verdict"].startswith("not measured")
    assert out["TTFT -10..15 % overall (serving benchmark)"]["measured"] == "-"
    assert out["384 px"]["verdict"].startswith("not contradicted")
    assert "+20.0 % saved" in out["384 px"]["measured"]
    assert "100 -> 80 ms" in out["384 px"]["measured"]
    assert out["512 px"]["verdict"].startswith("not supported")
    assert "+1.0 % saved" in out["512 px"]["measured"]
    assert out["1024 px"]["verdict"] == "not measured at 1024 px (add it to tower_resolutions)"
    assert out["1024 px"]["measured"] == "-"
    saved = load(tmp_path / "results.json")
    assert [r["claim"] for r in saved["tables"]["claim_check"]] == [
        c["claim"] for c in P.CLAIMS] + ["cosine similarity > 0.91 (gather4 vs hf_bicubic)"]
    # the tower saving at the largest tower resolution and smallest batch is a headline figure
    assert saved["headline"]["tower_saving_pct_512px_b1"] == pytest.approx(1.0)


def test_claim_check_native_grid_and_mixed_batches(rec):
    cfg = tiny_config(resolutions=[384], tower_resolutions=[384, 512], batch_sizes=[1, 8])
    rows = [speed(384, b, i, m, 100.0, native=True) for b in (1, 8)
            for i, m in (("hf_bicubic", 100.0), ("gather4", 50.0))]
    rows += [speed(512, 1, "hf_bicubic", 100.0, 100.0), speed(512, 1, "gather4", 70.0, 100.0),
             speed(512, 8, "hf_bicubic", 100.0, 100.0), speed(512, 8, "gather4", 99.5, 100.0)]
    out = by_claim(P.claim_check(cfg, [], rows, [], [], rec))
    assert out["384 px"]["verdict"].startswith("native grid")
    v = out["512 px"]["verdict"]
    assert v.startswith("batch 1: not contradicted") and "; batch 8: not supported" in v
    assert "batch 1:" in out["512 px"]["measured"] and "batch 8:" in out["512 px"]["measured"]


def test_claim_check_cosine_and_headline(rec, tmp_path):
    cfg = tiny_config(resolutions=[224, 384], tower_resolutions=[384], batch_sizes=[1])
    tables = [
        table_row("random", "gather4", 0.5),
        table_row("sincos", "gather4", 0.99),
        table_row("sincos", "gather4", 0.0, grid="16->16"),  # native grid: not interpolated
        table_row("sincos", "gather4", 0.0, dtype="bfloat16"),  # only the first dtype is counted
        table_row("sincos", "bilinear", 0.0),  # not the candidate
    ]
    fid = [{"resolution": 384, "batch": 1, "implementation": "gather4", "cosine_min": 0.98},
           {"resolution": 384, "batch": 1, "implementation": "bicubic_ac", "cosine_min": 0.1}]
    times = (("hf_bicubic", 2.0), ("timm_bicubic_aa", 0.1), ("gather4", 0.5), ("bilinear", 0.25))
    interp_rows = [{"resolution": 384, "dtype": "float32", "implementation": i,
                    "interp_median_ms": ms} for i, ms in times]
    interp_rows.append({"resolution": 224, "dtype": "float32", "implementation": "bilinear",
                        "interp_median_ms": 0.01})
    speed_rows = [speed(384, 1, "hf_bicubic", 100.0, 100.0), speed(384, 1, "gather4", 96.0, 100.0)]
    cos = P.claim_check(cfg, tables, speed_rows, fid, interp_rows, rec)[-1]
    assert cos["low"] == P.COSINE_CLAIM == 0.91
    # sincos (0.99) and the embedding pass
    assert cos["verdict"].startswith("fails on the random table (")
    assert cos["measured"] == ("min per-position cosine: random table 0.5000, sincos table 0.9900, "
                               "pooled embedding 0.9800")

    head = load(tmp_path / "results.json")["headline"]
    assert head["interp_ms_hf_bicubic_384px_float32"] == 2.0
    assert head["fastest_bilinear"] == "bilinear"  # timm_bicubic_aa is faster but bicubic
    assert head["interp_ms_fastest_bilinear_384px_float32"] == 0.25
    assert head["interp_speedup_384px"] == pytest.approx(8.0)
    assert head["tower_saving_pct_384px_b1"] == pytest.approx(4.0)
    assert head["cosine_min_tables"] == 0.5 and head["cosine_min_embedding"] == 0.98


def test_claim_check_cosine_boundary_and_pass(rec):
    cfg = tiny_config(resolutions=[384])
    at = P.claim_check(cfg, [table_row("sincos", "gather4", 0.91)], [], [], [], rec)[-1]
    assert at["verdict"].startswith("fails on the sincos table")  # the claim is "above 0.91"
    emb = [{"resolution": 384, "batch": 1, "implementation": "gather4", "cosine_min": 0.97}]
    ok = P.claim_check(cfg, [table_row("sincos", "gather4", 0.95)], [], emb, [], rec)[-1]
    assert ok["verdict"].startswith("holds on every table and embedding")
    assert "sincos table 0.9500" in ok["measured"] and "pooled embedding 0.9700" in ok["measured"]


def test_claim_check_cosine_needs_a_measurement(rec):
    cfg = tiny_config(resolutions=[224])
    native_only = [table_row("random", "gather4", 1.0, grid="16->16")]
    cos = P.claim_check(cfg, native_only, [], [], [], rec)[-1]
    assert not cos["verdict"].startswith("holds")


# ---- effects and table fidelity on the tiny tower's tables ---------------------------------------

@pytest.fixture(scope="module")
def tabs(tower):
    t = P.tables(tiny_config(), tower)
    assert set(t) == {"random", "sincos"} and all(v.shape == (16 * 16, 64) for v in t.values())
    return t


def test_effects(tabs, rec, tmp_path):
    cfg = tiny_config(resolutions=[112, 384])  # grids 8 (down) and 27 (up) from 16
    rows = P.effects(cfg, tabs, rec)
    assert len(rows) == len(tabs) * 2 * 5
    for tname in tabs:
        for res in cfg.resolutions:
            mine = [r for r in rows if r["table"] == tname and r["resolution"] == res]
            assert [(r["effect"], r["from"], r["to"]) for r in mine] == P.EFFECTS
            both = mine[-1]
            g = res // 14
            tab = tabs[tname].double()
            direct = metrics.compare(interp.interpolate("gather4", tab, (g, g)),
                                     interp.interpolate("hf_bicubic", tab, (g, g)))
            assert (both["cosine_min"], both["cosine_mean"], both["max_abs_diff"]) == (
                direct["cosine_min"], direct["cosine_mean"], direct["max_abs_diff"])
            # every effect changes something: none of the four changes is an identity
            assert all(r["max_abs_diff"] > 0 for r in mine)
            if tname == "sincos":  # a smooth table: every variant stays close
                assert min(r["cosine_min"] for r in mine) > 0.98
    assert load(tmp_path / "results.json")["tables"]["effects"] == rows


def test_table_fidelity(tabs, rec, tmp_path):
    cfg = tiny_config(resolutions=[112, 384], dtypes=["float32", "bfloat16"])
    rows = P.table_fidelity(cfg, tabs, rec)
    assert len(rows) == len(tabs) * 2 * 2 * len(ALL)
    assert {r["grid"] for r in rows} == {"16->8", "16->27"}
    get = {(r["table"], r["resolution"], r["dtype"], r["implementation"]): r for r in rows}
    for tname in tabs:
        for res in cfg.resolutions:
            ref32 = get[tname, res, "float32", "hf_bicubic"]
            assert ref32["cosine_min"] > 0.999999
            assert ref32["norm_ratio"] == pytest.approx(1.0, abs=1e-6)
            ref16 = get[tname, res, "bfloat16", "hf_bicubic"]
            assert 0.999 < ref16["cosine_min"] < ref32["cosine_min"]  # bfloat16 rounding costs
            # gather4 is bilinear with align_corners=True, computed another way
            assert get[tname, res, "float32", "gather4"]["cosine_min"] == pytest.approx(
                get[tname, res, "float32", "bilinear_ac"]["cosine_min"], abs=1e-6)
    # bilinear averages neighbours: on an uncorrelated table it shrinks norms, upsampling included
    up = get["random", 384, "float32", "bilinear"]
    assert up["grid"] == "16->27" and up["norm_ratio"] < 0.9
    assert len(load(tmp_path / "results.json")["tables"]["table_fidelity"]) == len(rows)


# ---- per-call speed and the tower forward on the tiny tower --------------------------------------

def test_interp_speed_and_tower_runs(tower, rec, tmp_path):
    cfg = tiny_config(resolutions=[32, 48], tower_resolutions=[48, 224])  # 224 px: native grid 16
    irows = P.interp_speed(cfg, tower, rec)
    # per-call speed covers the table resolutions and the tower's, so every forward has its share
    assert {(r["resolution"], r["implementation"]) for r in irows} == {
        (s, i) for s in (32, 48, 224) for i in ALL}
    assert all(r["interp_median_ms"] > 0 and r["interp_iters"] == 5 and r["dtype"] == "float32"
               for r in irows)
    assert {(r["resolution"], r["grid"], r["native"]) for r in irows} == {
        (32, 2, False), (48, 3, False), (224, 16, True)}

    speed_rows, fid = P.tower_runs(cfg, tower, irows, rec)
    assert len(speed_rows) == len(fid) == 2 * len(ALL)
    per_call = {(r["resolution"], r["implementation"]): r["interp_median_ms"] for r in irows}
    for r in speed_rows:
        assert r["forward_median_ms"] > 0 and r["forward_iters"] == 1
        assert r["pixels"] == r["grid"] * 14 and r["native"] == (r["resolution"] == 224)
        assert r["interp_ms"] == per_call[r["resolution"], r["implementation"]]
        assert r["interp_share_pct"] == pytest.approx(100 * r["interp_ms"] / r["forward_median_ms"])
        if r["implementation"] == "hf_bicubic":
            assert r["saving_vs_reference_pct"] == 0.0
    for r in fid:
        if r["implementation"] == "hf_bicubic":
            assert r["cosine_min"] == pytest.approx(1.0, abs=1e-12) and r["max_abs_diff"] == 0.0
        if r["resolution"] == 224:  # at the native grid every implementation returns the table
            assert r["max_abs_diff"] == 0.0
    off_grid = [r for r in fid if r["resolution"] == 48 and r["implementation"] == "gather4"][0]
    assert 0.9 < off_grid["cosine_min"] < 1.0  # a real but small change to the pooled embedding
    assert tower.interp is None  # timm's own resample is restored

    saved = load(tmp_path / "results.json")["tables"]
    assert saved["interp_speed"] == irows
    assert saved["tower_speed"] == speed_rows
    assert saved["embedding_fidelity"] == fid


def test_resumed_run_takes_finished_steps(tower, tmp_path, monkeypatch):
    """A run killed after its first tower step resumes: the finished interpolation timings and tower
    step are taken (marked ``resumed_from``), only the rest is measured."""
    from workbook import record

    first = Recorder("pos_interp", {}, run_dir=tmp_path / "first")
    cfg_first = tiny_config(resolutions=[32], tower_resolutions=[48])  # the first run got this far
    irows_first = P.interp_speed(cfg_first, tower, first)
    speed_first, fid_first = P.tower_runs(cfg_first, tower, irows_first, first)

    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "first"))
    rec = Recorder("pos_interp", {}, run_dir=tmp_path / "second")
    cfg = tiny_config(resolutions=[32], tower_resolutions=[48, 224])
    timed = []
    real = P.measure.time_interleaved
    monkeypatch.setattr(P.measure, "time_interleaved",
                        lambda fns, **k: timed.append(len(fns)) or real(fns, **k))
    irows = P.interp_speed(cfg, tower, rec)
    assert [(r["resolution"], r.get("resumed_from")) for r in irows
            if r["implementation"] == "gather4"] == [(32, "first"), (48, "first"), (224, None)]
    assert [r["interp_median_ms"] for r in irows[:2 * len(ALL)]] == [
        r["interp_median_ms"] for r in irows_first]
    speed_rows, fid = P.tower_runs(cfg, tower, irows, rec)
    assert len(timed) == 2  # the 224 px interpolation timing and the 224 px tower step, no more
    assert [r["forward_median_ms"] for r in speed_rows[:len(ALL)]] == [
        r["forward_median_ms"] for r in speed_first]
    assert {r.get("resumed_from") for r in speed_rows[:len(ALL)]} == {"first"}
    assert {r.get("resumed_from") for r in speed_rows[len(ALL):]} == {None}
    assert [r["cosine_min"] for r in fid[:len(ALL)]] == [r["cosine_min"] for r in fid_first]
    assert {r["resolution"] for r in fid} == {48, 224} and len(fid) == 2 * len(ALL)
    saved = load(tmp_path / "second" / "results.json")
    assert saved["resumed"]["groups"] == {"interp_speed": 2, "tower_speed": 1,
                                          "embedding_fidelity": 1}


def test_resumed_on_another_machine_times_everything_here(tower, tmp_path, monkeypatch):
    """The unfinished run measured on another machine: its timings are measured again (so every
    speed-up compares times from one machine) and the fidelity rows are not doubled."""
    import json

    from workbook import record

    first = Recorder("pos_interp", {}, run_dir=tmp_path / "first")
    cfg = tiny_config(resolutions=[32], tower_resolutions=[48])
    P.tower_runs(cfg, tower, P.interp_speed(cfg, tower, first), first)
    path = tmp_path / "first" / "results.json"
    saved = json.loads(path.read_text())
    saved["hardware"] = {"gpus": [], "hostname": "another-host", "boot_id": "another-boot"}
    path.write_text(json.dumps(saved))

    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "first"))
    rec = Recorder("pos_interp", {}, run_dir=tmp_path / "second")
    irows = P.interp_speed(cfg, tower, rec)
    speed_rows, fid = P.tower_runs(cfg, tower, irows, rec)
    assert {r.get("resumed_from") for r in irows + speed_rows + fid} == {None}
    assert {r["resolution"] for r in fid} == {48} and len(fid) == len(ALL)
    saved = load(tmp_path / "second" / "results.json")
    assert saved["resumed"]["remeasured"] == {"interp_speed": 2, "tower_speed": 1}
    assert len(saved["tables"]["embedding_fidelity"]) == len(ALL)
