"""SigLIP vision towers for experiments, with a swappable position-embedding interpolation.

open_clip's SigLIP models are timm VisionTransformers (no CLS token, MAP pooling) behind an
open_clip config name.  This machine cannot reach a model hub, so experiments build the tower from
its config with seeded random weights: timings and the effect of interpolating the position table
do not need trained weights, and the same seed gives the same tower everywhere.  The real loading
paths (an open_clip pretrained tag, a local open_clip/timm/safetensors checkpoint) are kept, so
that a notebook run where the weights exist uses them unchanged.

Towers are built with ``dynamic_img_size=True``: timm then resamples the position table on every
forward to the input's patch grid (bicubic, antialias, float32).  :func:`use_interpolation` swaps
that resample for any implementation of :mod:`workbook.interp`, leaving the rest of the forward as
is.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import types
from dataclasses import dataclass

import torch

from workbook.errors import bad_param

TABLE_KEYS = ("visual.trunk.pos_embed", "trunk.pos_embed", "pos_embed",
              "vision_model.embeddings.position_embedding.weight",
              "embeddings.position_embedding.weight", "visual.positional_embedding")
_FILE = "an existing file (.pt, .pth, .bin or .safetensors)"


@dataclass
class Tower:
    """A built vision tower and the facts a report states about it."""

    model: torch.nn.Module
    name: str  # as requested (open_clip config or timm name)
    timm_name: str
    patch: int
    grid: int  # native patch grid side N (the table has N*N rows)
    width: int  # D
    depth: int
    weights: str  # where the weights came from
    params: int
    interp: str | None = None  # None: timm's own resample (see use_interpolation)


# Small configs registered for tests and quick runs: name -> (timm model, overrides of its args).
TINY_MODELS = {
    "SigLIP-Tiny": ("vit_so400m_patch14_siglip_224",
                    dict(depth=2, embed_dim=64, num_heads=2, img_size=112)),
}


def resolve_model(name: str) -> str:
    """open_clip config name (or a timm ViT name, or a TINY_MODELS name) -> timm model name of its
    vision tower."""
    if name in TINY_MODELS:
        return TINY_MODELS[name][0]
    import open_clip
    import timm
    from timm.models import model_entrypoint

    cfg = open_clip.get_model_config(name)
    if cfg is not None:
        timm_name = cfg.get("vision_cfg", {}).get("timm_model_name")
        if not timm_name:
            raise bad_param("model", name, "an open_clip config with a timm vision tower, like the "
                            "SigLIP ones; this one uses open_clip's own ViT")
        return timm_name
    vit = "timm.models.vision_transformer"
    if timm.is_model(name) and model_entrypoint(name).__module__ == vit:
        return name
    close = difflib.get_close_matches(name, open_clip.list_models() + list(TINY_MODELS), n=3,
                                      cutoff=0.5)
    raise bad_param("model", name, "unknown model; use an open_clip SigLIP config name (e.g. "
                    "ViT-SO400M-14-SigLIP)"
                    + (f"; closest open_clip names: {', '.join(close)}" if close else ""))


def patch_size(model: str) -> int:
    """The patch size of ``model``'s tower, read from its timm name (``*_patch14_*``) without
    building it."""
    m = re.search(r"patch(\d+)", resolve_model(model))
    if not m:
        raise bad_param("model", model, "a SigLIP tower whose timm name gives its patch size "
                        "(e.g. *_patch14_*)")
    return int(m.group(1))


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Flat state dict from a .safetensors or torch file: unwrapped, without a DDP "module."
    prefix."""
    if not path or not os.path.isfile(path):
        raise bad_param("checkpoint", path, _FILE)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise bad_param("checkpoint", path,
                        f"{_FILE} that can be read ({type(e).__name__}: {e})") from e
    wrappers = ("state_dict", "model")
    while isinstance(sd, dict) and any(isinstance(sd.get(k), dict) for k in wrappers):
        sd = sd["state_dict"] if isinstance(sd.get("state_dict"), dict) else sd["model"]
    if not isinstance(sd, dict):
        raise bad_param("checkpoint", path, "a file holding a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _create(timm_name: str, overrides: dict) -> torch.nn.Module:
    import timm

    return timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True,
                             **overrides)


