"""The SigLIP-2 vision tower on the Triton kernels, loading transformers' weights.

Why it exists: the fused kernels are only worth something if a whole SigLIP-2 tower built from them
gives the same outputs and gradients as the model people use. :class:`FusedSiglip2Vision` has the
same module names as transformers' ``Siglip2VisionModel`` (so ``load_state_dict`` takes its weights
unchanged, with or without the older ``vision_model.`` prefix) and differs only in how each block
computes:

- LayerNorm + fused QKV projection + head split in one autograd node, then attention through torch
  SDPA; that node's backward also takes the attention residual's gradient and out_proj's bias
  gradient;
- LayerNorm + fused MLP in one node (GELU on the fp32 accumulator, activation recomputed in
  backward, the residual's gradient and fc2's bias gradient taken in the LayerNorm backward pass);
- both residual adds of a layer done inside the next LayerNorm's pass: the attention output is added
  in LN2's, and the MLP output in the next layer's LN1 (each layer returns ``(h, mlp_out)``
  unsummed);
- the NaFlex position table resized once per distinct patch grid in the batch rather than once per
  image (transformers loops over the images and writes each one into a slice), and the attention
  mask built once per forward and dropped when no patch is padding.

Configs come from names (``so400m``, ``tiny``) with seeded random weights: no model hub is reachable
here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbook.errors import bad_param

CONFIGS = {
    # google/siglip2-so400m-patch16-naflex vision tower
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                   num_attention_heads=16, patch_size=16, num_patches=256, num_channels=3),
    # small enough for the Triton interpreter on a 2-core CPU; odd sizes exercise the masks
    "tiny": dict(hidden_size=72, intermediate_size=100, num_hidden_layers=2, num_attention_heads=3,
                 patch_size=4, num_patches=16, num_channels=3),
}


def config(name: str = "tiny", **overrides):
    """A transformers ``Siglip2VisionConfig`` for a named size (so400m, tiny), with overrides."""
    from transformers import Siglip2VisionConfig

    if name not in CONFIGS:
        raise bad_param("config", name, f"one of {', '.join(CONFIGS)}")
    kw = dict(CONFIGS[name], hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
              attention_dropout=0.0, vision_use_head=True)
    kw.update(overrides)
    return Siglip2VisionConfig(**kw)


def check_shapes(cfg) -> None:
    """Refuse configurations the kernels do not support, naming the rule."""
    from workbook.kernels.layernorm import MAX_HIDDEN

    if cfg.hidden_size % cfg.num_attention_heads:
        raise bad_param("hidden_size", cfg.hidden_size,
                        f"a multiple of num_attention_heads ({cfg.num_attention_heads})")
    if cfg.hidden_size > MAX_HIDDEN:
        raise bad_param("hidden_size", cfg.hidden_size,
                        f"at most {MAX_HIDDEN} (one LayerNorm row per Triton program)")
    if int(math.isqrt(cfg.num_patches)) ** 2 != cfg.num_patches:
        raise bad_param("num_patches", cfg.num_patches,
                        "a perfect square (the position table is square)")


def hf_model(cfg, *, seed: int = 0, dtype=torch.float32, device="cpu", attn: str = "sdpa"):
    """transformers' ``Siglip2VisionModel`` with seeded random weights (its own initialisation)."""
    from transformers import Siglip2VisionModel

    torch.manual_seed(seed)
    model = Siglip2VisionModel._from_config(cfg, attn_implementation=attn)
    return model.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class FusedOptions:
    """How the fused model computes: ``recompute_norm`` (LayerNorm outputs recomputed in backward),
    ``qkv`` (how the QKV projection runs: "planes", "concat" or "triton", see
    :func:`workbook.kernels.heads.ln_qkv_heads`) and ``dgrad_gemm`` (GELU' fused into fc2's
    data-gradient GEMM in Triton rather than cuBLAS + one Triton elementwise pass)."""

    recompute_norm: bool = True
    qkv: str = "concat"
    dgrad_gemm: bool = False

    def __post_init__(self):
        from workbook.kernels import QKV_PROJECTIONS  # the package alone: no Triton import

        if self.qkv not in QKV_PROJECTIONS:
            raise bad_param("qkv", self.qkv, f"one of {', '.join(QKV_PROJECTIONS)}")


