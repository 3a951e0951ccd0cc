"""Precision: each kernel's error against fp64 beside eager PyTorch's, the seed's claim, the model
check.

Why against eager in the same dtype: a bf16 kernel is never exact, so its error only means something
next to what PyTorch itself gets from the same rounded inputs. The verdict is the rule
FlashAttention and PyTorch use (``err_kernel <= 2 x err_eager + atol``), for the output and every
gradient. The claim check adds a control kernel that rounds the pre-activation as eager does, so a
difference between the fused kernel and eager can be traced to that one rounding.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from workbook.console import progress
from workbook.precision import bin_labels, histogram, stats, verdict

from .cases import TORCH_DTYPES, block_case, gen, kernel_case, rand

K_RULE = 2.0  # FlashAttention/quack: err_kernel <= 2 x err_eager_same_dtype + atol
CLAIM_IMPLS = ("eager F.gelu(F.linear)", "triton, GELU on fp32 accumulator",
               "triton control, pre-activation rounded like eager",
               "fp64 result rounded once (ideal)")


def _atol(ref64: torch.Tensor, dtype) -> float:
    """One ULP of the largest reference value: the absolute slack of the 2x rule, scale-free."""
    return float(ref64.abs().max()) * torch.finfo(dtype).eps


def _run(fn, ins: dict, dtype, device, dy) -> dict:
    ts = {k: v.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
          for k, v in ins.items()}
    out = fn(*ts.values())
    out.backward(dy.to(device=device, dtype=dtype))
    return {"output": out.detach(), **{f"d{k}": v.grad for k, v in ts.items()}}


def _block_run(c, hf, x, impl, dtype, device, dy) -> dict:
    from workbook.models.siglip2 import FusedEncoderLayer

    if impl == "triton":
        m = FusedEncoderLayer(c)
        m.load_state_dict(hf.state_dict())
    else:
        m = copy.deepcopy(hf)
    m = m.to(device=device, dtype=dtype)
    xs = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
    out = m(xs, None)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(dy.to(device=device, dtype=dtype))
    grads = {"output": out.detach(), "dx": xs.grad}
    grads.update({f"d{k}": p.grad for k, p in m.named_parameters()})
    return grads


def precision_rows(cfg, kernel: str, dtype_name: str) -> list[dict]:
    """For the output and every gradient: triton and eager error against fp64, and the 2x
    verdict."""
    p, dtype, dev = cfg.p, TORCH_DTYPES[dtype_name], cfg.device
    if kernel == "block":
        c, hf, x = block_case(p)
        # every run, the fp64 reference too, sees the same rounded weights
        hf_r = hf.to(dtype).double()
        x_r = x.to(dtype).double()
        dy = rand(x.shape, gen(p.seed, 77)).to(dtype).double()
        ref = _block_run(c, hf_r, x_r, "eager", torch.float64, dev, dy)
        runs = {impl: _block_run(c, hf_r, x_r, impl, dtype, dev, dy) for impl in ("triton",
                                                                                  "eager")}
    else:
        ins, tri, eag = kernel_case(p, kernel)
        ins = {k: v.to(dtype).double() for k, v in ins.items()}  # what every run sees, exactly
        dy = rand(eag(*ins.values()).shape, gen(p.seed, 55)).to(dtype).double()
        ref = _run(eag, ins, torch.float64, dev, dy)
        runs = {"triton": _run(tri, ins, dtype, dev, dy), "eager": _run(eag, ins, dtype, dev, dy)}
    rows = []
    for tensor, r64 in ref.items():
        if r64 is None:
            continue
        st = {impl: stats(runs[impl][tensor], r64, dtype) for impl in runs}
        atol = _atol(r64, dtype)
        ok = verdict(st["triton"], st["eager"], k=K_RULE, atol=atol)
        for impl in ("triton", "eager"):
            mark = ("pass" if ok else "FAIL") if impl == "triton" else ""
            rows.append({"kernel": kernel, "dtype": dtype_name, "tensor": tensor, "impl": impl,
                         **st[impl], "atol": atol, "verdict": mark})
    return rows


def precision_study(cfg, rec) -> tuple[list[dict], list[dict]]:
    """The precision section: :func:`precision_rows` for every kernel and dtype, each (kernel,
    dtype) one resumable group of ``rec`` (a resumed run takes those its predecessor finished).
    Returns the rows and their :func:`precision_summary`."""
    rec.keys("precision", ["kernel", "dtype", "tensor", "impl"])
    rows = []
    with progress(total=len(cfg.p.kernels) * len(cfg.p.dtypes), desc="precision") as bar:
        for kernel in cfg.p.kernels:
            for dtype_name in cfg.p.dtypes:
                group = rec.done_group("precision", kernel=kernel, dtype=dtype_name)
                if group is None:
                    group = precision_rows(cfg, kernel, dtype_name)
                    rec.add_group("precision", group, kernel=kernel, dtype=dtype_name)
                rows += group
                bar.update(1)
    return rows, precision_summary(rows)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else float("inf"))


def precision_summary(rows: list[dict]) -> list[dict]:
    """One row per kernel x dtype: worst triton/eager max-error ratio, mean ULP of both on the
    output."""
    eager = {(r["kernel"], r["dtype"], r["tensor"]): r for r in rows if r["impl"] == "eager"}
    out = {}
    for r in rows:
        key = (r["kernel"], r["dtype"])
        s = out.setdefault(key, {"kernel": r["kernel"], "dtype": r["dtype"], "tensors": 0,
                                 "failed": 0,
                                 "worst_ratio_vs_eager": 0.0})
        if r["impl"] != "triton":
            continue
        e = eager[(*key, r["tensor"])]
        s["tensors"] += 1
        s["failed"] += r["verdict"] == "FAIL"
        s["worst_ratio_vs_eager"] = max(s["worst_ratio_vs_eager"], _ratio(r["max_abs"],
                                                                          e["max_abs"]))
        if r["tensor"] == "output":
            s["output_mean_ulp_triton"] = r["mean_ulp"]
            s["output_mean_ulp_eager"] = e["mean_ulp"]
    for s in out.values():
        s["verdict"] = "pass" if s["failed"] == 0 else f"FAIL ({s['failed']} tensors)"
    return list(out.values())


def ulp_histograms(cfg, kernel: str = "mlp") -> list[dict]:
    """Share of ``kernel``'s outputs in each ULP-error bin, triton and eager, per dtype (empty when
    the run does not study that kernel)."""
    if kernel not in cfg.p.kernels or kernel == "block":
        return []
    out = []
    for name in cfg.p.dtypes:
        dt = TORCH_DTYPES[name]
        ins, tri, eag = kernel_case(cfg.p, kernel)
        ins = {k: v.to(dt).double() for k, v in ins.items()}
        with torch.no_grad():
            ref = eag(*ins.values())
            for impl, fn in (("triton", tri), ("eager", eag)):
                o = fn(*[v.to(device=cfg.device, dtype=dt) for v in ins.values()]).cpu()
                for lab, share in zip(bin_labels(), histogram(o, ref, dt)):
                    out.append({"kernel": kernel, "dtype": name, "impl": impl, "ulp_bin": lab,
                                "share": share})
    return out


def by_dtype(rows: list[dict]) -> dict[str, list[dict]]:
    """Histogram rows by dtype, in the run's order: one figure each."""
    out = {}
    for r in rows:
        out.setdefault(r["dtype"], []).append(r)
    return out