def _fit_checkpoint(model, sd: dict, path: str, name: str) -> str:
    """Trunk keys of ``sd`` resampled to the model's grid as timm does on load; loads strictly.
    -> note."""
    from timm.layers import resample_abs_pos_embed

    prefix = next((p for p in ("visual.trunk.", "trunk.") if any(k.startswith(p) for k in sd)), "")
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    note = ""
    pe = sd.get("pos_embed")
    own_pe = model.pos_embed
    if pe is not None and pe.dim() == 3 and own_pe is not None and pe.shape[1] != own_pe.shape[1]:
        n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        old = math.isqrt(pe.shape[1] - n_prefix)
        if old * old == pe.shape[1] - n_prefix:
            new = tuple(model.patch_embed.grid_size)
            sd["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(new),
                                                     num_prefix_tokens=n_prefix,
                                                     interpolation="bicubic", antialias=True)
            note = f", pos_embed resampled {old}x{old} -> {new[0]}x{new[1]} (bicubic, antialias)"
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shape:
        why = [f"{len(missing)} missing keys" + (f" like {missing[0]}" if missing else ""),
               f"{len(unexpected)} unexpected" + (f" like {unexpected[0]}" if unexpected else "")]
        if shape:
            k = shape[0]
            why.append(f"{len(shape)} of another shape like {k} {tuple(sd[k].shape)} vs "
                       f"{tuple(own[k].shape)}")
        raise bad_param("checkpoint", path, f"a checkpoint of {name}: " + ", ".join(why))
    model.load_state_dict(sd, strict=True)
    return f"checkpoint {os.path.basename(path)}{note}"


def build_tower(model: str, *, pretrained: str = "", checkpoint: str = "", depth: int = 0,
                seed: int = 0, overrides: dict | None = None) -> Tower:
    """Build the vision tower of ``model`` (eval mode, float32, CPU).

    Weights: ``checkpoint`` (local file) or ``pretrained`` (open_clip tag, needs the hub; not with
    ``depth`` > 0, nor with a checkpoint: the caller's configure refuses both), else random from
    ``seed``.  ``depth`` > 0 keeps only that many blocks: with random weights, or with a checkpoint
    of such a cut-down tower (the strict load refuses a checkpoint of another depth).
    ``overrides`` are extra timm model kwargs (e.g. ``embed_dim``, ``num_heads``) for tiny test
    towers; not for notebooks.
    """
    timm_name = resolve_model(model)
    kw = {**TINY_MODELS.get(model, (None, {}))[1], **(overrides or {})}
    if depth > 0:
        kw["depth"] = depth
    # weights first: a missing file or an unreachable hub fails before the (slow) random init
    sd = None
    if checkpoint:
        sd = _read_state_dict(checkpoint)
    elif pretrained:
        sd = _pretrained_trunk(model, pretrained)
    if checkpoint and depth > 0:
        blocks = {int(m.group(1)) for k in sd
                  for m in [re.search(r"(?:^|\.)blocks\.(\d+)\.", k)] if m}
        if blocks and len(blocks) != depth:
            raise bad_param("depth", depth, f"0 (as configured) or {len(blocks)}, the number of "
                            f"blocks in checkpoint {os.path.basename(checkpoint)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _create(timm_name, kw)
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(net, VisionTransformer) or net.pos_embed is None:
        raise bad_param("model", model, "a ViT with an absolute position table (like SigLIP)")
    weights = f"seeded random (seed={seed})"
    if checkpoint:
        weights = _fit_checkpoint(net, sd, checkpoint, model)
    elif pretrained:
        net.load_state_dict(sd, strict=True)
        weights = f"open_clip pretrained {pretrained}"
    net = net.float().eval()
    n = net.patch_embed.grid_size
    return Tower(model=net, name=model, timm_name=timm_name, patch=net.patch_embed.patch_size[0],
                 grid=n[0], width=net.embed_dim, depth=len(net.blocks), weights=weights,
                 params=sum(p.numel() for p in net.parameters()))


def _pretrained_trunk(model: str, tag: str) -> dict[str, torch.Tensor]:
    """State dict of the timm trunk of open_clip ``model`` with weights ``tag`` (downloads, or the
    hub cache)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    if tag not in tags:
        raise bad_param("pretrained", tag, f"an open_clip tag of {model} "
                        f"({', '.join(tags) or 'none'}), or pass a local checkpoint path as "
                        "checkpoint= instead")
    try:
        full = open_clip.create_model(model, pretrained=tag)
    except Exception as e:  # noqa: BLE001 - offline shows up as many exception types
        raise bad_param("pretrained", tag, "a tag that can be downloaded; this machine cannot "
                        f"reach the model hub ({type(e).__name__}) — pass a local checkpoint path "
                        "instead") from e
    return full.visual.trunk.state_dict()


def pos_table(tower: Tower) -> torch.Tensor:
    """The tower's native position table (N*N, D), detached (a view: shares storage with the
    model)."""
    return tower.model.pos_embed[0].detach()


def load_pos_table(path: str) -> tuple[torch.Tensor, str]:
    """Position table (N*N, D) float32 of an open_clip, timm or HF SigLIP checkpoint, and its key.

    Only the table is read, so any layout that holds one will do (a leading CLS row is dropped).
    """
    sd = _read_state_dict(path)
    for key in TABLE_KEYS:
        t = sd.get(key)
        if t is None or t.dim() not in (2, 3) or (t.dim() == 3 and t.shape[0] != 1):
            continue
        t = t.reshape(t.shape[-2], t.shape[-1])
        rows = t.shape[0]
        if math.isqrt(rows) ** 2 != rows and math.isqrt(rows - 1) ** 2 == rows - 1:
            t = t[1:]  # CLS row
        if math.isqrt(t.shape[0]) ** 2 == t.shape[0] and t.shape[0] > 0:
            return t.float(), key
    raise bad_param("checkpoint", path, "a checkpoint holding a square position table under one of "
                    "the keys " + ", ".join(TABLE_KEYS))


def _interp_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` for no prefix tokens and dynamic_img_size, interp
    swapped.

    x is the patch embedding, NHWC (B, H, W, C); returns (B, H*W, C) with the table added, after
    ``pos_drop``.  Unlike timm there is no shortcut at the native grid: the implementation always
    runs.
    """
    from workbook.interp import interpolate

    b, h, w, c = x.shape
    pos = interpolate(self._workbook_interp, self.pos_embed[0], (h, w))
    return self.pos_drop(x.view(b, -1, c) + pos.unsqueeze(0))


