"""Fused projections: q/k/v as one matrix product a layer, gate/up as another.

At batch 1 a decode step is a chain of matrix-vector products, each reading its weight once. Under
grouped-query attention the k and v weights are a quarter of q's size, and such small products run
well below the memory bandwidth the large ones reach; every product is also a kernel of its own.
Concatenating the weights that read the same input turns seven products a layer into four, with
the same bytes read. The weights are concatenated once, after loading, and the originals freed, so
memory does not grow; a prefill goes through the same fused products.

The attention module is re-classed in place, so it keeps every attribute transformers gave it
(config, layer_idx, scaling, o_proj, the attention function it dispatches to) and changes only how
q, k and v are made. Its forward takes the KV cache under either keyword transformers has used
(``past_key_values``, and ``cache`` from 5.2x on). Modules that are not plain bias-free
``nn.Linear`` layers (a tensor-parallel shard, a quantised layer) are left as they are, and
:func:`fuse_projections` says so.
"""
from __future__ import annotations

import sys

FUSED_WHAT = "q/k/v and gate/up fused (4 weight products a layer, not 7)"


def _plain(*linears) -> bool:
    import torch

    for lin in linears:
        if type(lin) is not torch.nn.Linear or lin.bias is not None:
            return False
        if type(lin.weight.data) is not torch.Tensor:  # a DTensor shard, a quantised tensor
            return False
    first = linears[0].weight
    return all(lin.weight.dtype == first.dtype and lin.weight.device == first.device
               and lin.in_features == linears[0].in_features for lin in linears)


def _concat(*linears):
    """One bias-free Linear whose output is the given layers' outputs side by side."""
    import torch

    w = torch.cat([lin.weight.data for lin in linears], dim=0)
    out = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta", dtype=w.dtype)
    out.weight = torch.nn.Parameter(w, requires_grad=False)
    return out


class FusedMLP:
    """``down(act(gate(x)) * up(x))`` with gate and up as one product (mixed into the MLP's class)."""

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class FusedAttention:
    """Attention whose q, k and v come from one product (mixed into the attention's class)."""

    def forward(self, hidden_states, position_embeddings, attention_mask=None,
                past_key_values=None, cache=None, **kwargs):
        store = cache if cache is not None else past_key_values
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q, k, v = self.qkv_proj(hidden_states).split(self.qkv_sizes, dim=-1)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        cos, sin = position_embeddings
        q, k = self._rope(q, k, cos, sin)
        if store is not None:
            k, v = store.update(k, v, self.layer_idx, kwargs=kwargs)
        attend = self._attention_functions.get_interface(self.config._attn_implementation,
                                                         self._eager_attention)
        out, weights = attend(self, q, k, v, attention_mask,
                              dropout=0.0 if not self.training else self.attention_dropout,
                              scaling=self.scaling,
                              sliding_window=getattr(self.config, "sliding_window", None), **kwargs)
        out = out.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.o_proj(out), weights


_CLASSES: dict[tuple[type, type], type] = {}


def _reclass(module, mixin, **attrs) -> None:
    """Give ``module`` a subclass of its class whose forward is ``mixin``'s (one per pair), with
    ``attrs`` as class attributes."""
    base = type(module)
    cls = _CLASSES.get((base, mixin))
    if cls is None:
        cls = type(f"Fused{base.__name__}", (mixin, base), attrs)
        _CLASSES[(base, mixin)] = cls
    module.__class__ = cls


def _fuse_attention(attn) -> bool:
    parts = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    if None in parts or not _plain(*parts):
        return False
    modeling = sys.modules.get(type(attn).__module__)  # the model's modeling_*.py
    if not all(hasattr(modeling, n) for n in ("apply_rotary_pos_emb", "ALL_ATTENTION_FUNCTIONS",
                                              "eager_attention_forward")):
        return False
    attn.qkv_sizes = [p.out_features for p in parts]
    attn.qkv_proj = _concat(*parts)
    del attn.q_proj, attn.k_proj, attn.v_proj
    _reclass(attn, FusedAttention, _rope=staticmethod(modeling.apply_rotary_pos_emb),
             _attention_functions=modeling.ALL_ATTENTION_FUNCTIONS,
             _eager_attention=staticmethod(modeling.eager_attention_forward))
    return True


def _fuse_mlp(mlp) -> bool:
    parts = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj")]
    if None in parts or not _plain(*parts) or not hasattr(mlp, "down_proj"):
        return False
    mlp.gate_up_proj = _concat(*parts)
    del mlp.gate_proj, mlp.up_proj
    _reclass(mlp, FusedMLP)
    return True


def fuse_projections(model) -> str:
    """Fuse every decoder layer's q/k/v and gate/up in place; a sentence saying what was done."""
    import torch

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return f"projections not fused: {type(model).__name__} has no model.layers"
    done = 0
    with torch.no_grad():
        for layer in layers:
            a = _fuse_attention(layer.self_attn)
            m = _fuse_mlp(layer.mlp)
            done += a and m
    if done == len(layers):
        return FUSED_WHAT
    return (f"projections fused in {done} of {len(layers)} layers (the others' are not plain "
            f"bias-free Linear layers of one device)")
