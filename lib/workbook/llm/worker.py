"""One torchrun rank of a tensor-parallel Mistral run: load, shard, measure, write JSON.

Started by :func:`workbook.llm.launch.launch` as ``python -m torch.distributed.run ... -m workbook.llm.worker SPEC
OUT``; never imported by a notebook. Every rank loads the checkpoint, shards it and takes part in every forward;
rank 0 writes ``result.json`` and every rank writes ``rank<R>.json`` (its memory), atomically, into OUT.

Sharding: transformers' own plan (``DistributedConfig(tp_plan="auto")``) is tried first when the spec asks for
``auto``; if it fails (it needs ``accelerate``; it cannot replicate KV heads) the worker falls back to
``torch.distributed.tensor.parallel.parallelize_module`` and the result says which ran and why — never a silent
fallback. ``parallelize_module`` uses ColwiseParallel for q/k/v/gate/up and RowwiseParallel for o/down, so each
attention block sees only its rank's heads; ``local_shards`` runs ``parallelize_module`` with the plain-tensor
styles of :mod:`workbook.llm.styles` (the fast path for a compiled decode step). transformers 5.23's
``MistralAttention`` infers head counts from tensor shapes (``view(..., -1, head_dim)``) and only keeps
``num_key_value_groups``, which an even split leaves unchanged; when KV heads are replicated (tp > KV heads) each
rank keeps the one KV head its query heads use and ``num_key_value_groups`` is set to the query heads per rank.

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
END_STACK_DUMP_S = 60  # a rank still winding down this long after its results are written prints its stacks


_T0 = time.perf_counter()


def _progress(msg: str) -> None:
    """One timestamped line per stage into torchrun's log: the tail a timeout or crash reports shows the stage."""
    print(f"[rank {os.environ.get('RANK', 0)} +{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _rank_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _full(t):
    """A plain tensor from a DTensor (transformers' plan may hand back DTensors) or a tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _load_plain(spec, dtype, device):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbook.models.mistral import random_init_seed

    seed = random_init_seed(spec["model"])
    if seed is not None:  # config-only folder: draw the same seeded weights on every rank, on its device
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec["model"]), dtype=dtype)
        return model.eval()
    return AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype).to(device).eval()


def _load_tp_plan(spec, dtype, world):
    from transformers import AutoModelForCausalLM

    try:
        from transformers.distributed import DistributedConfig
    except ImportError:  # older transformers: the standalone argument
        return AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, tp_plan="auto").eval()
    cfg = DistributedConfig(tp_plan="auto", tp_size=world)
    return AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, distributed_config=cfg).eval()


def _replicate_kv(attn, rank, world, heads, kv, head_dim):
    """Keep on this rank only the KV head its query heads attend with (tp is a multiple of the KV heads)."""
    import torch

    q_per_rank, group = heads // world, heads // kv
    kv_head = (rank * q_per_rank) // group
    rows = slice(kv_head * head_dim, (kv_head + 1) * head_dim)
    for name in ("k_proj", "v_proj"):
        old = getattr(attn, name)
        new = torch.nn.Linear(old.in_features, head_dim, bias=old.bias is not None,
                              device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[rows])
            if old.bias is not None:
                new.bias.copy_(old.bias[rows])
        setattr(attn, name, new)


def _parallelize(model, rank, world, device, local=False):
    """Shard every decoder layer over a 1-D mesh with ``parallelize_module``; returns the per-rank head counts.

    ``local``: the plain-tensor styles of :mod:`workbook.llm.styles` instead of torch's DTensor styles."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    if local:
        from workbook.llm.styles import LocalColwiseParallel as ColwiseParallel
        from workbook.llm.styles import LocalRowwiseParallel as RowwiseParallel
    else:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    mesh = init_device_mesh(device.type, (world,))
    split_kv = kv % world == 0
    kv_per_rank = kv // world if split_kv else 1
    for layer in model.model.layers:
        plan = {"self_attn.q_proj": ColwiseParallel(), "self_attn.o_proj": RowwiseParallel(),
                "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
                "mlp.down_proj": RowwiseParallel()}
        if split_kv:
            plan.update({"self_attn.k_proj": ColwiseParallel(), "self_attn.v_proj": ColwiseParallel()})
        else:
            _replicate_kv(layer.self_attn, rank, world, heads, kv, head_dim)
        parallelize_module(layer, mesh, plan)
        layer.self_attn.num_key_value_groups = (heads // world) // kv_per_rank
    model.tp_mesh = mesh  # the group the row-parallel all-reduces run on
    return heads // world, kv_per_rank


def load(spec, rank, world, device):
    """Load and shard the model; returns (model, facts) where facts say which mechanism ran and why."""
    import torch

    dtype = getattr(torch, spec["dtype"])
    asked = spec["tp_mechanism"]
    facts = {"tp_mechanism_requested": asked, "fallbacks": []}
    if world == 1:
        model = _load_plain(spec, dtype, device)
        cfg = model.config
        facts.update(tp_mechanism="none (one process)", heads_per_rank=cfg.num_attention_heads,
                     kv_heads_per_rank=cfg.num_key_value_heads)
        return model, facts
    if asked in ("auto", "tp_plan"):
        from transformers import AutoConfig

        cfg_kv = AutoConfig.from_pretrained(spec["model"])
        why = None
        if cfg_kv.num_key_value_heads % world:
            why = (f"transformers' tp_plan cannot replicate {cfg_kv.num_key_value_heads} KV heads over "
                   f"{world} ranks")
        else:
            try:
                model = _load_tp_plan(spec, dtype, world)
                facts.update(tp_mechanism="tp_plan", heads_per_rank=cfg_kv.num_attention_heads // world,
                             kv_heads_per_rank=cfg_kv.num_key_value_heads // world)
                return model, facts
            except Exception as e:  # noqa: BLE001 - recorded below, re-raised when tp_plan was asked for
                why = f"transformers' tp_plan failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        if asked == "tp_plan":
            raise RuntimeError(f"tp_mechanism='tp_plan' was asked for but {why}")
        facts["fallbacks"].append(f"{why}; used torch parallelize_module instead")
    model = _load_plain(spec, dtype, device)
    local = asked == "local_shards"
    q, k = _parallelize(model, rank, world, device, local=local)
    facts.update(tp_mechanism="local_shards" if local else "parallelize_module", heads_per_rank=q,
                 kv_heads_per_rank=k)
    if device.type == "cuda":  # the full model was built before sharding: give the dropped slices back
        torch.cuda.empty_cache()
    return model, facts


def _pick(logits, spec, gen):
    """Next token ids from last-position logits: argmax, or temperature/top-k/top-p sampling with ``gen``."""
    import torch

    if not spec["do_sample"]:
        return logits.argmax(-1)
    logits = logits.float() / max(spec["temperature"], 1e-6)
    if spec["top_k"]:
        kth = torch.topk(logits, min(spec["top_k"], logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if spec["top_p"] < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > spec["top_p"]  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def cache_keyword(model) -> str:
    """The keyword the model's forward takes its KV cache under: ``cache`` from transformers 5.2x on (where
    ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def generate(model, prompt_ids, spec, device, max_new, step_fn=None):
    """Left-padded batch decode with a KV cache; returns (new ids per prompt, ttft_ms, decode step times ms)."""
    import torch
    import torch.distributed as dist
    from transformers import DynamicCache, StaticCache

    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[PAD_ID] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    static = spec["cache"] == "static"
    if static:  # fixed shapes for CUDA graphs: the mask spans the whole cache; causality hides future slots
        cache = StaticCache(config=model.config, max_cache_len=width + max_new)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], max_new)], dim=1)
    else:
        cache = DynamicCache(config=model.config)
    gen = torch.Generator(device=device).manual_seed(spec["seed"]) if spec["do_sample"] else None
    step = model if step_fn is None else step_fn
    kv = {cache_keyword(model): cache}
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kv, use_cache=True,
                    cache_position=torch.arange(width, device=device), logits_to_keep=1)
        nxt = _pick(_full(out.logits)[:, -1], spec, gen)
        if spec["do_sample"] and dist.is_initialized():
            dist.broadcast(nxt, 0)  # every rank must continue with the same token
        _sync(device)
        ttft_ms = (time.perf_counter() - t0) * 1e3
        tokens, steps_ms = [nxt], []
        pos = pos[:, -1:]
        cache_pos = torch.tensor([width], device=device)
        # On a GPU each step is timed with CUDA events and the host never waits, so it queues the next step while
        # the GPU runs this one (as a server would); on the CPU, wall time per step.
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(max_new)] if device.type == "cuda" else None
        if marks:
            marks[0].record()
        for i in range(max_new - 1):
            if not static:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pos = pos + 1
            t0 = time.perf_counter()
            out = step(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, **kv,
                       use_cache=True, cache_position=cache_pos)
            nxt = _pick(_full(out.logits)[:, -1], spec, gen)
            if spec["do_sample"] and dist.is_initialized():
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
        row.update(memory_kind="cuda_max_memory_allocated", peak_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        row.update(memory_kind="cpu_peak_rss", peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def _use_symm_mem_all_reduce(mesh) -> None:
    """Let inductor lower the compiled step's small all-reduces (8 KiB a layer at batch 1, under its 128 KiB
    threshold) to ``symm_mem.one_shot_all_reduce``: each rank reads its peers' buffers over NVLink in one kernel,
    instead of NCCL's ring protocol. No NVLink multicast is involved."""
    import torch._inductor.config as inductor_config
    import torch.distributed as dist
    from torch.distributed import _symmetric_memory as symm_mem

    names = {dist.group.WORLD.group_name} | ({mesh.get_group().group_name} if mesh is not None else set())
    for name in sorted(names):
        symm_mem.enable_symm_mem_for_group(name)
    inductor_config._collective.auto_select = True
    _progress("compiled all-reduces: symmetric-memory one-shot")


def weight_bytes_per_step(model) -> int:
    """Bytes of this rank's weights one decode step reads: every local parameter but the input embedding, which
    is a row lookup (unless the output head shares it)."""
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


def run(spec: dict, out: Path) -> None:
    import statistics

    import torch
    import torch.distributed as dist
    import transformers

    from workbook.record import write_json_atomic

    rank, world, local_rank = _rank_env()
    if spec["device"] == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":  # bound to its GPU from the start: barriers and NCCL never guess the device
        dist.init_process_group("nccl", device_id=device)
        # The closing barrier goes through gloo on the host: after the decode step's all-reduces were captured in
        # CUDA graphs, an NCCL barrier at the end of the run hung on two H200s.
        host_group = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        host_group = None
    from transformers import AutoModelForCausalLM  # noqa: F401 - imported before the clock starts: load_s is loading

    try:
        t0 = time.perf_counter()
        model, facts = load(spec, rank, world, device)
        dist.barrier()
        load_s = time.perf_counter() - t0
        _progress(f"loaded and sharded over {world} ranks in {load_s:.1f} s")
        load_peak_mib = None
        if device.type == "cuda":  # loading holds the whole model before sharding: report it apart from serving
            load_peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        gen = torch.Generator().manual_seed(spec["seed"])
        fixed = torch.randint(BYTE_LO, model.config.vocab_size, (1, spec["fixed_forward_len"]), generator=gen)
        with torch.inference_mode():
            logits = _full(model(input_ids=fixed.to(device)).logits).float().cpu()
        _progress("fixed forward done" + ("; the decode step compiles during the first warm-up generation"
                                          if spec["compile"] else ""))
        step_fn = None
        if spec["compile"]:
            if spec.get("allreduce") == "symm_mem":
                _use_symm_mem_all_reduce(getattr(model, "tp_mesh", None))
            step_fn = torch.compile(model, mode="reduce-overhead", fullgraph=False)
        prompts = spec["prompt_ids"]
        t1 = time.perf_counter()
        # A static cache's shapes depend on max_new_tokens: warm up with the same length so nothing recompiles.
        warm_new = spec["max_new_tokens"] if spec["cache"] == "static" else min(spec["max_new_tokens"], 3)
        for i in range(spec["warmup"]):
            generate(model, prompts, spec, device, warm_new, step_fn)
            _progress(f"warm-up generation {i + 1}/{spec['warmup']} done ({warm_new} tokens"
                      f"{', compiled step' if step_fn is not None else ''})")
        first_s = time.perf_counter() - t1
        new, ttft_ms, steps_ms = generate(model, prompts, spec, device, spec["max_new_tokens"], step_fn)
        _progress(f"timed generation done: {len(steps_ms)} decode steps, {sum(steps_ms) / 1e3:.2f} s")
        mem = _memory(model, device)
        step_p50_s = statistics.median(steps_ms) / 1e3 if steps_ms else None
        wbytes = weight_bytes_per_step(model)
        write_json_atomic(out / f"rank{rank}.json", {
            "rank": rank, "load_s": load_s, "load_peak_mib": load_peak_mib, **mem,
            "weight_gb_read_per_step": wbytes / 1e9,
            # weights only (the KV cache read is small at these lengths): a floor on the bandwidth achieved
            "decode_weight_gb_s": wbytes / 1e9 / step_p50_s if step_p50_s else None})
        if rank == 0:
            torch.save(logits, out / "logits.pt")
            decode_s = sum(steps_ms) / 1e3
            per_seq = len(steps_ms) / decode_s if decode_s > 0 else None
            write_json_atomic(out / "result.json", {
                "world_size": world, "device": str(device), "backend": dist.get_backend(), "dtype": spec["dtype"],
                **facts, "load_s": load_s, "warmup_generate_s": first_s if spec["warmup"] else None,
                "batch_size": len(prompts), "prompt_tokens": [len(p) for p in prompts],
                "max_new_tokens": spec["max_new_tokens"], "do_sample": spec["do_sample"], "cache": spec["cache"],
                "compile": spec["compile"], "allreduce": spec.get("allreduce", "nccl"), "ttft_ms": ttft_ms,
                "decode_ms_per_step_p50": statistics.median(steps_ms) if steps_ms else None,
                "decode_steps_ms": steps_ms,
                "decode_tokens_s_per_seq": per_seq,
                "decode_tokens_s_total": per_seq * len(prompts) if per_seq else None,
                "generated_ids": new, "fixed_forward": {"input_ids": fixed.tolist(), "logits_file": "logits.pt",
                                                        "logits_shape": list(logits.shape)},
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__}})
        _sync(device)
        _progress("results written; waiting for every rank")
        # should the wind-down hang, the launcher's log tail shows every thread's stack, not silence
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
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    if spec.get("hang_s"):  # test hook: a worker that hangs, for the launcher's timeout
        (out / f"hang_pid{os.environ.get('RANK', 0)}").write_text(str(os.getpid()))
        print(f"rank {os.environ.get('RANK', 0)}: hanging for {spec['hang_s']} s (test hook)", flush=True)
        time.sleep(spec["hang_s"])
    try:
        run(spec, out)
    except BaseException as e:  # the launcher puts each rank's one-line error before the log tail
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        (out / f"error_rank{os.environ.get('RANK', 0)}.txt").write_text(f"{type(e).__name__}: {first[:500]}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
