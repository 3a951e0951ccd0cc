"""SigLIP tower builder: names, seeded weights, checkpoint loading, swapped position interpolation.

Towers are tiny (1 block, width 64) so the tests run in seconds on a CPU; no model hub is reached.
"""
from __future__ import annotations

import pytest
import torch

from workbook.errors import ParameterError
from workbook.models import (build_tower, images, load_pos_table, pos_table, resolve_model,
                             use_interpolation)

NAME = "ViT-SO400M-14-SigLIP"  # patch 14, native grid 16 at 224
TINY = dict(depth=1, embed_dim=64, num_heads=2)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No hub: offline flag and an empty cache (huggingface_hub reads both at import, so patch
    constants)."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))


def tiny(**kw):
    return build_tower(NAME, overrides={**TINY, **kw.pop("overrides", {})}, **kw)


@torch.no_grad()
def out(tower, x):
    return tower.model(x)


def test_resolve_model():
    assert resolve_model(NAME) == "vit_so400m_patch14_siglip_224"
    assert resolve_model("ViT-SO400M-14-SigLIP-384") == "vit_so400m_patch14_siglip_384"
    assert resolve_model("vit_so400m_patch14_siglip_224") == "vit_so400m_patch14_siglip_224"
    with pytest.raises(ParameterError) as e:
        resolve_model("ViT-SO400M-14-SigLP")
    msg = str(e.value)
    assert "model='ViT-SO400M-14-SigLP'" in msg and "ViT-SO400M-14-SigLIP" in msg
    assert "closest" in msg


def test_tower_facts():
    t = tiny()
    assert t.timm_name == "vit_so400m_patch14_siglip_224"
    assert (t.patch, t.grid, t.width, t.depth) == (14, 16, 64, 1)
    assert t.weights == "seeded random (seed=0)" and t.interp is None
    assert t.params == sum(p.numel() for p in t.model.parameters())
    assert not t.model.training and t.model.pos_embed.dtype == torch.float32
    assert pos_table(t).shape == (256, 64)


def test_seeded_weights():
    a, b, c = tiny(seed=0), tiny(seed=0), tiny(seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["pos_embed"], sc["pos_embed"])
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])


def _save(tower, path, style):
    sd = tower.model.state_dict()
    if style == "open_clip":
        state = {f"module.visual.trunk.{k}": v for k, v in sd.items()}
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif style == "timm":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("style,fname", [("open_clip", "epoch_3.pt"), ("timm", "tower.pth"),
                                         ("safetensors", "model.safetensors")])
def test_checkpoint_round_trip(tmp_path, style, fname):
    src = tiny(seed=7)
    path = _save(src, tmp_path / fname, style)
    t = tiny(checkpoint=path)
    assert t.weights == f"checkpoint {fname}"
    x = images(2, 224, seed=1)
    assert torch.equal(out(t, x), out(src, x))
    assert torch.equal(load_pos_table(path)[0], pos_table(src))


def test_checkpoint_other_grid_is_resampled(tmp_path):
    src = tiny(overrides=dict(img_size=112))  # grid 8
    path = _save(src, tmp_path / "g8.pt", "timm")
    t = tiny(checkpoint=path)
    assert t.grid == 16 and pos_table(t).shape == (256, 64)
    assert "resampled 8x8 -> 16x16" in t.weights
    from workbook.interp import interpolate

    assert torch.equal(pos_table(t), interpolate("timm_bicubic_aa", pos_table(src), (16, 16)))
    assert torch.equal(t.model.blocks[0].attn.qkv.weight, src.model.blocks[0].attn.qkv.weight)


def test_checkpoint_of_other_model(tmp_path):
    path = _save(tiny(overrides=dict(embed_dim=32)), tmp_path / "w32.pt", "timm")
    with pytest.raises(ParameterError,
                       match=r"checkpoint=.*a checkpoint of ViT-SO400M-14-SigLIP: .*shape"):
        tiny(checkpoint=path)
    path = _save(tiny(overrides=dict(depth=2)), tmp_path / "d2.pt", "timm")
    with pytest.raises(ParameterError,
                       match=r"checkpoint=.*0 missing keys, \d+ unexpected like blocks\.1\."):
        tiny(checkpoint=path)


def test_checkpoint_errors(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(ParameterError, match=r"checkpoint=.*nope\.pt.*an existing file"):
        tiny(checkpoint=missing)
    with pytest.raises(ParameterError, match="an existing file"):
        load_pos_table(missing)
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ParameterError, match=r"checkpoint=.*square position table"):
        load_pos_table(str(tmp_path / "other.pt"))
    torch.save({"pos_embed": torch.zeros(1, 15, 8)}, tmp_path / "odd.pt")
    with pytest.raises(ParameterError, match="square position table"):
        load_pos_table(str(tmp_path / "odd.pt"))
    src = tiny()
    path = _save(src, tmp_path / "ok.pt", "timm")
    # a cut-down tower's checkpoint loads at its own depth; another depth is refused, saying which
    # fits (depth with pretrained weights is pos_interp's configure's to refuse, test_pos_interp)
    small = dict(embed_dim=64, num_heads=2)
    assert build_tower(NAME, checkpoint=path, depth=1, overrides=small).depth == 1
    with pytest.raises(ParameterError, match=r"depth=2 is not allowed: 0 \(as configured\) or 1, "
                                             "the number of blocks"):
        build_tower(NAME, checkpoint=path, depth=2, overrides=small)


