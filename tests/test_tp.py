"""Tensor-parallel Mistral (``workbook.llm`` and ``workbook.models.mistral``): real torchrun ranks on the CPU.

Two gloo ranks must give what one process gives on the tiny checkpoint the tests write: logits to 1e-4 in fp32
and the same greedy tokens, also when KV heads are replicated (tp > KV heads). Also: the response shape and its
usage counts, every rule of ``check_tp``, ``load_config`` rejecting what is not a causal LM, the byte-level
prompt encoding, spec validation, and a hung run killed by the launcher's timeout with its log tail in the error.
Runs anywhere (gloo on CPU); the test marked ``gpu`` repeats the comparison over NCCL with a compiled decode step.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from workbook.errors import ParameterError, WorkbookError
from workbook.models import mistral
from workbook.llm.launch import launch, logits_diff
from workbook.llm.worker import cache_keyword, generate

FP32_TOL = 1e-4
PROMPTS = ["Hello there", "Tensor parallel!"]
NEW = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "mistral", seed=0))


@pytest.fixture(scope="module")
def runs(tiny):
    spec = dict(model=tiny, prompts=PROMPTS, max_new_tokens=NEW, warmup=0)
    return {n: launch(spec, n, timeout_s=180) for n in (1, 2)}


def test_two_ranks_match_one_process(runs):
    one, two = runs[1], runs[2]
    assert two["world_size"] == 2 and two["backend"] == "gloo"
    assert logits_diff(one["logits"], two["logits"]) < FP32_TOL
    assert two["generated_ids"] == one["generated_ids"]
    assert two["heads_per_rank"] == 4 and two["kv_heads_per_rank"] == 2
    # Which mechanism sharded the model is recorded, and a fallback from tp_plan is never silent.
    assert two["tp_mechanism"] in ("tp_plan", "parallelize_module")
    if two["tp_mechanism"] == "parallelize_module":
        assert any("tp_plan" in f for f in two["fallbacks"])


def test_each_rank_reports_memory_and_holds_a_shard(runs):
    one, two = runs[1], runs[2]
    assert [r["rank"] for r in two["ranks"]] == [0, 1]
    for r in two["ranks"]:
        assert r["memory_kind"] == "cpu_peak_rss" and r["peak_memory_mib"] > 0
        assert r["param_mib_local"] < one["ranks"][0]["param_mib_local"]
    assert two["load_s"] > 0 and two["ttft_ms"] > 0 and two["decode_tokens_s_total"] > 0


def test_generations_have_the_response_shape_and_usage(runs, tiny):
    res = runs[2]
    assert res["encoding"]["kind"] == "bytes"
    for prompt, gen, ids in zip(PROMPTS, res["generations"], res["generated_ids"]):
        assert set(gen) == {"text", "prompt", "model", "usage"}
        assert gen["prompt"] == prompt and gen["model"] == tiny
        assert gen["text"] == mistral.decode(ids)
        n_prompt = len(prompt.encode("utf-8"))
        assert gen["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": NEW, "total_tokens": n_prompt + NEW}


@pytest.mark.parametrize("mechanism", ["auto", "local_shards"])
def test_replicated_kv_heads_match_a_single_process(tmp_path, mechanism):
    """4 query heads, 1 KV head, tp 2: each rank keeps the one KV head; compared with an in-process model."""
    from transformers import AutoModelForCausalLM

    path = str(mistral.create_tiny(tmp_path / "mqa", seed=1, num_attention_heads=4, num_key_value_heads=1))
    res = launch(dict(model=path, prompts=PROMPTS, max_new_tokens=NEW, warmup=0, tp_mechanism=mechanism), 2,
                 timeout_s=180)
    assert res["kv_heads_per_rank"] == 1 and any("replicated" in n for n in res["notes"])
    if mechanism == "auto":
        assert res["tp_mechanism"] == "parallelize_module"
        assert any("cannot replicate" in f for f in res["fallbacks"])
    else:
        assert res["tp_mechanism"] == "local_shards" and res["fallbacks"] == []
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor(res["fixed_forward"]["input_ids"])).logits
    assert logits_diff(ref, res["logits"]) < FP32_TOL
    spec = dict(do_sample=False, cache="dynamic", seed=0)
    ids, _, _ = generate(model, [mistral.encode(p, 512) for p in PROMPTS], spec, torch.device("cpu"), NEW)
    assert res["generated_ids"] == ids


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_passes_the_cache_under_the_keyword_the_model_takes(tiny, cache):
    """The decode loop gives the KV cache under the name this transformers' forward declares (``cache`` where
    ``past_key_values`` is deprecated), so no deprecated keyword reaches it, and it decodes the same tokens
    with either cache."""
    import warnings

    from transformers import AutoModelForCausalLM

    class Old:
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_keyword(Old()) == "past_key_values"
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    assert cache_keyword(model) in ("cache", "past_key_values")
    prompts = [mistral.encode(p, 512) for p in PROMPTS]
    dynamic, _, _ = generate(model, prompts, dict(do_sample=False, cache="dynamic", seed=0), torch.device("cpu"), NEW)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*deprecated")
        ids, _, _ = generate(model, prompts, dict(do_sample=False, cache=cache, seed=0), torch.device("cpu"), NEW)
    assert ids == dynamic and len(ids[0]) == NEW


def test_asking_for_tp_plan_where_it_cannot_apply_is_refused(tmp_path):
    """No silent fallback: an explicit tp_plan that cannot replicate KV heads is refused before starting."""
    path = str(mistral.create_tiny(tmp_path / "mqa", seed=1, num_attention_heads=4, num_key_value_heads=1))
    with pytest.raises(ParameterError, match=r"tp_mechanism='tp_plan' .*cannot replicate"):
        launch(dict(model=path, tp_mechanism="tp_plan"), 2, timeout_s=5)


def test_a_failing_rank_raises_with_its_error_and_the_log(tmp_path):
    path = mistral.create_tiny(tmp_path / "broken", seed=0)
    (path / "model.safetensors").unlink()  # the config loads in the launcher; the weights fail in the worker
    with pytest.raises(WorkbookError, match=r"failed with exit status 1 \(rank0: OSError: .*last lines of its log"):
        launch(dict(model=str(path), max_new_tokens=2, warmup=0), 1, timeout_s=180)


def test_timeout_kills_a_hung_worker_and_shows_the_log(tiny, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(WorkbookError, match="timeout") as err:
        launch(dict(model=tiny, hang_s=300), 1, timeout_s=10, out_dir=tmp_path)
    assert time.monotonic() - t0 < 40
    assert "hanging for 300 s (test hook)" in str(err.value)
    pid = int((tmp_path / "hang_pid0").read_text())
    for _ in range(50):  # the killed worker disappears (or is at most a zombie awaiting its reaper)
        try:
            state = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {pid} still running after the timeout")


# ---- check_tp rules (no processes) ----

def test_tp_must_divide_attention_heads():
    with pytest.raises(ParameterError, match=r"tp_degree=3 .*8 attention heads"):
        mistral.check_tp(mistral.mistral_config(), 3, 8, None, 1, 16, "float32")


def test_tp_beyond_kv_heads_replicates_them_with_a_note():
    check = mistral.check_tp(mistral.mistral_config(), 8, 8, None, 1, 16, "float32")
    assert check.kv_replicated and check.kv_heads_per_rank == 1 and check.heads_per_rank == 1
    assert any("replicated on 2 ranks" in n for n in check.notes)


def test_tp_must_divide_or_be_a_multiple_of_kv_heads():
    cfg = mistral.mistral_config(hidden_size=48, num_attention_heads=12, num_key_value_heads=4)
    with pytest.raises(ParameterError, match=r"tp_degree=6 .*4 key/value heads"):  # 6 divides 12, not 4, nor 4 it
        mistral.check_tp(cfg, 6, 8, None, 1, 16)
    assert mistral.check_tp(cfg, 2, 8, None, 1, 16).kv_heads_per_rank == 2


def test_tp_must_not_exceed_devices():
    with pytest.raises(ParameterError, match=r"tp_degree=4 .*at most the 2 devices"):
        mistral.check_tp(mistral.mistral_config(), 4, 2, None, 1, 16, "float32")


def test_weights_that_do_not_fit_name_tp_degree():
    with pytest.raises(ParameterError, match=r"tp_degree=2 .*larger tp_degree"):
        mistral.check_tp(mistral.mistral_config(), 2, 2, 1024, 1, 16, "float32")


def test_kv_cache_that_does_not_fit_names_batch_and_sequence():
    cfg = mistral.mistral_config(**mistral.MISTRAL_7B)
    assert abs(mistral.param_count(cfg)["total"] / 1e9 - 7.24) < 0.01
    with pytest.raises(ParameterError, match=r"batch_size=8 .*sequence_length=32768"):
        mistral.check_tp(cfg, 2, 2, 16 * 2**30, 8, 32768, "bfloat16")
    ok = mistral.check_tp(cfg, 2, 2, 16 * 2**30, 1, 4096, "bfloat16")
    # 2 * 32 layers * 4096 positions * 4 KV heads * 128 * 2 bytes = 256 MiB per rank
    assert ok.kv_cache_bytes_per_rank == 2 * 32 * 4096 * 4 * 128 * 2
    assert 6 * 2**30 < ok.weight_bytes_per_rank < 8 * 2**30


# ---- load_config, encoding, spec validation (no processes) ----

def test_load_config_accepts_the_tiny_checkpoint(tiny):
    cfg = mistral.load_config(tiny)
    assert cfg.model_type == "mistral" and cfg.num_key_value_heads == 4


def test_load_config_rejects_a_non_causal_model(tmp_path):
    from transformers import BertConfig, ViTConfig

    BertConfig(architectures=["BertModel"]).save_pretrained(tmp_path / "bert")
    ViTConfig().save_pretrained(tmp_path / "vit")
    for name, what in (("bert", "BertModel"), ("vit", "vit")):
        with pytest.raises(ParameterError, match=rf"Parameter model=.*causal language model .*{what}"):
            mistral.load_config(tmp_path / name)


def test_load_config_rejects_a_missing_path(tmp_path):
    with pytest.raises(ParameterError, match=r"Parameter model=.*nowhere.*config\.json"):
        mistral.load_config(str(tmp_path / "nowhere"))


def test_byte_encoding_round_trips_and_needs_room():
    ids = mistral.encode("héllo", 512)
    assert ids == [b + 3 for b in "héllo".encode()] and mistral.decode(ids) == "héllo"
    assert mistral.decode([0, 1, 2]) == "\ufffd" * 3
    with pytest.raises(ParameterError, match="vocab_size=100"):
        mistral.encode("x", 100)


def test_tiny_checkpoint_has_weights_and_the_encoding_marker(tiny):
    names = set(os.listdir(tiny))
    assert {"config.json", "model.safetensors", mistral.BYTE_MARKER} <= names
    assert mistral.encoder_for(tiny, mistral.load_config(tiny)).kind == "bytes"


@pytest.mark.parametrize("spec, name", [
    (dict(modle="x"), "modle"), (dict(tp_mechanism="magic"), "tp_mechanism"), (dict(compile=True), "compile"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(top_p=1.5), "top_p"), (dict(device="tpu"), "device"),
    (dict(allreduce="symm_mem"), "allreduce"), (dict(allreduce="mpi"), "allreduce")])
def test_launch_rejects_bad_specs_before_starting(tiny, spec, name):
    with pytest.raises(ParameterError, match=rf"Parameter {name}="):
        launch({"model": tiny, **spec}, 1, timeout_s=5)


@pytest.mark.parametrize("mechanism", ["parallelize_module", "local_shards"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_ranks_with_a_compiled_static_decode_match_one_eager_process(tiny, device, mechanism):
    """The compiled decode step (torch.compile over the sharded model, a static cache) against one eager process,
    with torch's DTensor styles and with the plain-tensor styles: on the CPU through gloo, so the compiled path is
    exercised where CI runs, and over NCCL where GPUs are."""
    n = min(2, torch.cuda.device_count()) if device == "cuda" else 2
    spec = dict(model=tiny, prompts=PROMPTS, max_new_tokens=NEW, device=device)
    one = launch(spec, 1, timeout_s=300)
    many = launch({**spec, "cache": "static", "compile": True, "tp_mechanism": mechanism}, n, timeout_s=600)
    assert many["compile"] and many["cache"] == "static" and many["world_size"] == n
    assert many["tp_mechanism"] == (mechanism if n > 1 else "none (one process)")
    assert all(r["decode_weight_gb_s"] > 0 for r in many["ranks"])
    if device == "cuda":
        assert many["backend"] == "nccl" and many["ranks"][0]["memory_kind"] == "cuda_max_memory_allocated"
        assert all(r["load_peak_mib"] is not None for r in many["ranks"])
    assert logits_diff(one["logits"], many["logits"]) < FP32_TOL
    assert many["generated_ids"] == one["generated_ids"]


@pytest.mark.gpu
def test_symmetric_memory_all_reduce_in_the_compiled_step_matches_one_process(tiny):
    """Two GPUs: the compiled step's all-reduces lowered to symm_mem's one-shot kernel give one process's answer."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    spec = dict(model=tiny, prompts=PROMPTS, max_new_tokens=NEW, device="cuda")
    one = launch(spec, 1, timeout_s=300)
    two = launch({**spec, "cache": "static", "compile": True, "tp_mechanism": "local_shards",
                  "allreduce": "symm_mem"}, 2, timeout_s=600)
    assert two["allreduce"] == "symm_mem" and two["world_size"] == 2
    assert logits_diff(one["logits"], two["logits"]) < FP32_TOL
    assert two["generated_ids"] == one["generated_ids"]


def test_config_only_folder_draws_the_same_seeded_weights_on_every_rank(tmp_path):
    """A config-only model (mistral-7b-shape style) is initialised from its seed where it loads: two gloo ranks
    and one process see the same weights, so their logits and greedy tokens agree."""
    from workbook.models import mistral
    from workbook.llm.launch import launch, logits_diff

    p = mistral.create_config_only(tmp_path / "m", seed=3)
    spec = {"model": str(p), "prompts": ["hello"], "max_new_tokens": 3, "tp_mechanism": "parallelize_module"}
    two, one = launch(spec, 2), launch(spec, 1)
    assert two["tp_mechanism"] == "parallelize_module"
    assert logits_diff(two["logits"], one["logits"]) < 1e-4 and two["generated_ids"] == one["generated_ids"]
