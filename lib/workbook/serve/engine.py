"""The model behind ``workbook serve``: one batch of requests run to the end, tokens handed out as made.

The engine is what ``mistral_tp`` measures, behind a server: the same loading (a checkpoint, or a
config-only folder whose seeded weights are drawn on the device), a static KV cache, and a decode
step compiled with CUDA graphs on request. A server sees batches of every size, so there is one
cache per batch-size bucket (1, 2, 4, ... up to ``max_batch``), allocated once with room for
``context`` positions and reset between batches: shapes never change, so a compiled step is
captured once per bucket (at start-up, in :meth:`Engine.warm_up`) and its cache never moves.

A batch is static: its requests are prefilled together (left-padded), then decoded step by step
until each has its ``max_tokens``; a request whose client went away stops receiving tokens, and the
batch ends early once no request in it still wants any. Decoding is greedy and never stops at
EOS, so that every request makes exactly the tokens it asked for (what a benchmark needs). Each
new token is handed to the request's ``emit`` callback on the engine's thread.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from workbook.errors import bad_param

PAD_ID = 0


@dataclass(frozen=True)
class EngineConfig:
    """What the engine loads and how it batches (checked by :func:`check`)."""

    model: str  # checkpoint folder; the CLI turns "" into the tiny Mistral's folder
    dtype: str = "float32"
    device: str = "cpu"  # cpu or cuda
    max_batch: int = 8
    context: int = 512  # positions per sequence: image prefix + prompt + new tokens
    compile: bool = False  # CUDA graphs for the decode step (cuda only)
    vision_tower: str = ""  # "" for text only, else a SigLIP tower name (workbook.models.siglip)
    vision_depth: int = 0  # 0: the tower's own depth
    seed: int = 0  # of the image projection and the seeded images


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
    admitted_at: float = field(default_factory=time.perf_counter)

    def wants_more(self) -> bool:
        return not self.cancelled and self.made < self.max_tokens


class Engine:
    """The loaded model, its encoder, its caches, and :meth:`run_batch`."""

    def __init__(self, cfg: EngineConfig, log=print):
        import torch

        from workbook.llm.decode import cache_keyword, load_plain
        from workbook.models import mistral

        check(cfg)
        self.cfg, self.log = cfg, log
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        config = mistral.load_config(cfg.model)
        t0 = time.perf_counter()
        self.model = load_plain(cfg.model, self.dtype, self.device)
        self.load_s = time.perf_counter() - t0
        self.encoder = mistral.encoder_for(cfg.model, config)
        self.vocab_size = config.vocab_size
        self.max_positions = int(getattr(config, "max_position_embeddings", cfg.context))
        if cfg.context > self.max_positions:
            raise bad_param("context", cfg.context, f"at most the model's "
                            f"max_position_embeddings ({self.max_positions})")
        self._kv = cache_keyword(self.model)
        self._caches: dict[int, object] = {}
        self.step_fn = (torch.compile(self.model, mode="reduce-overhead", fullgraph=False)
                        if cfg.compile else self.model)
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
            self._caches[batch] = cache
        else:
            cache.reset()
        return cache

    def warm_up(self, steps: int = 3) -> float:
        """One short batch per bucket, so caches are allocated and a compiled step is captured
        before the first request; returns the seconds it took."""
        t0 = time.perf_counter()
        for b in buckets(self.cfg.max_batch):
            reqs = [Request([PAD_ID + 3] * 4, min(steps, self.cfg.context - 4),
                            emit=lambda *_: None) for _ in range(b)]
            self.run_batch(reqs)
            self.log(f"warm-up: batch {b} ready")
        self.batches = 0
        return time.perf_counter() - t0

    # -- the batch ----------------------------------------------------------------------------
    def positions_needed(self, req: Request) -> int:
        return req.prefix_tokens + len(req.prompt_ids) + req.max_tokens

    def _embeds(self, reqs: list[Request]):
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
        width = max(t.shape[0] for t in rows)
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

        b = bucket_for(len(reqs), self.cfg.max_batch)
        filler = [Request([PAD_ID + 3], 1, emit=lambda *_: None, cancelled=True)
                  for _ in range(b - len(reqs))]
        rows = reqs + filler
        with torch.inference_mode():
            kv = {self._kv: self._cache(b)}
            x, mask, pos, width = self._embeds(rows)
            out = self.model(inputs_embeds=x, attention_mask=mask, position_ids=pos, **kv,
                             use_cache=True, cache_position=torch.arange(width, device=self.device),
                             logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1)
            self._hand_out(reqs, nxt)
            pos = pos[:, -1:]
            cache_pos = torch.tensor([width], device=self.device)
            at = width  # the position this step writes (cache_pos, kept on the host too)
            while any(r.wants_more() for r in reqs) and at < self.cfg.context:
                pos, at = pos + 1, at + 1
                out = self.step_fn(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                                   **kv, use_cache=True, cache_position=cache_pos)
                nxt = out.logits[:, -1].argmax(-1)
                cache_pos = cache_pos + 1
                self._hand_out(reqs, nxt)
        for r in reqs:
            r.emit("done", None)
        self.batches += 1

    @staticmethod
    def _hand_out(reqs: list[Request], nxt) -> None:
        ids = nxt.tolist()  # the one host sync a step: the tokens go out now
        for r, t in zip(reqs, ids):
            if r.wants_more():
                r.made += 1
                r.emit("token", t)

    def describe(self) -> dict:
        cfg = self.cfg
        return {"model": cfg.model, "dtype": cfg.dtype, "device": str(self.device),
                "max_batch": cfg.max_batch, "context": cfg.context, "compile": cfg.compile,
                "scheduling": self.scheduling, "encoder": self.encoder.why,
                "load_s": self.load_s,
                "vision": self.vision.describe() if self.vision is not None else None}
