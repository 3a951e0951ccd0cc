"""The SigLIP-2 tower on the Triton kernels (``workbook.models.siglip2``) against transformers.

``FusedSiglip2Vision`` must give transformers' ``Siglip2VisionModel`` outputs (last hidden state and
pooler) and gradients (every parameter and the input) from the same weights: to ~1e-4 in fp32, for
full patch grids and for mixed grids with padding. Also: named configs and the shape checks, seeded
weights, NaFlex inputs, the position-table resize, and loading ``Siglip2VisionModel`` state dicts
from checkpoint files the tests write (keys with and without ``vision_model.``). The tiny config
runs under the Triton interpreter on a CPU (conftest sets ``TRITON_INTERPRET=1``); tests marked
``gpu`` repeat the comparison at so400m width on CUDA.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is an optional extra ('.[triton]')")

from workbook.errors import ParameterError  # noqa: E402
from workbook.kernels import runtime  # noqa: E402
from workbook.kernels.layernorm import MAX_HIDDEN  # noqa: E402
from workbook.models.siglip2 import (CONFIGS, FusedOptions, FusedSiglip2Vision,  # noqa: E402
                                     check_shapes, config, from_hf, hf_model, inputs,
                                     load_hf_state_dict, resize_positions)

DEVICE = "cuda" if torch.cuda.is_available() and not runtime.INTERPRET else "cpu"
MIXED = [(4, 4), (3, 5), (2, 2)]  # 16, 15 and 4 of the tiny config's 16 patches: two images padded
TOL = 1e-4

WHY_NOT = runtime.unavailable_reason(DEVICE)
kernels = pytest.mark.skipif(WHY_NOT is not None, reason=f"Triton kernels unavailable: {WHY_NOT}")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def strip(name: str) -> str:
    return name.removeprefix("vision_model.")


def loss_weights(x_shape, p_shape, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*x_shape, generator=g).to(device=device, dtype=dtype),
            torch.randn(*p_shape, generator=g).to(device=device, dtype=dtype))


def forward_backward(model, px, mask, shapes, *, hf: bool):
    """Outputs, input grad and parameter grads (by transformers' name, prefix stripped) of a fixed
    loss on the valid tokens' hidden states and the pooled output."""
    model.zero_grad(set_to_none=True)
    px = px.detach().clone().requires_grad_()
    if hf:
        out = model(pixel_values=px, pixel_attention_mask=mask, spatial_shapes=shapes)
        x, p = out.last_hidden_state, out.pooler_output
    else:
        x, p = model(px, mask, shapes)
    gx, gp = loss_weights(x.shape, p.shape, x.dtype, x.device)
    valid = mask[..., None].to(x.dtype)
    ((x * gx * valid).sum() + (p * gp).sum()).backward()
    grads = {strip(n): q.grad for n, q in model.named_parameters()}
    return x.detach(), p.detach(), px.grad, grads


def max_diff(a, b, mask=None):
    d = (a.double() - b.double()).abs()
    if mask is not None:
        d = d[mask.bool()]
    return d.max().item()


def assert_matches_hf(fused_res, hf_res, mask, tol, *, relative_grads=False):
    """Outputs, input grad and every parameter grad within ``tol`` (absolute; for parameter grads
    relative to their largest magnitude when ``relative_grads``, for sums over thousands of
    tokens)."""
    (x, p, dpx, grads), (hx, hp, hdpx, hgrads) = fused_res, hf_res
    assert x.shape == hx.shape and p.shape == hp.shape
    assert max_diff(x, hx, mask) < tol, max_diff(x, hx, mask)
    assert max_diff(p, hp) < tol, max_diff(p, hp)
    assert max_diff(dpx, hdpx) < tol, max_diff(dpx, hdpx)
    assert set(grads) == set(hgrads), set(grads) ^ set(hgrads)
    bad = {}
    for name, g in grads.items():
        assert g is not None and hgrads[name] is not None, name
        err = max_diff(g, hgrads[name])
        scale = max(1.0, hgrads[name].abs().max().item()) if relative_grads else 1.0
        if err >= tol * scale:
            bad[name] = err
    assert not bad, bad


# ------------------------------------------------------------------------------- configs and checks
def test_importing_the_model_does_not_import_the_kernels():
    """The kernels read TRITON_INTERPRET once, at import; the CPU run sets it after choosing the
    device, so importing the model (its default options included) or the experiment must not import
    them first."""
    import os
    import subprocess
    import sys

    code = ("import sys, workbook.models.siglip2, workbook.experiments.triton_precision; "
            "print('workbook.kernels.runtime' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_named_configs():
    cfg = config("tiny")
    for k, v in CONFIGS["tiny"].items():
        assert getattr(cfg, k) == v
    assert cfg.hidden_act == "gelu_pytorch_tanh" and cfg.layer_norm_eps == 1e-6
    assert cfg.vision_use_head
    big = config("so400m", num_hidden_layers=2)
    assert (big.hidden_size, big.intermediate_size, big.num_attention_heads) == (1152, 4304, 16)
    assert big.num_hidden_layers == 2  # the override
    with pytest.raises(ParameterError) as e:
        config("huge")
    assert "config='huge'" in str(e.value) and "tiny" in str(e.value)


@pytest.mark.parametrize("overrides,param,words", [
    (dict(hidden_size=70), "hidden_size", "multiple of num_attention_heads"),
    (dict(hidden_size=MAX_HIDDEN + 6, num_attention_heads=2), "hidden_size", str(MAX_HIDDEN)),
    (dict(num_patches=15), "num_patches", "perfect square"),
])
def test_check_shapes_names_the_parameter(overrides, param, words):
    cfg = config("tiny", **overrides)
    with pytest.raises(ParameterError) as e:
        check_shapes(cfg)
    msg = str(e.value)
    assert msg.startswith(f"Parameter {param}=") and words in msg, msg
    with pytest.raises(ParameterError, match=param):
        FusedSiglip2Vision(cfg)  # refused before any weight is allocated
    check_shapes(config("tiny"))  # the good config passes


def test_hf_model_is_seeded():
    cfg = config("tiny")
    a, b, c = hf_model(cfg, seed=0), hf_model(cfg, seed=0), hf_model(cfg, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa[next(k for k in sa if k.endswith("fc1.weight"))],
                           sc[next(k for k in sc if k.endswith("fc1.weight"))])
    weight = hf_model(cfg, dtype=torch.bfloat16).embeddings.patch_embedding.weight
    assert weight.dtype == torch.bfloat16


def test_inputs():
    cfg = config("tiny")
    px, mask, shapes = inputs(cfg, 4, grids=MIXED, dtype=torch.bfloat16, seed=3)
    assert px.shape == (4, 16, 3 * 4 * 4) and px.dtype == torch.bfloat16
    assert px.min() >= -1 and px.max() <= 1
    assert shapes.tolist() == [[4, 4], [3, 5], [2, 2], [4, 4]]  # cycled over the batch
    assert mask.sum(1).tolist() == [16, 15, 4, 16]
    assert all(mask[i, :n].all() and not mask[i, n:].any() for i, n in enumerate([16, 15, 4, 16]))
    px2, _, _ = inputs(cfg, 4, grids=MIXED, dtype=torch.bfloat16, seed=3)
    px3, m3, s3 = inputs(cfg, 2)
    assert torch.equal(px, px2) and not torch.equal(px.float()[:2], px3)
    assert m3.all() and s3.tolist() == [[4, 4], [4, 4]]


@pytest.mark.parametrize("grids", [MIXED, [(3, 5)], [(4, 4), (1, 7)]],
                         ids=["mixed", "one-grid", "two"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_resize_positions_matches_transformers(grids, dtype):
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    table = torch.randn(4, 4, 24, generator=torch.Generator().manual_seed(0)).to(dtype)
    shapes = torch.tensor([grids[i % len(grids)] for i in range(5)])
    ours = resize_positions(table, shapes, 16)
    ref = Siglip2VisionEmbeddings.resize_positional_embeddings(table, shapes, 16)
    assert ours.shape == ref.shape == (5, 16, 24) and ours.dtype == dtype
    # the same resize, to rounding: transformers 5.17 called F.interpolate per image as we do
    # (bit-equal), newer releases (seen: 5.24) compute it as a matmul of the separable weights,
    # which can move the last bit
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(ours.float(), ref.float(), rtol=eps,
                               atol=eps * ref.abs().max().item())
    with pytest.raises(ValueError, match="does not fit"):
        resize_positions(table, torch.tensor([[5, 4]]), 16)


# ---------------------------------------------------------------------- agreement with transformers
@kernels
@pytest.mark.parametrize("grids", [None, MIXED], ids=["full", "mixed-padded"])
def test_fused_matches_transformers_fp32(grids):
    cfg = config("tiny")
    hf = hf_model(cfg, seed=0, device=DEVICE)
    fused = from_hf(hf)
    assert isinstance(fused, FusedSiglip2Vision) and fused.options == FusedOptions()
    px, mask, shapes = inputs(cfg, 3, grids=grids, device=DEVICE)
    assert bool(mask.all()) == (grids is None)
    ours = forward_backward(fused, px, mask, shapes, hf=False)
    ref = forward_backward(hf, px, mask, shapes, hf=True)
    assert len(ours[3]) == sum(1 for _ in hf.parameters())
    assert_matches_hf(ours, ref, mask, TOL)
    # the check is not vacuous: the largest gradients are O(1), so TOL is tight relative to them
    assert max(g.abs().max().item() for g in ref[3].values()) > 1.0
    assert ref[2].abs().max().item() > 1e-3


@kernels
def test_fused_options_match_transformers():
    """Storing the LayerNorm outputs gives the recomputing default's bits; the Triton QKV GEMM
    matches too."""
    cfg = config("tiny")
    hf = hf_model(cfg, seed=2, device=DEVICE)
    px, mask, shapes = inputs(cfg, 3, grids=MIXED, device=DEVICE, seed=1)
    ref = forward_backward(hf, px, mask, shapes, hf=True)
    default = forward_backward(from_hf(hf), px, mask, shapes, hf=False)
    stored = forward_backward(from_hf(hf, FusedOptions(recompute_norm=False)), px, mask, shapes,
                              hf=False)
    for a, b in zip(default[:3], stored[:3]):
        assert torch.equal(a, b)
    assert all(torch.equal(default[3][k], stored[3][k]) for k in default[3])
    for projection in ("concat", "triton"):
        other = from_hf(hf, FusedOptions(qkv=projection))
        assert other.encoder.layers[0].options.qkv == projection
        assert_matches_hf(forward_backward(other, px, mask, shapes, hf=False), ref, mask, TOL)
    with pytest.raises(ParameterError, match="qkv"):
        FusedOptions(qkv="fused")


@kernels
def test_fused_bf16_within_twice_eager_error():
    """bf16 tower vs transformers in bf16, both against transformers in fp64 from the same bf16
    weights."""
    cfg = config("tiny")
    hf16 = hf_model(cfg, seed=0, dtype=torch.bfloat16, device=DEVICE)
    hf64 = hf_model(cfg, seed=0, device=DEVICE)
    hf64.load_state_dict(hf16.state_dict())
    hf64 = hf64.double()
    fused = from_hf(hf16)
    assert next(fused.parameters()).dtype == torch.bfloat16
    px, mask, shapes = inputs(cfg, 3, grids=MIXED, dtype=torch.bfloat16, device=DEVICE)
    with torch.no_grad():
        x, p = fused(px, mask, shapes)
        e = hf16(pixel_values=px, pixel_attention_mask=mask, spatial_shapes=shapes)
        r = hf64(pixel_values=px.double(), pixel_attention_mask=mask, spatial_shapes=shapes)
    for name, ours, eager, ref in [
            ("last_hidden_state", x, e.last_hidden_state, r.last_hidden_state),
            ("pooler_output", p, e.pooler_output, r.pooler_output)]:
        valid = mask if ours.dim() == 3 else None
        err, err_eager = max_diff(ours, ref, valid), max_diff(eager, ref, valid)
        atol = torch.finfo(torch.bfloat16).eps * ref.abs().max().item()
        assert ours.dtype == torch.bfloat16
        assert err <= 2 * err_eager + atol, (name, err, err_eager, atol)


# ------------------------------------------------------------------------------- checkpoint loading
@kernels
@pytest.mark.parametrize("prefix", ["vision_model.", ""], ids=["prefixed", "bare"])
def test_checkpoint_round_trip(tmp_path, prefix):
    """A ``Siglip2VisionModel`` state dict saved by the test loads into a fresh tower, which then
    gives the same outputs as ``from_hf`` of the model that was saved."""
    cfg = config("tiny")
    hf = hf_model(cfg, seed=5)
    sd = {prefix + strip(k): v for k, v in hf.state_dict().items()}
    assert all(k.startswith(prefix) for k in sd)
    path = tmp_path / "siglip2_vision.pt"
    torch.save(sd, path)

    model = FusedSiglip2Vision(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_hf_state_dict(model, torch.load(path, map_location="cpu", weights_only=True))
    after = model.state_dict()
    assert set(after) == {strip(k) for k in sd}
    assert all(torch.equal(after[k], sd[prefix + k]) for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after)

    model = model.to(DEVICE)
    ref = from_hf(hf.to(DEVICE))
    px, mask, shapes = inputs(cfg, 2, grids=MIXED[1:], device=DEVICE)
    with torch.no_grad():
        out, pooled = model(px, mask, shapes)
        out_ref, pooled_ref = ref(px, mask, shapes)
    assert torch.equal(out, out_ref) and torch.equal(pooled, pooled_ref)


def test_load_hf_state_dict_is_strict(tmp_path):
    cfg = config("tiny", num_hidden_layers=1)
    sd = {"vision_model." + strip(k): v for k, v in hf_model(cfg, seed=0).state_dict().items()}
    path = tmp_path / "ckpt.pt"
    missing = dict(sd)
    del missing["vision_model.post_layernorm.weight"]
    torch.save(missing, path)
    with pytest.raises(RuntimeError, match="post_layernorm.weight"):
        load_hf_state_dict(FusedSiglip2Vision(cfg), torch.load(path, weights_only=True))
    extra = dict(sd, **{"vision_model.encoder.layers.1.mlp.fc1.weight": torch.zeros(100, 72)})
    torch.save(extra, path)
    with pytest.raises(RuntimeError, match="layers.1"):
        load_hf_state_dict(FusedSiglip2Vision(cfg), torch.load(path, weights_only=True))
    wrong = dict(sd, **{"vision_model.head.probe": torch.zeros(1, 1, 64)})
    torch.save(wrong, path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_hf_state_dict(FusedSiglip2Vision(cfg), torch.load(path, weights_only=True))


# ------------------------------------------------------------------- GPU: so400m width, 4096 tokens
@pytest.mark.gpu
@pytest.mark.parametrize("grids", [None, [(16, 16), (12, 20), (8, 8), (15, 17)]],
                         ids=["full", "mixed-padded"])
def test_gpu_so400m_matches_transformers(grids):
    cfg = config("so400m", num_hidden_layers=2)
    hf = hf_model(cfg, seed=0, device="cuda")
    fused = from_hf(hf)
    px, mask, shapes = inputs(cfg, 16, grids=grids, device="cuda")  # 16 x 256 = 4096 tokens
    ours = forward_backward(fused, px, mask, shapes, hf=False)
    ref = forward_backward(hf, px, mask, shapes, hf=True)
    assert_matches_hf(ours, ref, mask, 1e-3, relative_grads=True)


@pytest.mark.gpu
def test_gpu_so400m_bf16_within_twice_eager_error():
    cfg = config("so400m", num_hidden_layers=2)
    hf16 = hf_model(cfg, seed=0, dtype=torch.bfloat16, device="cuda")
    hf64 = hf_model(cfg, seed=0, device="cuda")
    hf64.load_state_dict(hf16.state_dict())
    hf64 = hf64.double()
    fused = from_hf(hf16)
    px, mask, shapes = inputs(cfg, 16, grids=[(16, 16), (12, 20)], dtype=torch.bfloat16,
                              device="cuda")
    with torch.no_grad():
        x, p = fused(px, mask, shapes)
        e = hf16(pixel_values=px, pixel_attention_mask=mask, spatial_shapes=shapes)
        r = hf64(pixel_values=px.double(), pixel_attention_mask=mask, spatial_shapes=shapes)
    for ours, eager, ref, valid in [(x, e.last_hidden_state, r.last_hidden_state, mask),
                                    (p, e.pooler_output, r.pooler_output, None)]:
        atol = torch.finfo(torch.bfloat16).eps * ref.abs().max().item()
        assert max_diff(ours, ref, valid) <= 2 * max_diff(eager, ref, valid) + atol