def claim_check(cfg, rec) -> tuple[list[dict], list[dict]]:
    """fc1 + GELU forward in bf16/fp16: eager, Triton (GELU on the fp32 accumulator), Triton
    rounding like eager, and the ideal; recorded as the ``claim`` table. Returns the rows and ULP
    histograms."""
    from workbook.kernels.gemm import gemm

    t, k, n = cfg.p.claim_shape
    g = gen(cfg.p.seed, 500)
    x, w, b = rand((t, k), g), rand((n, k), g, k ** -0.5), rand((n,), g, 0.02)
    rows, hist = [], []
    for name in [d for d in cfg.p.dtypes if d != "float32"] or ["bfloat16"]:
        dt = TORCH_DTYPES[name]
        xs, ws, bs = (v.to(dt) for v in (x, w, b))
        ref = F.gelu(F.linear(xs.double(), ws.double(), bs.double()), approximate="tanh")
        xd, wd, bd = xs.to(cfg.device), ws.to(cfg.device), bs.to(cfg.device)
        outs = (F.gelu(F.linear(xd, wd, bd), approximate="tanh"),
                gemm(xd, wd.t(), bd, epilogue="gelu")[0],
                gemm(xd, wd.t(), bd, epilogue="gelu_rounded")[0],
                ref.to(dt))
        for impl, o in zip(CLAIM_IMPLS, outs):
            rows.append({"dtype": name, "impl": impl, **stats(o.cpu(), ref, dt)})
            for lab, share in zip(bin_labels(), histogram(o.cpu(), ref, dt)):
                hist.append({"dtype": name, "impl": impl, "ulp_bin": lab, "share": share})
    for r in rows:
        rec.add("claim", r)
    return rows, hist


