"""The model behind ``workbook serve``: a batch of requests run to the end, tokens out as made.

The engine is what ``mistral_tp`` measures, behind a server: the same loading (a checkpoint, or a
config-only folder whose seeded weights are drawn on the device, with q/k/v and gate/up fused into
one weight product each in one process, :mod:`workbook.llm.fuse`), a static KV cache, and a decode
step compiled with CUDA graphs on request (the prefill too, with ``compile_prefill``: one graph
for any prompt length, compiled at warm-up). A server sees batches of every size, so there is one
cache per batch-size bucket (1, 2, 4, ... up to ``max_batch``), allocated once with room for
``context`` positions and reset between batches: shapes never change, so a compiled step is
captured once per bucket (at start-up, in :meth:`Engine.warm_up`) and its cache never moves.

A batch is static: its requests are prefilled together (left-padded), then decoded step by step
until each has its ``max_tokens``; a request whose client went away stops receiving tokens, and the
batch ends early once no request in it still wants any. Decoding is greedy and never stops at
EOS, so that every request makes exactly the tokens it asked for (what a benchmark needs). Each
new token is handed to the request's ``emit`` callback on the engine's thread.

With ``tp_degree`` > 1 the engine is one rank of a tensor-parallel group (:mod:`workbook.serve.tp`)
and runs in lockstep with the others: a batch then runs until every request has its tokens, since
the other ranks cannot know that a client left.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

from workbook.errors import bad_param

PAD_ID = 0
# A compiled prefill has two graphs, any prompt length at batch 1 and at larger batches (size 1 is
# specialised), and a third when a warm-up length equals one of the model's sizes (dynamo gives
# equal sizes one symbol: the tiny Mistral's 4 key/value heads fix its 4-token graph to 4 tokens).
# Warming each batch size up with two prompt lengths compiles them all before the first request.
PREFILL_GRAPHS = 3
WARM_PROMPTS = (4, 32)  # prompt lengths of a batch size's warm-up batches (the first alone without
# a compiled prefill)


@dataclass(frozen=True)
class EngineConfig:
    """What the engine loads and how it batches (checked by :func:`check`)."""

    model: str  # checkpoint folder; the CLI turns "" into the tiny Mistral's folder
    dtype: str = "float32"
    device: str = "cpu"  # cpu or cuda
    max_batch: int = 8
    context: int = 512  # positions per sequence: image prefix + prompt + new tokens
    compile: bool = False  # CUDA graphs for the decode step (cuda only)
    compile_prefill: bool = False  # the prefill through torch.compile too (dynamic shapes)
    vision_tower: str = ""  # "" for text only, else a SigLIP tower name (workbook.models.siglip)
    vision_depth: int = 0  # 0: the tower's own depth
    seed: int = 0  # of the image projection and the seeded images
    tp_degree: int = 1  # ranks under torchrun (workbook.serve.tp); 1: this process alone
    tp_mechanism: str = "local_shards"  # or parallelize_module (workbook.llm.shard)


def check(cfg: EngineConfig) -> None:
    """One sentence per bad setting, before anything is loaded."""
    if cfg.device not in ("cpu", "cuda"):
        raise bad_param("device", cfg.device, "cpu or cuda")
    if cfg.dtype not in ("float32", "float16", "bfloat16"):
        raise bad_param("dtype", cfg.dtype, "float32, float16 or bfloat16")
    if cfg.max_batch < 1:
        raise bad_param("max_batch", cfg.max_batch, "a whole number of at least 1")
    if cfg.context < 2:
        raise bad_param("context", cfg.context, "at least 2 positions (one prompt token and one "
                        "new token)")
    if cfg.compile and cfg.device != "cuda":
        raise bad_param("compile", cfg.compile, "false on the CPU (the compiled step is captured "
                        "in CUDA graphs)")
    if cfg.tp_degree < 1:
        raise bad_param("tp_degree", cfg.tp_degree, "a whole number of at least 1")
    if cfg.tp_mechanism not in ("local_shards", "parallelize_module"):
        raise bad_param("tp_mechanism", cfg.tp_mechanism, "local_shards or parallelize_module")


def buckets(max_batch: int) -> list[int]:
    """Batch sizes with a cache of their own: powers of two below ``max_batch``, and it."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


