"""Mistral for the tensor-parallel experiment: configs, a seeded tiny checkpoint, prompt encoding.

No model hub is reachable here, so tests and CPU runs use :data:`TINY`, a Mistral with the real
architecture (grouped-query attention, RoPE, SwiGLU) at toy size, written to disk by
:func:`create_tiny` with seeded random weights and loaded through the same ``from_pretrained`` path
a real checkpoint takes. :data:`MISTRAL_7B` is the shape of Mistral-7B (32 query heads, 8 KV heads)
for memory planning and random-weight runs on a GPU.

Generation works on token ids. A checkpoint with tokenizer files is encoded with ``AutoTokenizer``;
one without (the tiny checkpoint: no tokenizer files offline) uses a deterministic byte-level
fallback: each UTF-8 byte ``b`` becomes id ``b + 3`` (ids 0-2 stay free for pad/bos/eos as in
Mistral's vocabulary), and the result says which encoding was used. :func:`create_tiny` writes a
marker file saying so.

:func:`param_count` splits the parameters into what tensor parallelism divides and what every rank
holds whole, for :func:`workbook.llm.shard.check`'s memory rule.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workbook.errors import bad_param

# A Mistral small enough for a 2-core CPU, keeping Mistral-7B's ratio of 4 query heads per KV head.
TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
            intermediate_size=128, vocab_size=512, max_position_embeddings=4096,
            sliding_window=None, tie_word_embeddings=False)
# The shape of Mistral-7B-v0.1 (7.24 B parameters).
MISTRAL_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
                  max_position_embeddings=32768,
                  sliding_window=None, tie_word_embeddings=False)

BYTE_MARKER = "workbook_byte_encoding.json"  # written beside a checkpoint that has no tokenizer
RANDOM_MARKER = "workbook_random_init.json"  # config only: seeded weights drawn where they load
SHAPES = {"mistral-7b-shape": "MISTRAL_7B"}  # model names that stand for a config-only folder
BYTE_OFFSET = 3  # ids 0, 1, 2 are pad/unk, bos, eos
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def mistral_config(**overrides):
    """A ``MistralConfig`` of :data:`TINY` with ``overrides``."""
    from transformers import MistralConfig

    return MistralConfig(**{**TINY, **overrides})


def create_config_only(path, seed: int = 0, **overrides) -> Path:
    """Write only ``config.json`` and two markers: the weights are drawn (seeded) where they load.

    For model sizes where writing and reading random weight files would cost more than the
    experiment (the Mistral-7B shape); every rank draws the same weights from the same seed.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mistral_config(**overrides).save_pretrained(path)
    (path / RANDOM_MARKER).write_text(json.dumps({
        "seed": seed,
        "why": "config only: seeded random weights are initialised on the loading device"}) + "\n")
    _write_byte_marker(path, seed)
    return path


def _write_byte_marker(path: Path, seed: int) -> None:
    (path / BYTE_MARKER).write_text(json.dumps({
        "encoding": "utf-8 bytes", "offset": BYTE_OFFSET, "seed": seed,
        "why": "no tokenizer files offline: prompts are encoded byte by byte (id = byte + offset)"})
        + "\n")


def workbook_model(name: str = "") -> tuple[str, str]:
    """A model folder the notebooks make themselves, and the sentence saying so: "" is the tiny
    seeded Mistral (weights written once), a name of :data:`SHAPES` a config-only folder (weights
    drawn where they load)."""
    from workbook.paths import outputs_dir, shown

    if name and name not in SHAPES:
        raise bad_param("model", name, "a folder or hub id, empty for the tiny Mistral, or one of "
                        + ", ".join(SHAPES))
    path = outputs_dir() / "models" / (name or "tiny-mistral")
    if not (path / "config.json").exists():
        if name:
            create_config_only(path, seed=0, **globals()[SHAPES[name]])
        else:
            create_tiny(path, seed=0)
    if name:
        return str(path), (f"{name}: the model's configuration with seeded random weights drawn "
                           f"on each device (no weight files; written to {shown(path)})")
    return str(path), (f"a tiny Mistral (seeded random weights) written to {shown(path)}, since no "
                       "model was given")


def random_init_seed(model) -> int | None:
    """The seed of a config-only folder written by :func:`create_config_only`, else None."""
    marker = Path(str(model)) / RANDOM_MARKER
    return json.loads(marker.read_text())["seed"] if marker.is_file() else None


def create_tiny(path, seed: int = 0, **overrides) -> Path:
    """Write a seeded random-weight tiny ``MistralForCausalLM`` and the byte-encoding marker."""
    import torch
    from transformers import MistralForCausalLM

    path = Path(path)
    torch.manual_seed(seed)
    model = MistralForCausalLM(mistral_config(**overrides)).eval()
    model.save_pretrained(path, safe_serialization=True)
    _write_byte_marker(path, seed)
    return path