def use_interpolation(tower: Tower, impl: str | None) -> Tower:
    """Resample the position table with ``workbook.interp`` implementation ``impl`` in every
    forward.

    ``None`` restores timm's own path (resample_abs_pos_embed: bicubic, antialias, float32, skipped
    at the native grid).  Only towers without prefix tokens (SigLIP: no CLS/register tokens) are
    supported.
    """
    from workbook.interp import IMPLEMENTATIONS

    net = tower.model
    if impl is None:
        net.__dict__.pop("_pos_embed", None)
        tower.interp = None
        return tower
    if impl not in IMPLEMENTATIONS:
        raise bad_param("implementation", impl,
                        "None (timm's own) or one of " + ", ".join(IMPLEMENTATIONS))
    prefix = (net.num_prefix_tokens or net.cls_token is not None
              or getattr(net, "reg_token", None) is not None)
    if prefix:
        raise bad_param("model", tower.name, "a tower without prefix (class/register) tokens, like "
                        "SigLIP's, to swap the position interpolation")
    if not net.dynamic_img_size:
        raise bad_param("model", tower.name,
                        "a tower built with dynamic_img_size=True (use build_tower)")
    net._workbook_interp = impl
    net._pos_embed = types.MethodType(_interp_pos_embed, net)
    tower.interp = impl
    return tower


def images(batch: int, size: int, *, seed: int = 0, device="cpu",
           dtype=torch.float32) -> torch.Tensor:
    """Seeded images (B, 3, size, size), uniform in [-1, 1] (SigLIP's mean=std=0.5 normalised
    range).

    Drawn on the CPU, then moved, so the values are the same on every device.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    return x.to(device=device, dtype=dtype)