def bucket_for(n: int, max_batch: int) -> int:
    return next(b for b in buckets(max_batch) if b >= n)


@dataclass(eq=False)
class Request:
    """One admitted request: token ids, how many new tokens, an optional image prefix."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str, object], None]  # ("token", id) per new token, then ("done", None)
    image: tuple[int, str] | None = None  # (size in pixels, interpolation) for a vision prefix
    prefix_tokens: int = 0  # image patches prepended (set by the server when it admits)
    cancelled: bool = False  # the client went away: no more tokens for it
    made: int = 0
    model: str = ""  # the model name the request asked for (a label of the server's metrics)
    # the server's clock (time.perf_counter), for workbook.serve.clock: the request arrived,
    # its batch started, its first and last tokens were handed out
    arrived_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_at: float | None = None
    last_at: float | None = None


class Engine:
    """The loaded model, its encoder, its caches, and :meth:`run_batch`."""

    def __init__(self, cfg: EngineConfig, log=print, device=None):
        """Load ``cfg.model`` on ``device`` (default ``cfg.device``); with ``tp_degree`` > 1 this is
        one rank of an initialised process group and loads its shard."""
        import torch

        from workbook.llm import decode
        from workbook.models import mistral

        check(cfg)
        self.cfg, self.log = cfg, log
        self.device = device if device is not None else torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        config = mistral.load_config(cfg.model)
        t0 = time.perf_counter()
        self.lockstep = cfg.tp_degree > 1  # every rank takes every step: no early end of a batch
        if self.lockstep:
            import torch.distributed as dist

            how = SimpleNamespace(model=cfg.model, dtype=cfg.dtype, tp_mechanism=cfg.tp_mechanism)
            self.model, self.tp_facts = decode.load(how, dist.get_rank(), dist.get_world_size(),
                                                    self.device)
            self.projections = "projections not fused: each rank keeps its tensor-parallel shards"
        else:
            from workbook.llm.fuse import fuse_projections

            self.model = decode.load_plain(cfg.model, self.dtype, self.device)
            self.tp_facts = {"tp_mechanism": "none (one process)"}
            self.projections = fuse_projections(self.model)
        self.load_s = time.perf_counter() - t0
        self.encoder = mistral.encoder_for(cfg.model, config)
        self.vocab_size = config.vocab_size
        self.max_positions = int(getattr(config, "max_position_embeddings", cfg.context))
        if cfg.context > self.max_positions:
            raise bad_param("context", cfg.context, f"at most the model's "
                            f"max_position_embeddings ({self.max_positions})")
        self._kv = decode.cache_keyword(self.model)
        self._caches: dict[int, object] = {}
        # the cache's shape per row: this process's key/value heads (a rank's share under tp)
        self._kv_heads = int(self.tp_facts.get("kv_heads_per_rank", config.num_key_value_heads))
        self._head_dim = mistral.head_dim(config)
        self.step_fn = self.prefill_fn = self.model
        if cfg.compile or cfg.compile_prefill:
            import torch._dynamo.config as dynamo_config

            # the step's graphs (one per batch size) and the prefill's share the forward's cache
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit,
                                                len(buckets(cfg.max_batch)) + PREFILL_GRAPHS + 2)
        if cfg.compile_prefill:
            # One graph for every prompt length (dynamic shapes, no CUDA graphs): the eager
            # prefill launches several kernels a layer from Python, so its time is the host's;
            # compiled, the kernels are fewer and launched from generated code.
            self.prefill_fn = torch.compile(self.model, dynamic=True)
        if cfg.compile:
            import torch._inductor.config as inductor_config

            # Tuning the generated kernels' launch parameters shortens the batch-1 step (figures in
            # outputs/reference/*/serving/README.md); it is paid once, at warm-up.
            inductor_config.coordinate_descent_tuning = True
            self.step_fn = torch.compile(self.model, mode="reduce-overhead", fullgraph=False)
        self.vision = None
        if cfg.vision_tower:
            from workbook.serve.vision import VisionPrefix

            self.vision = VisionPrefix(cfg.vision_tower, config.hidden_size, dtype=self.dtype,
                                       device=self.device, depth=cfg.vision_depth, seed=cfg.seed)
        self.batches = 0
        self.scheduling = (f"static batching: the waiting requests, up to max_batch "
                           f"{cfg.max_batch}, run together to the end of the longest")

    # -- set-up -------------------------------------------------------------------------------
    def _cache(self, batch: int):
        from transformers import StaticCache

        cache = self._caches.get(batch)
        if cache is None:
            cache = StaticCache(config=self.model.config, max_cache_len=self.cfg.context)
            # Allocated here, outside any compiled code: transformers marks the tensors as fixed
            # addresses only when it allocates them eagerly, and the compiled step's CUDA graphs
            # are skipped for tensors that are not. Left to the first prefill (lazy), a compiled
            # prefill would allocate them inside its graph.
            cache.early_initialization(batch, self._kv_heads, self._head_dim, self.dtype,
                                       self.device)
            self._caches[batch] = cache
        else:
            cache.reset()
        return cache

    def warm_up(self, steps: int = 3, run=None, sizes=None) -> float:
        """One short batch per bucket (through ``run``, default :meth:`run_batch`; only the
        buckets of ``sizes`` when given), so caches are allocated and a compiled step is captured
        before the first request (with a compiled prefill, a batch per prompt length of
        ``WARM_PROMPTS``); returns the seconds it took."""
        t0 = time.perf_counter()
        want = buckets(self.cfg.max_batch) if sizes is None else \
            sorted({bucket_for(n, self.cfg.max_batch) for n in sizes})
        lengths = WARM_PROMPTS if self.cfg.compile_prefill else WARM_PROMPTS[:1]
        for b in want:
            t1 = time.perf_counter()
            for n in (n for n in lengths if n < self.cfg.context):
                reqs = [Request([PAD_ID + 3] * n, min(steps, self.cfg.context - n),
                                emit=lambda *_: None) for _ in range(b)]
                (run or self.run_batch)(reqs)
            # what each size cost (compiling, capturing graphs) is worth seeing in the log
            self.log(f"warm-up: batch {b} ready in {time.perf_counter() - t1:.1f} s")
        self.batches = 0
        return time.perf_counter() - t0

    # -- the batch ----------------------------------------------------------------------------
    def _embeds(self, reqs: list[Request], floor: int = 1):
        """Input embeddings per row (image prefix, then prompt), left-padded; mask and positions
        spanning the whole cache (fixed shapes: causality hides positions not yet written)."""
        import torch

        embed = self.model.get_input_embeddings()
        rows = []
        with torch.inference_mode():
            for r in reqs:
                text = embed(torch.tensor(r.prompt_ids, device=self.device))
                if r.image is not None:
                    text = torch.cat([self.vision.embeds(*r.image), text], dim=0)
                rows.append(text)
        width = max(max(t.shape[0] for t in rows), floor)
        hidden = rows[0].shape[1]
        x = torch.zeros(len(rows), width, hidden, dtype=self.dtype, device=self.device)
        mask = torch.ones(len(rows), self.cfg.context, dtype=torch.long, device=self.device)
        for i, t in enumerate(rows):
            x[i, width - t.shape[0]:] = t
            mask[i, :width - t.shape[0]] = 0
        pos = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        return x, mask, pos, width

    def run_batch(self, reqs: list[Request]) -> None:
        """Prefill ``reqs`` together, then decode until none wants more; emit every token."""
        import torch

        from workbook.llm.decode import full_tensor

        b = bucket_for(len(reqs), self.cfg.max_batch)
        filler = [Request([PAD_ID + 3], 1, emit=lambda *_: None, cancelled=True)
                  for _ in range(b - len(reqs))]
        rows = reqs + filler
        started = time.perf_counter()
        for r in reqs:
            r.started_at = started
        with torch.inference_mode():
            kv = {self._kv: self._cache(b)}
            # a compiled prefill would compile again for a one-position prompt (sizes 0 and 1
            # are specialised): pad it to two where that leaves every request its tokens
            room = self.cfg.context - max(r.max_tokens for r in reqs) + 1
            x, mask, pos, width = self._embeds(rows, min(2, room) if self.cfg.compile_prefill
                                               else 1)
            out = self.prefill_fn(inputs_embeds=x, attention_mask=mask, position_ids=pos, **kv,
                                  use_cache=True,
                                  cache_position=torch.arange(width, device=self.device),
                                  logits_to_keep=1)
            nxt = self._to_host(full_tensor(out.logits)[:, -1].argmax(-1))
            pos = pos[:, -1:]
            cache_pos = torch.tensor([width], device=self.device)
            at = width  # the position the next step writes (cache_pos, kept on the host too)
            # One step ahead: the next step is queued on the device before the host waits for the
            # tokens of this one, so handing tokens out overlaps the device's work. Whether there
            # is a next step is known beforehand (no EOS stop); a client that left is seen a step
            # late, which costs at most one step.
            while True:
                ahead = None
                if self._going(reqs, after=1) and at < self.cfg.context:
                    pos = pos + 1
                    out = self.step_fn(input_ids=nxt[0][:, None], attention_mask=mask,
                                       position_ids=pos, **kv, use_cache=True,
                                       cache_position=cache_pos)
                    ahead = self._to_host(full_tensor(out.logits)[:, -1].argmax(-1))
                    cache_pos, at = cache_pos + 1, at + 1
                self._hand_out(reqs, nxt)
                if ahead is None:
                    break
                nxt = ahead
        for r in reqs:
            r.emit("done", None)
        self.batches += 1

    def time_steps(self, batch: int, steps: int = 50) -> float | None:
        """Milliseconds per decode step run back to back on the device (CUDA events, no host work
        between steps): the step's own time, against which the served step's host overhead shows.
        None on the CPU."""
        import torch

        if self.device.type != "cuda":
            return None
        b = bucket_for(batch, self.cfg.max_batch)
        with torch.inference_mode():
            kv = {self._kv: self._cache(b)}
            at = self.cfg.context // 2
            args = dict(input_ids=torch.full((b, 1), PAD_ID + 3, device=self.device),
                        attention_mask=torch.ones(b, self.cfg.context, dtype=torch.long,
                                                  device=self.device),
                        position_ids=torch.full((b, 1), at, device=self.device),
                        cache_position=torch.tensor([at], device=self.device), use_cache=True, **kv)
            for _ in range(3):
                self.step_fn(**args)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                self.step_fn(**args)
            end.record()
            end.synchronize()
        return start.elapsed_time(end) / steps

    def _going(self, reqs: list[Request], after: int = 0) -> bool:
        """Another step once ``after`` more tokens are handed out? Alone: while a request still
        wants tokens (a batch whose clients all left ends). In lockstep: while one has not made
        its tokens, which every rank knows."""
        if self.lockstep:
            return any(r.made + after < r.max_tokens for r in reqs)
        return any(not r.cancelled and r.made + after < r.max_tokens for r in reqs)

    def _to_host(self, tokens):
        """The tokens on the device, and their copy on its way to the host: a copy queued now,
        before the next step, so that waiting for it does not wait for that step too."""
        import torch

        if self.device.type != "cuda":
            return tokens, tokens, None
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return tokens, host, ready

    @staticmethod
    def _hand_out(reqs: list[Request], nxt) -> None:
        _, host, ready = nxt
        if ready is not None:
            ready.synchronize()  # the one wait a step: the tokens go out now
        ids = host.tolist()
        now = time.perf_counter()
        for r, t in zip(reqs, ids):
            if r.made < r.max_tokens:
                r.made += 1
                if r.made == 1:
                    r.first_at = now
                if r.made == r.max_tokens:
                    r.last_at = now
                if not r.cancelled:
                    r.emit("token", t)

    def describe(self) -> dict:
        cfg = self.cfg
        return {"model": cfg.model, "dtype": cfg.dtype, "device": str(self.device),
                "max_batch": cfg.max_batch, "context": cfg.context, "compile": cfg.compile,
                "compile_prefill": cfg.compile_prefill,
                "step": ("torch.compile, CUDA graphs, coordinate-descent tuning, one step queued "
                         "ahead of the host" if cfg.compile else "eager, one step queued ahead "
                         "of the host") + f"; {self.projections}; prefill "
                         + ("compiled (dynamic shapes)" if cfg.compile_prefill else "eager"),
                "projections": self.projections,
                "scheduling": self.scheduling, "encoder": self.encoder.why,
                "tp_degree": cfg.tp_degree, "tp_mechanism": self.tp_facts["tp_mechanism"],
                "load_s": self.load_s,
                "vision": self.vision.describe() if self.vision is not None else None}