class _Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = d // self.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))


class _MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        from workbook.kernels.mlp import mlp

        return mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


class FusedEncoderLayer(nn.Module):
    """One SigLIP-2 encoder layer on the fused kernels: ``x + attn(LN1(x))``, then the MLP's."""

    def __init__(self, cfg, options: FusedOptions = FusedOptions()):
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.options = options
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = _Attention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _MLP(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h, f = self.forward_deferred(x, None, attn_mask)
        return h + f

    def forward_deferred(self, x: torch.Tensor, branch: torch.Tensor | None,
                         attn_mask: torch.Tensor | None):
        """The layer on input ``x + branch`` (branch: the previous layer's MLP output, not yet
        added), returning ``(h, mlp_out)`` whose sum is the layer's output: both residual adds
        happen inside LayerNorm passes."""
        from workbook.kernels.heads import ln_qkv_heads
        from workbook.kernels.mlp import add_ln_mlp, qkv_weights

        a, ln1, ln2, opt = self.self_attn, self.layer_norm1, self.layer_norm2, self.options
        b, s, d = x.shape
        w, bias = qkv_weights(a.q_proj, a.k_proj, a.v_proj)
        out_w, out_b = a.out_proj.weight, a.out_proj.bias
        q, k, v, x = ln_qkv_heads(x, ln1.weight, ln1.bias, self.eps, w, bias, a.num_heads,
                                  recompute_norm=opt.recompute_norm, projection=opt.qkv,
                                  residual_bias=out_b, branch=branch)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=a.head_dim ** -0.5)
        # out_proj's bias gradient is the residual gradient's column sum, taken in LN1's
        # backward (ln_qkv_heads)
        attn = F.linear(o.transpose(1, 2).reshape(b, s, d), out_w, out_b.detach())
        m = self.mlp
        return add_ln_mlp(x, attn, ln2.weight, ln2.bias, self.eps, m.fc1.weight, m.fc1.bias,
                          m.fc2.weight, m.fc2.bias, recompute_norm=opt.recompute_norm,
                          dgrad_gemm=opt.dgrad_gemm)


class _Encoder(nn.Module):
    def __init__(self, cfg, options):
        super().__init__()
        self.layers = nn.ModuleList(FusedEncoderLayer(cfg, options)
                                    for _ in range(cfg.num_hidden_layers))


class _Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.patch_embedding = nn.Linear(cfg.num_channels * cfg.patch_size ** 2, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.hidden_size)
        self.side = int(math.isqrt(cfg.num_patches))

    def forward(self, pixel_values: torch.Tensor, spatial_shapes: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        table = self.position_embedding.weight.reshape(self.side, self.side, -1)
        return patches + resize_positions(table, spatial_shapes, pixel_values.shape[1])


def resize_positions(table: torch.Tensor, spatial_shapes: torch.Tensor,
                     max_len: int) -> torch.Tensor:
    """transformers' NaFlex position resize (bilinear, antialias, padding rows = first row), done
    once per grid.

    Returns ``[batch, max_len, dim]`` (an expanded view when every image has the same grid).
    """
    dim, dtype = table.shape[-1], table.dtype
    src = table.permute(2, 0, 1).unsqueeze(0)
    # antialias has no bf16/fp16 CPU kernel; transformers upcasts the same way
    if src.device.type == "cpu":
        src = src.float()
    shapes = [tuple(s) for s in spatial_shapes.tolist()]
    grids = list(dict.fromkeys(shapes))
    rows = []
    for h, w in grids:
        if h <= 0 or w <= 0 or h * w > max_len:
            raise ValueError(f"spatial shape {(h, w)} does not fit {max_len} patches")
        r = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        r = r.reshape(dim, h * w).t().to(dtype)
        if h * w < max_len:
            r = torch.cat([r, r[:1].expand(max_len - h * w, dim)], 0)
        rows.append(r)
    if len(grids) == 1:
        return rows[0].unsqueeze(0).expand(len(shapes), max_len, dim)
    index = torch.tensor([grids.index(s) for s in shapes], device=table.device)
    return torch.stack(rows).index_select(0, index)


class _Head(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, cfg.hidden_size))
        self.attention = nn.MultiheadAttention(cfg.hidden_size, cfg.num_attention_heads,
                                               batch_first=True)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _MLP(cfg)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        from workbook.kernels.layernorm import layer_norm

        probe = self.probe.expand(x.shape[0], -1, -1)
        h = self.attention(probe, x, x, key_padding_mask=key_padding, need_weights=False)[0]
        h = h + self.mlp(layer_norm(h, self.layernorm.weight, self.layernorm.bias,
                                    self.layernorm.eps))
        return h[:, 0]


