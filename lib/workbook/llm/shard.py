"""Tensor-parallel plans for Mistral, and the one check of what they split, before anything loads.

Each plan splits some of a model's dimensions over the ranks. ``parallelize_module`` (torch's
DTensor styles) and ``local_shards`` (the plain-tensor styles of :mod:`workbook.llm.styles`) split
the query heads, the KV heads (or replicate them when there are more ranks than KV heads) and the
MLP width, evenly; embeddings and the LM head stay whole. transformers' ``tp_plan`` splits the
query and KV heads evenly and cannot replicate; the MLP width and the vocabulary (its ``lm_head``)
it splits unevenly where they do not divide. The Neuron libraries split like
``parallelize_module``. A degree that does not split one of these makes the ranks crash after
loading, so :func:`check` refuses it first, in one sentence, with the degrees that work; it also
holds the degree against the devices, and the weights plus KV cache against a device.

transformers' ``MistralAttention`` infers its head counts from tensor shapes and keeps only
``num_key_value_groups``, which an even split leaves unchanged; when KV heads are replicated, each
rank keeps the one KV head its query heads use and the groups become the query heads per rank.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from workbook.errors import bad_param

REPLICATING = ("parallelize_module", "local_shards", "neuron")  # plans that replicate KV heads
ACCELERATE_HINT = ("transformers' tp_plan needs accelerate, which is not installed "
                   "(pip install accelerate)")


@dataclass(frozen=True)
class Layout:
    """What a tensor-parallel degree means for one rank of one model."""

    tp_degree: int
    heads_per_rank: int
    kv_heads_per_rank: int
    kv_replicated: bool
    weight_bytes_per_rank: int
    kv_cache_bytes_per_rank: int
    notes: list = field(default_factory=list)


def _dims(config, mechanism: str) -> list[tuple[str, int, bool]]:
    """(the dimension in words, its size, whether the plan may replicate it), each it must split."""
    dims = [("attention heads", config.num_attention_heads, False),
            ("key/value heads", config.num_key_value_heads, mechanism in REPLICATING),
            ("MLP width (intermediate_size)", config.intermediate_size, False)]
    return dims[:2] if mechanism == "tp_plan" else dims


def _splits(tp: int, size: int, replicate: bool) -> bool:
    return size % tp == 0 or (replicate and tp % size == 0)


def degrees(config, mechanism: str) -> list[int]:
    """The tensor-parallel degrees whose ranks ``mechanism`` can split this model over."""
    dims = _dims(config, mechanism)
    return [d for d in range(1, config.num_attention_heads + 1)
            if all(_splits(d, size, rep) for _, size, rep in dims)]


def _what_splits(config, mechanism: str) -> str:
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if mechanism not in REPLICATING:
        return f"a divisor of the model's {heads} attention heads and of its {kv} key/value heads"
    return (f"a divisor of the model's {heads} attention heads, a divisor or a multiple of its "
            f"{kv} key/value heads, and a divisor of its MLP width "
            f"(intermediate_size={config.intermediate_size})")


def check(config, tp_degree: int, *, mechanism: str, devices: int, devices_are: str,
          bytes_per_device: int | None, batch: int, seq: int, dtype: str,
          shared_cores: bool = False) -> Layout:
    """The rank layout of ``tp_degree`` ranks under ``mechanism``, or a ParameterError.

    Every dimension the plan splits must split (see the module's docstring); the degree is at
    most ``devices``, except with ``shared_cores`` (gloo ranks on CPU cores: more ranks than cores
    run correctly, and a note says the timings are oversubscribed); the weights (layers split,
    embeddings and head whole) plus the KV cache, ``2 * layers * batch * seq * kv_heads_per_rank
    * head_dim * bytes``, fit ``bytes_per_device`` (None: unknown, noted, not checked).
    """
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    failed = [(what, size) for what, size, rep in _dims(config, mechanism)
              if not _splits(tp_degree, size, rep)]
    if failed:
        if mechanism == "tp_plan" and tp_degree in degrees(config, "parallelize_module"):
            what, size = failed[0]
            raise bad_param("tp_mechanism", mechanism, f"parallelize_module or local_shards at "
                            f"tp_degree={tp_degree}: transformers' tp_plan cannot replicate the "
                            f"model's {size} {what} over {tp_degree} ranks")
        ok = ", ".join(map(str, degrees(config, mechanism)))
        raise bad_param("tp_degree", tp_degree, f"one of {ok} ({_what_splits(config, mechanism)})")
    notes = []
    replicated = kv % tp_degree != 0
    kv_per_rank = 1 if replicated else kv // tp_degree
    if replicated:
        notes.append(f"tp_degree={tp_degree} exceeds the {kv} KV heads: each KV head is "
                     f"replicated on {tp_degree // kv} ranks (every rank holds 1 KV head for its "
                     f"{heads // tp_degree} query heads), so KV projections and cache are not "
                     f"split beyond {kv} ways")
    if tp_degree > devices:
        if not shared_cores:
            raise bad_param("tp_degree", tp_degree,
                            f"at most the {devices} {devices_are} available")
        notes.append(f"tp_degree={tp_degree} runs {tp_degree} ranks on {devices} {devices_are}: "
                     "the ranks share cores, so the timings are oversubscribed (the results are "
                     "unaffected)")
    weights, cache = _bytes_per_rank(config, tp_degree, kv_per_rank, batch, seq, dtype)
    layout = Layout(tp_degree, heads // tp_degree, kv_per_rank, replicated, weights, cache, notes)
    if bytes_per_device is None:
        notes.append("device memory unknown: weights + KV cache per rank not checked against it")
        return layout
    device = _gib(bytes_per_device)
    if weights > bytes_per_device:
        raise bad_param("tp_degree", tp_degree,
                        f"a degree whose weights fit one device: {_gib(weights)} of {dtype} "
                        f"weights per rank exceed the {device} of a device, so use a larger "
                        "tp_degree")
    if weights + cache > bytes_per_device:
        raise bad_param("batch_size", batch,
                        f"a batch whose KV cache fits beside the weights: at sequence_length={seq} "
                        f"the cache needs {_gib(cache)} per rank on top of {_gib(weights)} of "
                        f"weights, over the {device} of a device, so lower batch_size or "
                        "sequence_length")
    notes.append(f"per rank: {_gib(weights)} weights + {_gib(cache)} KV cache of {device}")
    return layout


def _bytes_per_rank(config, tp: int, kv_per_rank: int, batch: int, seq: int, dtype: str):
    from workbook.models.mistral import DTYPE_BYTES, head_dim, param_count

    nb = DTYPE_BYTES[dtype]
    p = param_count(config)
    kv_share = kv_per_rank / config.num_key_value_heads
    weights = nb * (p["embed"] + p["head"] + p["norms"] + (p["attn_q_o"] + p["mlp"]) / tp
                    + p["attn_kv"] * kv_share)
    cache = 2 * config.num_hidden_layers * batch * seq * kv_per_rank * head_dim(config) * nb
    return int(weights), int(cache)


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


def choose_mechanism(asked: str, config, model: str, tp_degree: int) -> tuple[str, str | None]:
    """The plan that shards on CUDA or the CPU, and a note when ``auto`` chose it: transformers'
    own ``tp_plan`` where it can split this model, else ``parallelize_module``. ``tp_plan`` asked
    for where it cannot load is refused here; its dimensions are :func:`check`'s."""
    from workbook.models.mistral import random_init_seed

    if asked not in ("tp_plan", "auto"):
        return asked, None
    others = "parallelize_module or local_shards here"
    if importlib.util.find_spec("accelerate") is None:
        raise bad_param("tp_mechanism", asked, f"{others}: {ACCELERATE_HINT}")
    why = None
    if random_init_seed(model) is not None:
        why = "transformers' tp_plan loads weight files, and this model folder holds only a config"
    if asked == "tp_plan":
        if why:
            raise bad_param("tp_mechanism", asked, f"{others}: {why}")
        return asked, None
    if why is None and tp_degree not in degrees(config, "tp_plan"):
        why = (f"transformers' tp_plan cannot split this model over {tp_degree} ranks: it needs "
               + _what_splits(config, "tp_plan"))
    if why:
        return "parallelize_module", f"tp_mechanism auto: parallelize_module, since {why}"
    return "tp_plan", "tp_mechanism auto: transformers' tp_plan"


# ----------------------------------------------------------------------------------- the plans
def load_tp_plan(model_path: str, dtype, world: int):
    """The checkpoint loaded and sharded by transformers' own plan (``tp_plan="auto"``)."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.distributed import DistributedConfig
    except ImportError:  # older transformers: the standalone argument
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                    tp_plan="auto").eval()
    cfg = DistributedConfig(tp_plan="auto", tp_size=world)
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                distributed_config=cfg).eval()


def _replicate_kv(attn, rank, world, heads, kv, head_dim):
    """Keep on this rank only the KV head its query heads attend with (tp: a multiple of them)."""
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


def parallelize(model, rank: int, world: int, device, local: bool = False) -> tuple[int, int]:
    """Shard every decoder layer over a 1-D mesh with ``parallelize_module``: column-parallel
    q/k/v, gate and up, row-parallel o and down. ``local``: the plain-tensor styles instead of
    torch's DTensor styles. Returns the query and KV heads per rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from workbook.models import mistral

    if local:
        from workbook.llm.styles import LocalColwiseParallel as ColwiseParallel
        from workbook.llm.styles import LocalRowwiseParallel as RowwiseParallel
    else:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = mistral.head_dim(cfg)
    mesh = init_device_mesh(device.type, (world,))
    split_kv = kv % world == 0
    kv_per_rank = kv // world if split_kv else 1
    for layer in model.model.layers:
        plan = {"self_attn.q_proj": ColwiseParallel(), "self_attn.o_proj": RowwiseParallel(),
                "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
                "mlp.down_proj": RowwiseParallel()}
        if split_kv:
            plan.update({"self_attn.k_proj": ColwiseParallel(),
                         "self_attn.v_proj": ColwiseParallel()})
        else:
            _replicate_kv(layer.self_attn, rank, world, heads, kv, head_dim)
        parallelize_module(layer, mesh, plan)
        layer.self_attn.num_key_value_groups = (heads // world) // kv_per_rank
    model.tp_mesh = mesh  # the group the row-parallel all-reduces run on
    return heads // world, kv_per_rank