def test_load_pos_table_layouts(tmp_path):
    table = torch.randn(49, 8)
    torch.save({"vision_model.embeddings.position_embedding.weight": table.half()},
               tmp_path / "hf.bin")
    t, key = load_pos_table(str(tmp_path / "hf.bin"))
    assert key == "vision_model.embeddings.position_embedding.weight"
    assert t.dtype == torch.float32 and torch.equal(t, table.half().float())
    torch.save({"model": {"module.visual.trunk.pos_embed": table[None]}}, tmp_path / "oc.pt")
    t, key = load_pos_table(str(tmp_path / "oc.pt"))
    assert key == "visual.trunk.pos_embed" and torch.equal(t, table)
    with_cls = torch.cat([torch.full((1, 8), 9.0), table])
    torch.save({"visual.positional_embedding": with_cls}, tmp_path / "clip.pt")
    t, key = load_pos_table(str(tmp_path / "clip.pt"))
    assert key == "visual.positional_embedding" and torch.equal(t, table)


def test_pretrained_offline_is_a_parameter_error():
    with pytest.raises(ParameterError) as e:
        build_tower(NAME, pretrained="webli")
    msg = str(e.value)
    assert "pretrained='webli'" in msg and "checkpoint" in msg
    assert "cannot reach the model hub" in msg
    with pytest.raises(ParameterError, match=r"pretrained='nope'.*webli.*checkpoint"):
        build_tower(NAME, pretrained="nope")


def test_use_interpolation_matches_timm_and_restores():
    t = tiny(seed=3)
    x = torch.cat([images(1, 14 * 12, seed=2), images(1, 14 * 12, seed=4)])  # grid 12 (native 16)
    wide = images(1, 14 * 20, seed=5)[..., : 14 * 12]  # non-square grid 20x12
    native = images(2, 224, seed=6)
    ref = {k: out(t, v) for k, v in dict(x=x, wide=wide, native=native).items()}

    use_interpolation(t, "timm_bicubic_aa")
    assert t.interp == "timm_bicubic_aa"
    assert torch.equal(out(t, x), ref["x"]) and torch.equal(out(t, wide), ref["wide"])

    use_interpolation(t, "bilinear_ac")
    assert not torch.allclose(out(t, x), ref["x"], atol=1e-6)
    # align_corners=True: identity at the native grid
    for impl in ("bilinear_ac", "bicubic_ac", "gather4"):
        use_interpolation(t, impl)
        assert torch.equal(out(t, native), ref["native"]), impl

    use_interpolation(t, None)
    assert t.interp is None and "_pos_embed" not in t.model.__dict__
    assert torch.equal(out(t, x), ref["x"])
    with pytest.raises(ParameterError, match="implementation='nope'"):
        use_interpolation(t, "nope")


def test_use_interpolation_refuses_prefix_tokens():
    t = build_tower("vit_base_patch16_clip_224", overrides=TINY)  # has a CLS token
    with pytest.raises(ParameterError, match="prefix"):
        use_interpolation(t, "bilinear")


def test_images():
    a, b = images(2, 32, seed=1), images(2, 32, seed=1)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, images(2, 32, seed=2))
    assert a.min() >= -1 and a.max() <= 1
    assert images(1, 8, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("impl", [None, "hf_bicubic", "gather4"])
def test_the_forward_is_one_static_graph_for_torch_compile_and_export(impl):
    """What a whole-graph compiler (``torch.compile(backend="neuron")`` on Trn2/Trn3) needs: the
    tower's forward, at its own size and, with a swapped interpolation, at another, is one graph
    (``fullgraph=True``, no break) with static shapes (``torch.export`` finds no data-dependent
    size), and both give the eager output."""
    tower = tiny() if impl is None else use_interpolation(tiny(), impl)
    side = (tower.grid + (0 if impl is None else 4)) * tower.patch
    x = images(2, side, seed=0)
    ref = out(tower, x)
    torch._dynamo.reset()
    compiled = torch.compile(tower.model, fullgraph=True, dynamic=False, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref)
    ep = torch.export.export(tower.model, (x,), strict=False)
    shapes = [n.meta["val"].shape for n in ep.graph.nodes
              if isinstance(n.meta.get("val"), torch.Tensor)]
    assert shapes and all(isinstance(d, int) for s in shapes for d in s)  # no symbolic size
    assert ep.range_constraints == {}  # no unbacked (data-dependent) symbol either
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), ref)
