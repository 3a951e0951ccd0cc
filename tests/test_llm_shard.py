"""The one tensor-parallel check (``workbook.llm.shard.check``) and the choice of plan, no processes.

Every dimension a plan splits must split: the attention heads, the KV heads (or a multiple of them,
which replicates them, except under transformers' tp_plan) and the MLP width; the degree fits the
devices (more gloo ranks than CPU cores run, noted as oversubscribed), and the weights plus the KV
cache fit a device. Each refusal is one sentence naming the parameter, its value and what works.
"""
from __future__ import annotations

import pytest

from workbook.errors import ParameterError
from workbook.llm import shard
from workbook.models import mistral


def check(config, tp, mechanism="parallelize_module", devices=8, memory=None, batch=1, seq=16,
          dtype="float32", **kw):
    return shard.check(config, tp, mechanism=mechanism, devices=devices, devices_are="devices",
                       bytes_per_device=memory, batch=batch, seq=seq, dtype=dtype, **kw)


def test_tp_must_divide_attention_heads():
    with pytest.raises(ParameterError) as e:
        check(mistral.mistral_config(), 3)
    assert str(e.value) == (
        "Parameter tp_degree=3 is not allowed: one of 1, 2, 4, 8 (a divisor of the model's 8 "
        "attention heads, a divisor or a multiple of its 4 key/value heads, and a divisor of its "
        "MLP width (intermediate_size=128)).")


def test_tp_beyond_kv_heads_replicates_them_with_a_note():
    layout = check(mistral.mistral_config(), 8)
    assert layout.kv_replicated and layout.kv_heads_per_rank == 1 and layout.heads_per_rank == 1
    assert any("replicated on 2 ranks" in n for n in layout.notes)


def test_tp_must_divide_or_be_a_multiple_of_kv_heads():
    cfg = mistral.mistral_config(hidden_size=48, num_attention_heads=12, num_key_value_heads=4)
    with pytest.raises(ParameterError, match=r"tp_degree=6 .*4 key/value heads"):
        check(cfg, 6)  # 6 divides 12, but neither divides 4 nor is a multiple of it
    assert check(cfg, 2).kv_heads_per_rank == 2


@pytest.mark.parametrize("mechanism", ["parallelize_module", "local_shards", "neuron"])
def test_tp_must_divide_the_mlp_width(tmp_path, mechanism):
    """The issue's case: heads and KV heads split three ways, intermediate_size 200 does not;
    the ranks would crash after loading ("a and b must have same reduction dim")."""
    path = mistral.create_tiny(tmp_path / "m", seed=0, hidden_size=48, num_attention_heads=6,
                               num_key_value_heads=6, intermediate_size=200)
    cfg = mistral.load_config(str(path))
    with pytest.raises(ParameterError) as e:
        check(cfg, 3, mechanism)
    assert str(e.value) == (
        "Parameter tp_degree=3 is not allowed: one of 1, 2 (a divisor of the model's 6 attention "
        "heads, a divisor or a multiple of its 6 key/value heads, and a divisor of its MLP width "
        "(intermediate_size=200)).")
    assert check(cfg, 2, mechanism).heads_per_rank == 3
    # transformers' tp_plan splits an MLP width that does not divide unevenly: only heads count
    assert check(cfg, 3, "tp_plan").heads_per_rank == 2


def test_tp_plan_cannot_replicate_kv_heads():
    cfg = mistral.mistral_config(num_attention_heads=4, num_key_value_heads=1)
    with pytest.raises(ParameterError) as e:
        check(cfg, 2, "tp_plan")
    assert str(e.value) == (
        "Parameter tp_mechanism='tp_plan' is not allowed: parallelize_module or local_shards at "
        "tp_degree=2: transformers' tp_plan cannot replicate the model's 1 key/value heads over 2 "
        "ranks.")
    assert check(cfg, 2).kv_replicated


def test_tp_must_not_exceed_devices():
    with pytest.raises(ParameterError, match=r"tp_degree=4 .*at most the 2 devices available"):
        check(mistral.mistral_config(), 4, devices=2)