def model_check_rows(device: str, seed: int) -> list[dict]:
    """The fused tower against transformers' Siglip2VisionModel with the same weights (fp32, tiny
    config, full and mixed NaFlex grids with padding): max abs difference of both outputs and of
    every gradient, beside the largest output and gradient and the number of parameters whose
    gradient is not all zero (a difference is read against the size of what was compared)."""
    from workbook.models import siglip2 as S

    mc = S.config("tiny")
    hf = S.hf_model(mc, seed=seed, dtype=torch.float32, device=device)
    fz = S.from_hf(hf)
    rows = []
    for grids in (None, [(4, 4), (3, 5), (2, 2)]):
        pv, mask, ss = S.inputs(mc, 3, grids=grids, device=device, seed=seed)
        o = hf(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss)
        a, p = fz(pv, mask, ss)
        g = torch.Generator().manual_seed(seed)
        da = torch.randn(a.shape, generator=g).to(device)
        dp = torch.randn(p.shape, generator=g).to(device)
        torch.autograd.backward([o.last_hidden_state, o.pooler_output], [da, dp])
        torch.autograd.backward([a, p], [da, dp])
        hp = dict(hf.named_parameters())
        worst = max(((hp[k].grad - v.grad).abs().max().item(), k) for k, v in fz.named_parameters())
        # the sizes the differences are measured against: all-zero tensors would agree trivially
        scales = {"last_hidden_abs_max": o.last_hidden_state.abs().max().item(),
                  "grad_abs_max": max(v.grad.abs().max().item() for v in hp.values()),
                  "grads_nonzero": sum(bool(v.grad.any()) for v in hp.values()), "grads": len(hp)}
        rows.append({"grids": "all 4x4" if grids is None else "4x4, 3x5 (padded), 2x2 (padded)",
                     "last_hidden_max_abs_diff": (o.last_hidden_state - a).abs().max().item(),
                     "pooled_max_abs_diff": (o.pooler_output - p).abs().max().item(),
                     "worst_grad_max_abs_diff": worst[0], "worst_grad_parameter": worst[1],
                     **scales})
        hf.zero_grad()
        fz.zero_grad()
    return rows


def model_check_problems(rows: list[dict]) -> list[str]:
    """Sentences for model-check rows that compared (partly) all-zero tensors, where agreement means
    nothing."""
    out = []
    for r in rows:
        if r["last_hidden_abs_max"] == 0 or r["grads_nonzero"] < r["grads"]:
            out.append(f"model check ({r['grids']}): transformers' output is at most "
                       f"{r['last_hidden_abs_max']:g} and {r['grads'] - r['grads_nonzero']} of "
                       f"{r['grads']} gradients are all zero, so its differences "
                       f"({r['last_hidden_max_abs_diff']:g} output, "
                       f"{r['worst_grad_max_abs_diff']:g} gradients) do not show that the models "
                       "agree")
    return out


def model_check(cfg, rec) -> list[dict]:
    """The model-check section: its rows recorded as ``model_check``, and a note (also printed) for
    each comparison of all-zero tensors."""
    rows = model_check_rows(cfg.device, cfg.p.seed)
    for r in rows:
        rec.add("model_check", r)
    for why in model_check_problems(rows):
        rec.note(why)
        print("note:", why)
    return rows