def encode(prompt: str, vocab_size: int) -> list[int]:
    """Byte-level fallback encoding: UTF-8 byte ``b`` -> id ``b + 3`` (a vocabulary of 259+)."""
    if vocab_size < 256 + BYTE_OFFSET:
        raise bad_param("vocab_size", vocab_size,
                        f"at least {256 + BYTE_OFFSET} for the byte-level encoding")
    return [b + BYTE_OFFSET for b in prompt.encode("utf-8")]


def decode(ids) -> str:
    """Inverse of :func:`encode`; ids outside the byte range (pad/bos/eos, higher) become U+FFFD."""
    out = bytearray()
    for i in ids:
        i = int(i)
        inside = BYTE_OFFSET <= i < 256 + BYTE_OFFSET
        out += bytes([i - BYTE_OFFSET]) if inside else "\ufffd".encode()
    return out.decode("utf-8", errors="replace")


@dataclass
class Encoder:
    """How prompts become ids for one model, and back: a real tokenizer or the byte fallback."""

    kind: str  # "tokenizer" or "bytes"
    why: str
    vocab_size: int
    tokenizer: object = None

    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer(prompt)["input_ids"])
        return encode(prompt, self.vocab_size)

    def decode(self, ids) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return decode(ids)


def encoder_for(model: str, config) -> Encoder:
    """``AutoTokenizer`` when ``model`` is a directory with tokenizer files, else the byte fallback,
    saying why.

    A hub id is tried with ``AutoTokenizer`` too; when that fails (offline) ``why`` says so.
    """
    p = Path(model)
    if p.is_dir():
        if not any((p / f).exists() for f in TOKENIZER_FILES):
            marker = " (marker file present)" if (p / BYTE_MARKER).exists() else ""
            return Encoder("bytes", f"no tokenizer files in {p}{marker}: byte-level fallback",
                           config.vocab_size)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except Exception as e:  # noqa: BLE001 - any failure means no tokenizer; the reason is recorded
        if p.is_dir():
            raise bad_param("model", model,
                            f"a checkpoint whose tokenizer files load ({type(e).__name__}: {e})")
        return Encoder("bytes", f"AutoTokenizer could not load {model!r} ({type(e).__name__}): "
                       "byte-level fallback", config.vocab_size)
    return Encoder("tokenizer", f"AutoTokenizer from {model}", config.vocab_size, tok)


def prompt_ids(enc: Encoder, prompts: list[str]) -> list[list[int]]:
    """Each prompt's ids; a prompt that encodes to no token is refused (nothing to continue)."""
    ids = [enc.encode(p) for p in prompts]
    for p, i in zip(prompts, ids):
        if not i:
            raise bad_param("prompts", p, "prompts that encode to at least one token")
    return ids


def _is_causal(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    archs = list(getattr(config, "architectures", None) or [])
    if archs:
        names = set(CAUSAL.values())
        return any(a in names or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return getattr(config, "model_type", None) in CAUSAL


def load_config(model: str):
    """The ``AutoConfig`` of ``model`` (a local folder or a hub id): a causal language model's."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model))
    except Exception as e:  # noqa: BLE001 - OSError, ValueError...: no usable config
        raise bad_param("model", str(model),
                        f"a directory holding a config.json or a hub id reachable from here "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not _is_causal(config):
        archs = getattr(config, "architectures", None) or [config.model_type]
        raise bad_param("model", str(model),
                        f"a causal language model (its config describes {', '.join(archs)}, "
                        "not a *ForCausalLM)")
    return config


def head_dim(config) -> int:
    """Width of one attention head: the config's ``head_dim`` where it sets one, else the hidden
    size over the heads."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def param_count(config) -> dict:
    """Parameters from the config: ``embed``, ``head`` and ``norms`` (whole on every rank),
    attention and MLP (split by tensor parallelism) and ``total``."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    hd = head_dim(config)
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    embed = config.vocab_size * h
    head = 0 if getattr(config, "tie_word_embeddings", False) else config.vocab_size * h
    attn_q_o = 2 * h * q
    attn_kv = 2 * h * kv
    mlp = 3 * h * i
    norms = 2 * h
    return {"embed": embed + h, "head": head, "attn_q_o": n * attn_q_o, "attn_kv": n * attn_kv,
            "mlp": n * mlp, "norms": n * norms,
            "total": embed + head + h + n * (attn_q_o + attn_kv + mlp + norms)}


def _byte_chars() -> dict[int, str]:
    """The byte -> printable character map of byte-level BPE tokenizers (GPT-2's)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def write_byte_tokenizer(path) -> Path:
    """A Hugging Face tokenizer folder that encodes exactly as :func:`encode` (byte ``b`` -> id
    ``b + 3``, no BOS), for tools that need a tokenizer to size prompts (the serving load
    generator) while the model itself has none."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _byte_chars()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chars[b]: b + BYTE_OFFSET for b in range(256)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<unk>")
    path = Path(path)
    fast.save_pretrained(path)
    return path
