"""One torchrun rank of a tensor-parallel Mistral run: load, shard, generate, measure, write JSON.

Started by :func:`workbook.llm.launch.launch` as ``python -m torch.distributed.run ... -m
workbook.llm.decode SPEC OUT``; never imported by a notebook. Every rank loads the checkpoint,
shards it with the plan the spec names (:mod:`workbook.llm.shard`; the spec was checked before
torchrun started) and takes part in every forward; rank 0 writes ``result.json`` and every rank
writes ``rank<R>.json`` (its memory), atomically, into OUT.

torchrun starts each rank in a session of its own, so a rank would outlive a torchrun killed with
SIGKILL: :func:`main` first asks Linux to SIGKILL this rank when its parent dies.

Decode is a plain loop with a KV cache (dynamic, or static for CUDA graphs/compile), run for exactly
``max_new_tokens`` (no stop at EOS) so that timings compare; greedy unless ``do_sample``.
"""
from __future__ import annotations

import faulthandler
import gc
import json
import os
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path

PAD_ID = 0
BYTE_LO = 3  # fixed-forward ids avoid pad/bos/eos
END_STACK_DUMP_S = 60  # a rank still winding down this long after its results prints its stacks

_T0 = time.perf_counter()


def die_with_torchrun() -> None:
    """SIGKILL this process when its parent (torchrun) dies; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    from workbook import proc

    proc.set_parent_death_signal()
    try:  # the parent may have died before prctl took effect: this process was handed on
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        parent = b""
    if b"torch.distributed.run" not in parent and b"torchrun" not in parent:
        os._exit(1)


def _progress(msg: str) -> None:
    """One timestamped line per stage into torchrun's log: a timeout's log tail shows the stage.
    The line goes out in one write (print writes the newline apart), so that the ranks' lines,
    appended to one log at the same moment, do not run into each other."""
    sys.stderr.write(f"[rank {os.environ.get('RANK', 0)} +{time.perf_counter() - _T0:7.1f} s] "
                     f"{msg}\n")
    sys.stderr.flush()


def _rank_env() -> tuple[int, int, int]:
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_tensor(t):
    """A plain tensor from a DTensor (transformers' plan may hand back DTensors) or a tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def load_plain(model_dir: str, dtype, device):
    """The whole model on ``device``: from its weights, or seeded random weights drawn there for a
    config-only folder (every rank, and the server, draw the same weights from the same seed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbook.models.mistral import random_init_seed

    seed = random_init_seed(model_dir)
    if seed is not None:  # config only: every rank draws the same seeded weights, on its device
        torch.manual_seed(seed)
        with torch.device(device):
            config = AutoConfig.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model.eval()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()


def load(spec, rank, world, device):
    """The model loaded and sharded with the spec's plan, and the facts of the split."""
    import torch

    from workbook.llm import shard

    dtype = getattr(torch, spec.dtype)
    if world == 1:
        from workbook.llm.fuse import fuse_projections

        model = load_plain(spec.model, dtype, device)
        cfg = model.config
        return model, {"tp_mechanism": "none (one process)",
                       "heads_per_rank": cfg.num_attention_heads,
                       "kv_heads_per_rank": cfg.num_key_value_heads,
                       "projections": fuse_projections(model)}
    if spec.tp_mechanism == "tp_plan":
        model = shard.load_tp_plan(spec.model, dtype, world)
        cfg = model.config
        return model, {"tp_mechanism": "tp_plan",
                       "heads_per_rank": cfg.num_attention_heads // world,
                       "kv_heads_per_rank": cfg.num_key_value_heads // world}
    model = load_plain(spec.model, dtype, device)
    q, k = shard.parallelize(model, rank, world, device, local=spec.tp_mechanism == "local_shards")
    if device.type == "cuda":  # the whole model was built before sharding: free the dropped slices
        torch.cuda.empty_cache()
    return model, {"tp_mechanism": spec.tp_mechanism, "heads_per_rank": q, "kv_heads_per_rank": k}


def _pick(logits, spec, gen):
    """Next token ids from last-position logits: argmax, or temperature/top-k/top-p sampling."""
    import torch

    if not spec.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(spec.temperature, 1e-6)
    if spec.top_k:
        kth = torch.topk(logits, min(spec.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if spec.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > spec.top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def cache_keyword(model) -> str:
    """The keyword the model's forward takes its KV cache under: ``cache`` from transformers 5.2x
    on (where ``past_key_values`` is deprecated), ``past_key_values`` before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def generate(model, prompt_ids, spec, device, max_new, step_fn=None):
    """Left-padded batch decode with a KV cache; returns (new ids per prompt, ttft_ms, step ms)."""
    import torch
    import torch.distributed as dist
    from transformers import DynamicCache, StaticCache

    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[PAD_ID] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    static = spec.cache == "static"
    if static:  # fixed shapes for CUDA graphs: the mask spans the cache; causality hides the rest
        cache = StaticCache(config=model.config, max_cache_len=width + max_new)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], max_new)], dim=1)
    else:
        cache = DynamicCache(config=model.config)
    gen = torch.Generator(device=device).manual_seed(spec.seed) if spec.do_sample else None
    share = spec.do_sample and dist.is_initialized()  # every rank must continue with one token
    step = model if step_fn is None else step_fn
    kv = {cache_keyword(model): cache}
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kv, use_cache=True,
                    cache_position=torch.arange(width, device=device), logits_to_keep=1)
        nxt = _pick(full_tensor(out.logits)[:, -1], spec, gen)
        if share:
            dist.broadcast(nxt, 0)
        _sync(device)
        ttft_ms = (time.perf_counter() - t0) * 1e3
        tokens, steps_ms = [nxt], []
        pos = pos[:, -1:]
        cache_pos = torch.tensor([width], device=device)
        # On a GPU each step is timed with CUDA events and the host never waits, so it queues the
        # next step while the GPU runs this one (as a server would); on the CPU, wall time a step.
        cuda = device.type == "cuda"
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(max_new)] if cuda else None
        if marks:
            marks[0].record()
        for i in range(max_new - 1):
            if not static:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pos = pos + 1
            t0 = time.perf_counter()
            out = step(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, **kv,
                       use_cache=True, cache_position=cache_pos)
            nxt = _pick(full_tensor(out.logits)[:, -1], spec, gen)
            if share:
                dist.broadcast(nxt, 0)
            cache_pos = cache_pos + 1
            tokens.append(nxt)
            if marks:
                marks[i + 1].record()
            else:
                steps_ms.append((time.perf_counter() - t0) * 1e3)
        if marks:
            _sync(device)
            steps_ms = [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]
    new = torch.stack(tokens, dim=1).tolist()
    return new, ttft_ms, steps_ms


def _memory(model, device) -> dict:
    import torch

    local = 0
    for p in model.parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        local += t.numel() * t.element_size()
    row = {"param_mib_local": local / 2**20}
    if device.type == "cuda":
        row.update(memory_kind="cuda_max_memory_allocated",
                   peak_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        row.update(memory_kind="cpu_peak_rss",
                   peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def _use_symm_mem_all_reduce(mesh) -> None:
    """Let inductor lower the compiled step's small all-reduces (a few KiB a layer at batch 1, under
    its threshold) to ``symm_mem.one_shot_all_reduce``: each rank reads its peers' buffers over
    NVLink in one kernel, instead of NCCL's ring protocol. No NVLink multicast is involved."""
    import torch._inductor.config as inductor_config
    import torch.distributed as dist
    from torch.distributed import _symmetric_memory as symm_mem

    names = {dist.group.WORLD.group_name}
    if mesh is not None:
        names.add(mesh.get_group().group_name)
    for name in sorted(names):
        symm_mem.enable_symm_mem_for_group(name)
    inductor_config._collective.auto_select = True
    _progress("compiled all-reduces: symmetric-memory one-shot")


def weight_bytes_per_step(model) -> int:
    """Bytes of this rank's weights one decode step reads: every local parameter but the input
    embedding, which is a row lookup (unless the output head shares it)."""
    seen, total = set(), 0
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    skip = set() if head is not None and head.weight is emb.weight else {id(emb.weight)}
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        t = p.to_local() if hasattr(p, "to_local") else p
        total += t.numel() * t.element_size()
    return total


def _start(spec):
    """This rank's device and process group, and a host group for the closing barrier (CUDA)."""
    import torch
    import torch.distributed as dist

    if spec.device != "cuda":
        dist.init_process_group("gloo")
        return torch.device("cpu"), None
    local_rank = _rank_env()[2]
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=device)  # bound to its GPU: NCCL never guesses
    # The closing barrier goes through gloo on the host: an NCCL barrier after the decode step's
    # all-reduces were captured in CUDA graphs can hang.
    return device, dist.new_group(backend="gloo")


def _timed_generation(model, spec, device, step_fn) -> dict:
    """Warm-up generations (untimed), then the timed one."""
    prompts = spec.prompt_ids
    t1 = time.perf_counter()
    # A static cache's shapes depend on max_new_tokens: warm up with the same length (no recompile).
    warm_new = spec.max_new_tokens if spec.cache == "static" else min(spec.max_new_tokens, 3)
    for i in range(spec.warmup):
        generate(model, prompts, spec, device, warm_new, step_fn)
        _progress(f"warm-up generation {i + 1}/{spec.warmup} done ({warm_new} tokens"
                  f"{', compiled step' if step_fn is not None else ''})")
    first_s = time.perf_counter() - t1
    new, ttft_ms, steps_ms = generate(model, prompts, spec, device, spec.max_new_tokens, step_fn)
    _progress(f"timed generation done: {len(steps_ms)} decode steps, {sum(steps_ms) / 1e3:.2f} s")
    return {"warmup_generate_s": first_s if spec.warmup else None, "new": new,
            "ttft_ms": ttft_ms, "steps_ms": steps_ms}


def run(spec, out: Path) -> None:
    import statistics

    import torch
    import torch.distributed as dist
    import transformers
    from transformers import AutoModelForCausalLM  # noqa: F401 - so that load_s is loading only

    from workbook.record import write_json_atomic

    rank, world, _ = _rank_env()
    device, host_group = _start(spec)
    try:
        t0 = time.perf_counter()
        model, facts = load(spec, rank, world, device)
        dist.barrier()
        load_s = time.perf_counter() - t0
        _progress(f"loaded and sharded over {world} ranks in {load_s:.1f} s")
        load_peak_mib = None
        if device.type == "cuda":  # loading held the whole model before sharding: report it apart
            load_peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        gen = torch.Generator().manual_seed(spec.seed)
        fixed = torch.randint(BYTE_LO, model.config.vocab_size, (1, spec.fixed_forward_len),
                              generator=gen)
        with torch.inference_mode():
            logits = full_tensor(model(input_ids=fixed.to(device)).logits).float().cpu()
        _progress("fixed forward done" + ("; the decode step compiles during the first warm-up"
                                          if spec.compile else ""))
        step_fn = None
        if spec.compile:
            if spec.allreduce == "symm_mem":
                _use_symm_mem_all_reduce(getattr(model, "tp_mesh", None))
            step_fn = torch.compile(model, mode="reduce-overhead", fullgraph=False)
        g = _timed_generation(model, spec, device, step_fn)
        steps_ms = g["steps_ms"]
        step_p50_s = statistics.median(steps_ms) / 1e3 if steps_ms else None
        wbytes = weight_bytes_per_step(model)
        write_json_atomic(out / f"rank{rank}.json", {
            "rank": rank, "load_s": load_s, "load_peak_mib": load_peak_mib,
            **_memory(model, device), "weight_gb_read_per_step": wbytes / 1e9,
            # weights only (the KV cache read is small at these lengths): a floor on the bandwidth
            "decode_weight_gb_s": wbytes / 1e9 / step_p50_s if step_p50_s else None})
        if rank == 0:
            torch.save(logits, out / "logits.pt")
            decode_s = sum(steps_ms) / 1e3
            per_seq = len(steps_ms) / decode_s if decode_s > 0 else None
            n = len(spec.prompt_ids)
            write_json_atomic(out / "result.json", {
                "world_size": world, "device": str(device), "backend": dist.get_backend(),
                "dtype": spec.dtype, **facts, "load_s": load_s,
                "warmup_generate_s": g["warmup_generate_s"], "batch_size": n,
                "prompt_tokens": [len(p) for p in spec.prompt_ids],
                "max_new_tokens": spec.max_new_tokens, "do_sample": spec.do_sample,
                "cache": spec.cache, "compile": spec.compile, "allreduce": spec.allreduce,
                "ttft_ms": g["ttft_ms"],
                "decode_ms_per_step_p50": statistics.median(steps_ms) if steps_ms else None,
                "decode_steps_ms": steps_ms, "decode_tokens_s_per_seq": per_seq,
                "decode_tokens_s_total": per_seq * n if per_seq else None,
                "generated_ids": g["new"],
                "fixed_forward": {"input_ids": fixed.tolist(), "logits_file": "logits.pt",
                                  "logits_shape": list(logits.shape)},
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__}})
        _sync(device)
        _progress("results written; waiting for every rank")
        # should the wind-down hang, the launcher's log tail shows every thread's stack
        faulthandler.dump_traceback_later(END_STACK_DUMP_S, exit=False)
        dist.monitored_barrier(group=host_group, timeout=timedelta(seconds=END_STACK_DUMP_S))
        _progress("every rank done; releasing compiled graphs")
        # CUDA graphs that hold NCCL kernels go before the communicator they use
        del step_fn, model
        torch.compiler.reset()
        gc.collect()
        _sync(device)
    finally:
        _progress("closing the process group")
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()
        _progress("process group closed")


def main(argv=None) -> int:
    die_with_torchrun()
    from workbook.llm.launch import RunSpec

    argv = sys.argv[1:] if argv is None else argv
    spec_path, out = Path(argv[0]), Path(argv[1])
    try:
        run(RunSpec(**json.loads(spec_path.read_text())), out)
    except BaseException as e:  # the launcher puts each rank's one-line error before the log tail
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        rank = os.environ.get("RANK", 0)
        (out / f"error_rank{rank}.txt").write_text(f"{type(e).__name__}: {first[:500]}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
