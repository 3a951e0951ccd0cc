"""Tensor-parallel Mistral through torchrun: workbook.llm.launch starting workbook.llm.decode.

Real gloo ranks on the CPU, on the tiny checkpoint the tests write: two ranks give what one process
gives (logits to 1e-4 in fp32, the same greedy tokens) with transformers' ``tp_plan``, with
``parallelize_module`` and ``local_shards`` when KV heads are replicated (tp > KV heads), with a
compiled static-cache decode step, and from a config-only folder. Also: the response shape and its
usage counts, a failing rank's error, a hung rank killed by the timeout, and no rank outliving a
SIGKILLed launcher. The tests marked ``gpu`` repeat the comparison over NCCL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbook.errors import WorkbookError
from workbook.llm.decode import generate
from workbook.llm.launch import RunSpec, launch, logits_diff, torchrun
from workbook.models import mistral

FP32_TOL = 1e-4
PROMPTS = ["Hello there", "Tensor parallel!"]
NEW = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(mistral.create_tiny(tmp_path_factory.mktemp("tiny") / "mistral", seed=0))


@pytest.fixture(scope="module")
def runs(tiny):
    """One process, and two ranks sharded by transformers' own tp_plan."""
    spec = dict(model=tiny, prompts=PROMPTS, max_new_tokens=NEW, warmup=0)
    return {1: launch(RunSpec(**spec), 1, timeout_s=180),
            2: launch(RunSpec(**spec, tp_mechanism="tp_plan"), 2, timeout_s=180)}


def test_two_ranks_match_one_process(runs):
    one, two = runs[1], runs[2]
    assert two["world_size"] == 2 and two["backend"] == "gloo"
    assert two["tp_mechanism"] == "tp_plan" and one["tp_mechanism"] == "none (one process)"
    assert logits_diff(one["logits"], two["logits"]) < FP32_TOL
    assert two["generated_ids"] == one["generated_ids"]
    assert two["heads_per_rank"] == 4 and two["kv_heads_per_rank"] == 2


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
        assert gen["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": NEW,
                                "total_tokens": n_prompt + NEW}


@pytest.mark.parametrize("mechanism", ["parallelize_module", "local_shards"])
def test_replicated_kv_heads_match_a_single_process(tmp_path, mechanism):
    """4 query heads, 1 KV head, tp 2: each rank keeps the one KV head; against an in-process
    model."""
    from transformers import AutoModelForCausalLM

    path = str(mistral.create_tiny(tmp_path / "mqa", seed=1, num_attention_heads=4,
                                   num_key_value_heads=1))
    res = launch(RunSpec(model=path, prompts=PROMPTS, max_new_tokens=NEW, warmup=0,
                         tp_mechanism=mechanism), 2, timeout_s=180)
    assert res["kv_heads_per_rank"] == 1 and res["tp_mechanism"] == mechanism
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor(res["fixed_forward"]["input_ids"])).logits
    assert logits_diff(ref, res["logits"]) < FP32_TOL
    spec = RunSpec(model=path, prompts=PROMPTS)
    ids, _, _ = generate(model, [mistral.encode(p, 512) for p in PROMPTS], spec,
                         torch.device("cpu"), NEW)
    assert res["generated_ids"] == ids


def test_a_failing_rank_raises_with_its_error_and_the_log(tmp_path):
    path = mistral.create_tiny(tmp_path / "broken", seed=0)
    (path / "model.safetensors").unlink()  # the config loads in the launcher; the weights fail
    with pytest.raises(WorkbookError, match=r"failed with exit status 1 \(rank0: OSError: "
                                            r".*last lines of its log"):
        launch(RunSpec(model=str(path), prompts=["hi"], max_new_tokens=2, warmup=0), 1,
               timeout_s=180)