def test_more_gloo_ranks_than_cores_run_with_a_note():
    layout = check(mistral.mistral_config(), 4, devices=2, shared_cores=True)
    assert any(n.startswith("tp_degree=4 runs 4 ranks on 2 devices: the ranks share cores, so the "
                            "timings are oversubscribed") for n in layout.notes)


def test_weights_that_do_not_fit_name_tp_degree():
    with pytest.raises(ParameterError, match=r"tp_degree=2 .*larger tp_degree"):
        check(mistral.mistral_config(), 2, devices=2, memory=1024)


def test_kv_cache_that_does_not_fit_names_batch_and_sequence():
    cfg = mistral.mistral_config(**mistral.MISTRAL_7B)
    assert abs(mistral.param_count(cfg)["total"] / 1e9 - 7.24) < 0.01
    with pytest.raises(ParameterError, match=r"batch_size=8 .*sequence_length=32768"):
        check(cfg, 2, devices=2, memory=16 * 2**30, batch=8, seq=32768, dtype="bfloat16")
    ok = check(cfg, 2, devices=2, memory=16 * 2**30, batch=1, seq=4096, dtype="bfloat16")
    # 2 * 32 layers * 4096 positions * 4 KV heads * 128 * 2 bytes = 256 MiB per rank
    assert ok.kv_cache_bytes_per_rank == 2 * 32 * 4096 * 4 * 128 * 2
    assert 6 * 2**30 < ok.weight_bytes_per_rank < 8 * 2**30


# ---- the plan on cuda/cpu --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0))


def test_auto_takes_tp_plan_where_it_splits_the_model(tiny):
    cfg = mistral.load_config(tiny)
    assert shard.choose_mechanism("auto", cfg, tiny, 2) == (
        "tp_plan", "tp_mechanism auto: transformers' tp_plan")
    assert shard.choose_mechanism("local_shards", cfg, tiny, 2) == ("local_shards", None)


def test_auto_says_why_it_takes_parallelize_module(tiny, tmp_path):
    mechanism, why = shard.choose_mechanism("auto", mistral.load_config(tiny), tiny, 8)
    assert mechanism == "parallelize_module" and why.startswith(
        "tp_mechanism auto: parallelize_module, since transformers' tp_plan cannot split this "
        "model over 8 ranks")
    only = str(mistral.create_config_only(tmp_path / "c", seed=0))
    mechanism, why = shard.choose_mechanism("auto", mistral.load_config(only), only, 2)
    assert mechanism == "parallelize_module" and "holds only a config" in why
    with pytest.raises(ParameterError, match=r"tp_mechanism='tp_plan' .*holds only a config"):
        shard.choose_mechanism("tp_plan", mistral.load_config(only), only, 2)


@pytest.mark.parametrize("asked", ["tp_plan", "auto"])
def test_tp_plan_without_accelerate_is_refused_naming_the_install(tiny, asked, monkeypatch):
    real = shard.importlib.util.find_spec
    monkeypatch.setattr(shard.importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ParameterError) as e:
        shard.choose_mechanism(asked, mistral.load_config(tiny), tiny, 2)
    assert str(e.value) == (
        f"Parameter tp_mechanism={asked!r} is not allowed: parallelize_module or local_shards "
        "here: transformers' tp_plan needs accelerate, which is not installed (pip install "
        "accelerate).")


# ---- the export search's validator checks its own arguments the same way ---------------------
def test_validator_refuses_a_degree_that_does_not_split_the_mlp(tmp_path, capsys):
    from workbook.llm import validate

    path = mistral.create_tiny(tmp_path / "m", seed=0, hidden_size=48, num_attention_heads=6,
                               num_key_value_heads=6, intermediate_size=200)
    rc = validate.main(["--model", str(path), "--tp", "3", "--batch", "1", "--seq", "64",
                        "--budget-gb", "1", "--devices-available", "8"])
    assert rc == 3
    assert "Parameter tp_degree=3 is not allowed: one of 1, 2 (" in capsys.readouterr().err