class FusedSiglip2Vision(nn.Module):
    """The SigLIP-2 vision tower on the kernels; returns ``(last_hidden_state, pooler_output)``."""

    def __init__(self, cfg, options: FusedOptions = FusedOptions()):
        super().__init__()
        check_shapes(cfg)
        self.config = cfg
        self.options = options
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg, options)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.head = _Head(cfg) if cfg.vision_use_head else None

    def forward(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None):
        from workbook.kernels.layernorm import layer_norm

        x = self.embeddings(pixel_values, spatial_shapes)
        attn_mask = key_padding = None
        if pixel_attention_mask is not None:
            valid = pixel_attention_mask.bool()
            # one check per forward; no mask at all lets SDPA pick its fastest kernel
            if not bool(valid.all()):
                attn_mask = valid[:, None, None, :]
                key_padding = ~valid
        branch = None  # each layer's MLP output, added in the next layer's LayerNorm pass
        for layer in self.encoder.layers:
            x, branch = layer.forward_deferred(x, branch, attn_mask)
        if branch is not None:
            x = x + branch
        ln = self.post_layernorm
        x = layer_norm(x, ln.weight, ln.bias, ln.eps)
        pooled = self.head(x, key_padding) if self.head is not None else None
        return x, pooled


def load_hf_state_dict(model: FusedSiglip2Vision, state_dict: dict) -> None:
    """Load a ``Siglip2VisionModel`` state dict (keys with or without ``vision_model.``); strict."""
    sd = {k.removeprefix("vision_model."): v for k, v in state_dict.items()}
    model.load_state_dict(sd, strict=True)


def from_hf(hf, options: FusedOptions = FusedOptions()) -> FusedSiglip2Vision:
    """The fused tower with the weights, dtype and device of a transformers Siglip2VisionModel."""
    p = next(hf.parameters())
    model = FusedSiglip2Vision(hf.config, options).to(device=p.device, dtype=p.dtype)
    load_hf_state_dict(model, hf.state_dict())
    return model


def inputs(cfg, batch: int, *, grids=None, dtype=torch.float32, device="cpu", seed: int = 0):
    """NaFlex inputs: patchified pixels ``[B, num_patches, C*P*P]``, padding mask, patch grids.

    ``grids`` is a list of (h, w) cycled over the batch; by default every image uses the full square
    grid.
    """
    side = int(math.isqrt(cfg.num_patches))
    grids = grids or [(side, side)]
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, cfg.num_patches, cfg.num_channels * cfg.patch_size ** 2,
                        generator=g) * 2 - 1
    shapes = torch.tensor([grids[i % len(grids)] for i in range(batch)], dtype=torch.long)
    mask = torch.zeros(batch, cfg.num_patches, dtype=torch.long)
    for i, (h, w) in enumerate(shapes.tolist()):
        mask[i, : h * w] = 1
    return pixels.to(device=device, dtype=dtype), mask.to(device), shapes.to(device)