HANG = """import os, sys, time
from workbook.llm.decode import die_with_torchrun
die_with_torchrun()
open(os.path.join(sys.argv[2], "hang_pid" + os.environ["RANK"]), "w").write(str(os.getpid()))
print("rank", os.environ["RANK"], "hanging for 300 s", flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    """The process has ended (or is a zombie waiting for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _wait_gone(pids, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


def test_timeout_kills_a_hung_rank_and_shows_the_log(tmp_path):
    """A rank of the test's own (it hangs); the launcher's timeout takes torchrun and it down."""
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    (tmp_path / "spec.json").write_text("{}")
    t0 = time.monotonic()
    with pytest.raises(WorkbookError, match="timeout") as err:
        torchrun([str(script)], 1, tmp_path, timeout_s=10)
    assert time.monotonic() - t0 < 40
    assert "rank 0 hanging for 300 s" in str(err.value)
    pid = int((tmp_path / "hang_pid0").read_text())
    assert _wait_gone([pid], 5) == [], f"rank {pid} still running after the timeout"


def _processes_of(out: Path) -> dict[int, bytes]:
    """Every live process whose command line names the run folder ``out``."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if str(out).encode() in cmd and not _gone(int(d.name)):
                found[int(d.name)] = cmd
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_no_rank_outlives_a_sigkilled_launcher(tiny, tmp_path):
    """SIGKILL the process that called launch while its ranks run: no finally runs there, yet
    torchrun dies with it and each rank with torchrun."""
    out = tmp_path / "run"
    code = ("from workbook.llm.launch import RunSpec, launch\n"
            f"launch(RunSpec(model={tiny!r}, prompts=['hello'], max_new_tokens=200, warmup=0), 2, "
            f"timeout_s=300, out_dir={str(out)!r})")
    launcher = subprocess.Popen([sys.executable, "-c", code])
    seen: dict[int, bytes] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen.update(_processes_of(out))
            ranks = [p for p, cmd in seen.items()
                     if b"workbook.llm.decode" in cmd and b"torch.distributed.run" not in cmd]
            if len(ranks) == 2:
                break
            assert launcher.poll() is None, "the launcher ended before its ranks started"
            time.sleep(0.2)
        assert len(ranks) == 2, f"two ranks never started: {seen}"
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert _wait_gone(list(seen), 20) == [], "ranks or torchrun outlived the launcher"
    finally:
        for pid in [launcher.pid, *seen]:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("mechanism", ["parallelize_module", "local_shards"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_ranks_with_a_compiled_static_decode_match_one_eager_process(tiny, device, mechanism):
    """The compiled decode step (torch.compile over the sharded model, a static cache) against one
    eager process, with torch's DTensor styles and with the plain-tensor styles: on the CPU
    through gloo, so the compiled path is exercised where CI runs, and over NCCL where GPUs are."""
    n = min(2, torch.cuda.device_count()) if device == "cuda" else 2
    spec = dict(model=tiny, prompts=PROMPTS, max_new_tokens=NEW, device=device)
    one = launch(RunSpec(**spec), 1, timeout_s=300)
    many = launch(RunSpec(**spec, cache="static", compile=True, tp_mechanism=mechanism), n,
                  timeout_s=600)
    assert many["compile"] and many["cache"] == "static" and many["world_size"] == n
    assert many["tp_mechanism"] == (mechanism if n > 1 else "none (one process)")
    assert all(r["decode_weight_gb_s"] > 0 for r in many["ranks"])
    if device == "cuda":
        assert many["backend"] == "nccl"
        assert many["ranks"][0]["memory_kind"] == "cuda_max_memory_allocated"
        assert all(r["load_peak_mib"] is not None for r in many["ranks"])
    assert logits_diff(one["logits"], many["logits"]) < FP32_TOL
    assert many["generated_ids"] == one["generated_ids"]


@pytest.mark.gpu
def test_symmetric_memory_all_reduce_in_the_compiled_step_matches_one_process(tiny):
    """Two GPUs: the compiled step's all-reduces lowered to symm_mem's one-shot kernel give one
    process's answer."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    spec = dict(model=tiny, prompts=PROMPTS, max_new_tokens=NEW, device="cuda")
    one = launch(RunSpec(**spec), 1, timeout_s=300)
    two = launch(RunSpec(**spec, cache="static", compile=True, tp_mechanism="local_shards",
                         allreduce="symm_mem"), 2, timeout_s=600)
    assert two["allreduce"] == "symm_mem" and two["world_size"] == 2
    assert logits_diff(one["logits"], two["logits"]) < FP32_TOL
    assert two["generated_ids"] == one["generated_ids"]


def test_config_only_folder_draws_the_same_seeded_weights_on_every_rank(tmp_path):
    """A config-only model (mistral-7b-shape style) is initialised from its seed where it loads:
    two gloo ranks and one process see the same weights, so their logits and tokens agree."""
    p = mistral.create_config_only(tmp_path / "m", seed=3)
    spec = RunSpec(model=str(p), prompts=["hello"], max_new_tokens=3)
    two, one = launch(spec, 2), launch(spec, 1)
    assert two["tp_mechanism"] == "parallelize_module"
    assert logits_diff(two["logits"], one["logits"]) < 1e-4
    assert two["generated_ids"] == one["generated_ids"]
