"""The triton_precision experiment: the SigLIP-2 Triton kernels' error against fp64, and their speed and memory.

Seed: fused Triton kernels for SigLIP-2 (so400m) whose fused MLP applies GELU on the fp32 accumulator and
was found *more* precise than eager; at batch 1024 x 256 patches bf16 forward 2099.66 -> 1273.94 ms,
backward 2899.58 -> 2971.07 ms, peak 19288 -> 12136 MiB. This module measures, for each kernel and the
whole encoder layer, in each dtype, forward and every gradient: error against an fp64 reference beside
eager PyTorch's in the same dtype (max/mean abs, mean/p99 ULP, share > 0.5 ULP) with the 2x verdict; it
reproduces the seed's precision claim with a control that rounds like eager; and on a GPU it times each
kernel against PyTorch and ``torch.compile`` and the full so400m stack against transformers (sdpa).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from workbook import checks, measure, precision
from workbook.targets import resolve_device
from workbook.errors import WorkbookError, bad_param
from workbook.params import as_list
from workbook.telemetry import Telemetry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KERNELS = ("layernorm", "linear_gelu", "mlp", "qkv", "block")
SPEED_KERNELS = ("layernorm", "linear_gelu", "mlp", "qkv")
VARIANTS = ("transformers-sdpa", "fused", "fused-store-norm", "transformers-sdpa-checkpointing")
K_RULE = 2.0  # FlashAttention/quack: err_kernel <= 2 x err_eager_same_dtype + atol


@dataclass
class Config:
    device: str
    device_reason: str
    device_name: str
    dtypes: list[str]
    kernels: list[str]
    tokens: int
    hidden: int
    intermediate: int
    heads: int
    claim_shape: list[int]
    speed_tokens: list[int]
    stack_config: str
    stack_batches: list[int]
    stack_variants: list[str]
    stack_rounds: int
    iterations: int
    warmup: int
    seed: int
    notes: list[str] = field(default_factory=list)


def _pos_ints(name, value, allow_empty=True):
    allowed = "a list of positive integers" + ("" if allow_empty else " (at least one)")
    return list(dict.fromkeys(checks.integers(name, value, 1, allowed, allow_empty=allow_empty)))


def _choices(name, value, allowed, allow_empty=False):
    xs = [str(x) for x in as_list(name, value)]
    if not xs and not allow_empty:
        raise bad_param(name, value, "a non-empty list from " + ", ".join(allowed))
    for x in xs:
        if x not in allowed:
            raise bad_param(name, value, "a list from " + ", ".join(allowed) + f" ({x!r} is not one)")
    return list(dict.fromkeys(xs))


def configure(*, device: str, dtypes, kernels, tokens: int, hidden: int, intermediate: int, heads: int,
              claim_shape, speed_tokens, stack_config: str, stack_batches, stack_variants, stack_rounds: int,
              iterations: int, warmup: int, seed: int) -> Config:
    """Check every parameter, then choose the device; one clear sentence on error."""
    checks.injected_are_parameters(configure)  # a misspelt `papermill -p` name is refused, not ignored
    from workbook.models.siglip2 import CONFIGS

    choice = resolve_device(device)
    if choice.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of workbook.kernels
    from workbook.kernels import runtime
    from workbook.kernels.layernorm import MAX_HIDDEN

    dts = _choices("dtypes", dtypes, tuple(DTYPES))
    ks = _choices("kernels", kernels, KERNELS)
    for name, v in (("tokens", tokens), ("hidden", hidden), ("intermediate", intermediate), ("heads", heads),
                    ("iterations", iterations), ("stack_rounds", stack_rounds)):
        checks.integer(name, v, 1, allowed="a positive integer")
    if stack_rounds > iterations:
        raise bad_param("stack_rounds", stack_rounds, f"at most iterations={iterations}, since each round times at "
                        "least one step of every stack variant")
    checks.integer("warmup", warmup, 0)
    if hidden > MAX_HIDDEN:
        raise bad_param("hidden", hidden, f"at most {MAX_HIDDEN}: the Triton LayerNorm keeps one row in a program")
    if "block" in ks and (hidden % heads or (hidden // heads) % 8):  # only the encoder-layer case has heads
        raise bad_param("heads", heads, f"a divisor of hidden={hidden} giving a head size that is a multiple of 8 "
                        f"for the block kernel (fused SDPA kernels need it; {hidden}/{heads} = {hidden / heads:g})")
    checks.seed(seed)
    shape_rule = "three positive integers [tokens, in_features, out_features]"
    claim = checks.integers("claim_shape", claim_shape, 1, shape_rule)
    if len(claim) != 3:
        raise bad_param("claim_shape", claim_shape, shape_rule)
    speed = _pos_ints("speed_tokens", speed_tokens)
    if stack_config not in CONFIGS:
        raise bad_param("stack_config", stack_config, "one of " + ", ".join(CONFIGS))
    batches = _pos_ints("stack_batches", stack_batches)
    variants = _choices("stack_variants", stack_variants, VARIANTS, allow_empty=True)
    why = runtime.unavailable_reason(choice.device)
    if why:
        raise WorkbookError(f"device={device!r} cannot run the Triton kernels here: {why}; restart the kernel "
                            "(or run through papermill) so the setting applies before the import.")
    cfg = Config(choice.device, choice.reason, choice.name, dts, ks, tokens, hidden, intermediate, heads, claim,
                 speed, stack_config, batches, variants, stack_rounds, iterations, warmup, seed)
    if choice.device == "cpu":
        cfg.notes.append("CPU: the kernels run in the Triton interpreter (numpy), so the precision figures are "
                         "real but nothing here is a speed; speed and memory need a GPU.")
    return cfg


# ------------------------------------------------------------------------------------------- precision
def _gen(cfg, salt):
    return torch.Generator().manual_seed(cfg.seed * 1000 + salt)


def _rand(shape, g, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def _kernel_case(cfg: Config, kernel: str):
    """(inputs in fp64, triton fn, reference fn) for one kernel; weights scaled by 1/sqrt(fan_in)."""
    from workbook.kernels import layernorm as LN
    from workbook.kernels import mlp as K

    g = _gen(cfg, KERNELS.index(kernel))
    t, h, i = cfg.tokens, cfg.hidden, cfg.intermediate
    if kernel == "layernorm":
        ins = dict(x=_rand((t, h), g, 2.0, 0.5), w=_rand((h,), g, 0.1, 1.0), b=_rand((h,), g, 0.1))
        return ins, (lambda x, w, b: LN.layer_norm(x, w, b, 1e-6)), (lambda x, w, b: LN.layer_norm_reference(x, w, b, 1e-6))
    if kernel == "linear_gelu":
        ins = dict(x=_rand((t, h), g), w=_rand((i, h), g, h ** -0.5), b=_rand((i,), g, 0.02))
        return ins, K.linear_gelu, K.linear_gelu_reference
    if kernel == "mlp":
        ins = dict(x=_rand((t, h), g), w1=_rand((i, h), g, h ** -0.5), b1=_rand((i,), g, 0.02),
                   w2=_rand((h, i), g, i ** -0.5), b2=_rand((h,), g, 0.02))
        return ins, K.mlp, K.mlp_reference
    if kernel == "qkv":
        ins = dict(x=_rand((t, h), g), w=_rand((3 * h, h), g, h ** -0.5), b=_rand((3 * h,), g, 0.02))
        return (ins, (lambda x, w, b: torch.cat(K.qkv(x, w, b, triton_gemm=True), -1)),
                (lambda x, w, b: torch.cat(K.qkv_reference(x, *_split3(w, b)), -1)))
    raise ValueError(kernel)


def _split3(w, b):
    ws, bs = w.chunk(3, 0), b.chunk(3, 0)
    return ws[0], bs[0], ws[1], bs[1], ws[2], bs[2]


def _atol(ref64: torch.Tensor, dtype) -> float:
    """One ULP of the largest reference value: the absolute slack of the 2x rule, scale-free."""
    return float(ref64.abs().max()) * torch.finfo(dtype).eps


def _run(fn, ins: dict, dtype, device, dy):
    ts = {k: v.detach().to(device=device, dtype=dtype).clone().requires_grad_(True) for k, v in ins.items()}
    out = fn(*ts.values())
    out.backward(dy.to(device=device, dtype=dtype))
    return {"output": out.detach(), **{f"d{k}": v.grad for k, v in ts.items()}}


def _block_case(cfg: Config):
    """The SigLIP-2 encoder layer: transformers' ``Siglip2EncoderLayer`` vs the fused layer, same weights."""
    from transformers.models.siglip2.modeling_siglip2 import Siglip2EncoderLayer

    from workbook.models.siglip2 import config

    c = config("tiny", hidden_size=cfg.hidden, intermediate_size=cfg.intermediate, num_attention_heads=cfg.heads)
    c._attn_implementation = "sdpa"
    torch.manual_seed(cfg.seed)
    hf = Siglip2EncoderLayer(c).double()
    with torch.no_grad():  # transformers initialises LayerNorm to (1, 0); perturb so their gradients are exercised
        for ln in (hf.layer_norm1, hf.layer_norm2):
            ln.weight.add_(0.1 * torch.randn_like(ln.weight))
            ln.bias.add_(0.1 * torch.randn_like(ln.bias))
    seq = 16
    x = _rand((max(1, cfg.tokens // seq), seq, cfg.hidden), _gen(cfg, 99))
    return c, hf, x


def _block_run(c, hf, x, impl, dtype, device, dy):
    import copy

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


def precision_rows(cfg: Config, kernel: str, dtype_name: str) -> list[dict]:
    """For the output and every gradient: triton and eager error against fp64, and the 2x verdict."""
    dtype, dev = DTYPES[dtype_name], cfg.device
    if kernel == "block":
        c, hf, x = _block_case(cfg)
        hf_r = hf.to(dtype).double()  # every run, the fp64 reference included, sees the same rounded weights
        x_r = x.to(dtype).double()
        dy = _rand(x.shape, _gen(cfg, 77)).to(dtype).double()
        ref = _block_run(c, hf_r, x_r, "eager", torch.float64, dev, dy)
        runs = {impl: _block_run(c, hf_r, x_r, impl, dtype, dev, dy) for impl in ("triton", "eager")}
    else:
        ins, tri, eag = _kernel_case(cfg, kernel)
        ins = {k: v.to(dtype).double() for k, v in ins.items()}  # the inputs every run sees, exactly
        probe = eag(*ins.values())
        dy = _rand(probe.shape, _gen(cfg, 55)).to(dtype).double()
        ref = _run(eag, ins, torch.float64, dev, dy)
        runs = {"triton": _run(tri, ins, dtype, dev, dy), "eager": _run(eag, ins, dtype, dev, dy)}
    rows = []
    for tensor, r64 in ref.items():
        if r64 is None:
            continue
        st = {impl: precision.stats(runs[impl][tensor], r64, dtype) for impl in runs}
        atol = _atol(r64, dtype)
        ok = precision.verdict(st["triton"], st["eager"], k=K_RULE, atol=atol)
        for impl in ("triton", "eager"):
            rows.append({"kernel": kernel, "dtype": dtype_name, "tensor": tensor, "impl": impl, **st[impl],
                         "atol": atol, "verdict": ("pass" if ok else "FAIL") if impl == "triton" else ""})
    return rows


def precision_study(cfg: Config, rec, progress=None) -> list[dict]:
    """:func:`precision_rows` for every kernel and dtype, each (kernel, dtype) one resumable group of ``rec``
    (a resumed run takes the ones its predecessor finished)."""
    rows = []
    for kernel in cfg.kernels:
        for dtype_name in cfg.dtypes:
            group = rec.done_group("precision", kernel=kernel, dtype=dtype_name)
            if group is None:
                group = precision_rows(cfg, kernel, dtype_name)
                rec.add_group("precision", group, kernel=kernel, dtype=dtype_name)
            rows += group
            if progress:
                progress.update(1)
    return rows


def precision_summary(rows: list[dict]) -> list[dict]:
    """One row per kernel x dtype: worst triton/eager max-error ratio, mean ULP of both on the output."""
    out = {}
    for r in rows:
        key = (r["kernel"], r["dtype"])
        s = out.setdefault(key, {"kernel": r["kernel"], "dtype": r["dtype"], "tensors": 0, "failed": 0,
                                 "worst_ratio_vs_eager": 0.0})
        if r["impl"] == "triton":
            s["tensors"] += 1
            s["failed"] += r["verdict"] == "FAIL"
            e = next(x for x in rows if x["kernel"] == r["kernel"] and x["dtype"] == r["dtype"]
                     and x["tensor"] == r["tensor"] and x["impl"] == "eager")
            ratio = r["max_abs"] / e["max_abs"] if e["max_abs"] > 0 else (0.0 if r["max_abs"] == 0 else float("inf"))
            s["worst_ratio_vs_eager"] = max(s["worst_ratio_vs_eager"], ratio)
            if r["tensor"] == "output":
                s["output_mean_ulp_triton"] = r["mean_ulp"]
                s["output_mean_ulp_eager"] = e["mean_ulp"]
    for s in out.values():
        s["verdict"] = "pass" if s["failed"] == 0 else f"FAIL ({s['failed']} tensors)"
    return list(out.values())


# ------------------------------------------------------------------------------------ the seed's claim
def claim_rows(cfg: Config) -> tuple[list[dict], list[dict]]:
    """fc1 + GELU forward in bf16/fp16: eager, Triton (GELU on fp32 accumulator), Triton rounding like eager."""
    from workbook.kernels.gemm import gemm

    t, k, n = cfg.claim_shape
    g = _gen(cfg, 500)
    x, w, b = _rand((t, k), g), _rand((n, k), g, k ** -0.5), _rand((n,), g, 0.02)
    rows, hist = [], []
    for name in [d for d in cfg.dtypes if d != "float32"] or ["bfloat16"]:
        dt = DTYPES[name]
        xs, ws, bs = (v.to(dt) for v in (x, w, b))
        ref = F.gelu(F.linear(xs.double(), ws.double(), bs.double()), approximate="tanh")
        dev = cfg.device
        xd, wd, bd = xs.to(dev), ws.to(dev), bs.to(dev)
        outs = {
            "eager F.gelu(F.linear)": F.gelu(F.linear(xd, wd, bd), approximate="tanh"),
            "triton, GELU on fp32 accumulator": gemm(xd, wd.t(), bd, epilogue="gelu")[0],
            "triton control, pre-activation rounded like eager": gemm(xd, wd.t(), bd, epilogue="gelu_rounded")[0],
            "fp64 result rounded once (ideal)": ref.to(dt),
        }
        for impl, o in outs.items():
            rows.append({"dtype": name, "impl": impl, **precision.stats(o.cpu(), ref, dt)})
            for lab, share in zip(precision.bin_labels(), precision.histogram(o.cpu(), ref, dt)):
                hist.append({"dtype": name, "impl": impl, "ulp_bin": lab, "share": share})
    return rows, hist


def ulp_histograms(cfg: Config, kernel: str = "mlp") -> list[dict]:
    """Distribution of output ULP errors, triton and eager, per dtype (for the error-distribution plot)."""
    out = []
    for name in cfg.dtypes:
        dt = DTYPES[name]
        if kernel == "block":
            continue
        ins, tri, eag = _kernel_case(cfg, kernel)
        ins = {k: v.to(dt).double() for k, v in ins.items()}
        with torch.no_grad():
            ref = eag(*ins.values())
            for impl, fn in (("triton", tri), ("eager", eag)):
                o = fn(*[v.to(device=cfg.device, dtype=dt) for v in ins.values()]).cpu()
                for lab, share in zip(precision.bin_labels(), precision.histogram(o, ref, dt)):
                    out.append({"kernel": kernel, "dtype": name, "impl": impl, "ulp_bin": lab, "share": share})
    return out


# ------------------------------------------------------------------------------------------------ speed
def _timing(fn, cfg) -> tuple[float, float, float]:
    """(device ms, host ms to queue a call, share of calls the host was late for): a kernel call of well under a
    millisecond can take the host longer to queue than the GPU to run, so the two are timed apart."""
    t = measure.time_queued(fn, warmup=cfg.warmup, iters=cfg.iterations)
    return t.device.median_ms, t.host.median_ms, t.host_bound_share


def speed_rows(cfg: Config, dtype_name: str = "bfloat16", progress=None, rec=None) -> list[dict]:
    """Each kernel vs eager and torch.compile across token counts: forward and forward+backward device ms (the
    host queued ahead, :func:`workbook.measure.time_queued`) beside the host's ms to queue one call, peak MiB.
    With ``rec``, each (kernel, tokens) is recorded as one resumable group as soon as it is measured."""
    if cfg.device != "cuda":
        return []
    dt = DTYPES[dtype_name]
    rows = []
    impls = ("triton", "eager", "torch.compile")
    for kernel in [k for k in cfg.kernels if k in SPEED_KERNELS]:
        ins0 = None
        for tokens in cfg.speed_tokens:
            done = rec.done_group("kernel_speed", timed=True, kernel=kernel, tokens=tokens) if rec is not None else None
            if done is not None:  # measured by the unfinished run this one resumes
                rows.extend(done)
                if progress:
                    progress.update(len(impls))
                continue
            if ins0 is None:
                ins0, tri, eag = _kernel_case(cfg, kernel)
                compiled = torch.compile(eag)
            group = []
            scale = {k: (tokens if v.shape[0] == cfg.tokens and k == "x" else None) for k, v in ins0.items()}
            g = torch.Generator(device="cuda").manual_seed(cfg.seed)
            ins = {}
            for k, v in ins0.items():
                shape = (tokens, *v.shape[1:]) if scale[k] else v.shape
                ins[k] = (torch.randn(shape, device="cuda", dtype=dt, generator=g) * float(v.std())).requires_grad_(True)
            for impl, fn in zip(impls, (tri, eag, compiled)):
                fwd = lambda fn=fn: fn(*ins.values())  # noqa: E731
                out = fwd()
                dy = torch.randn_like(out)

                def step(fn=fn):
                    o = fn(*ins.values())
                    o.backward(dy)
                    for v in ins.values():
                        v.grad = None
                try:
                    with torch.no_grad():
                        f_ms, f_host, f_late = _timing(fwd, cfg)
                    step()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fb_ms, fb_host, fb_late = _timing(step, cfg)
                    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                    row = {"kernel": kernel, "tokens": tokens, "impl": impl, "dtype": dtype_name,
                           "forward_ms": f_ms, "fwd_bwd_ms": fb_ms, "forward_host_ms": f_host,
                           "fwd_bwd_host_ms": fb_host, "fwd_bwd_extra_peak_mib": peak}
                    if f_late or fb_late:  # some device times include waits for the host: say so in the row
                        row["host_late_share"] = max(f_late, fb_late)
                    group.append(row)
                except torch.OutOfMemoryError:
                    group.append({"kernel": kernel, "tokens": tokens, "impl": impl, "dtype": dtype_name,
                                  "status": "out of memory"})
                if progress:
                    progress.update(1)
                del out, dy
            del ins
            torch.cuda.empty_cache()
            rows.extend(group)
            if rec is not None:
                rec.add_group("kernel_speed", group, kernel=kernel, tokens=tokens)
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """triton against eager and torch.compile for each kernel and token count (ratios > 1: triton faster)."""
    by = {(r["kernel"], r["tokens"], r["impl"]): r for r in rows if "forward_ms" in r}
    out = []
    for (kernel, tokens, impl), r in by.items():
        if impl != "triton":
            continue
        row = {"kernel": kernel, "tokens": tokens}
        for other in ("eager", "torch.compile"):
            o = by.get((kernel, tokens, other))
            if o:
                row[f"fwd_speedup_vs_{other}"] = o["forward_ms"] / r["forward_ms"]
                row[f"fwd_bwd_speedup_vs_{other}"] = o["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ the full stack
def stack_step(variant: str, cfg_model, batch: int, device: str, dtype, seed: int):
    """(model, forward fn returning (last_hidden, pooled)) for one stack variant at one batch size."""
    from workbook.models import siglip2 as S

    hf = S.hf_model(cfg_model, seed=seed, dtype=dtype, device=device)
    pv, mask, ss = S.inputs(cfg_model, batch, dtype=dtype, device=device, seed=seed)
    if variant.startswith("transformers"):
        if variant.endswith("checkpointing"):
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            hf.train()

        def fwd():
            o = hf(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss)
            return o.last_hidden_state, o.pooler_output
        return hf, fwd
    opts = S.FusedOptions(recompute_norm=variant != "fused-store-norm")
    model = S.from_hf(hf, opts)
    del hf
    return model, (lambda: model(pv, mask, ss))


def timed_steps(fwd, model, iterations: int, f: list, b: list) -> None:
    """``iterations`` training steps, each synchronised, appending forward and backward ms (CUDA events)."""
    for _ in range(iterations):
        e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        e[0].record()
        a, p = fwd()
        e[1].record()
        torch.autograd.backward([a, p], [torch.ones_like(a), torch.ones_like(p)])
        e[2].record()
        torch.cuda.synchronize()
        f.append(e[0].elapsed_time(e[1]))
        b.append(e[1].elapsed_time(e[2]))
        del a, p
        model.zero_grad(set_to_none=True)


def round_sizes(iterations: int, rounds: int) -> list[int]:
    """Timed steps of each variant in each round: ``iterations`` split as evenly as the rounds allow."""
    return [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]


def stack_rows(cfg: Config, rec=None, progress=None) -> list[dict]:
    """Forward, backward, forward+backward ms and peak GB of the whole vision stack per variant and batch.

    A training step in bf16: forward of the NaFlex tower (embeddings, encoder, post-LayerNorm, pooling head),
    then backward of both outputs. At each batch size the variants take turns (:func:`stack_batch`), so that
    none of them is timed on a cooler chip than the others. Out-of-memory is recorded as such and the others go
    on. Each batch size is one resumable group of ``rec``: a resumed run takes the ones its predecessor finished
    (on the same machine). ``progress`` advances once per variant and round.
    """
    from workbook.models import siglip2 as S

    if cfg.device != "cuda":
        return []
    mc = S.config(cfg.stack_config)
    rows = []
    for batch in cfg.stack_batches:
        done = rec.done_group("stack", timed=True, batch=batch) if rec is not None else None
        if done is None:  # not measured by the unfinished run this one resumes
            done = stack_batch(cfg, mc, batch, progress)
            if rec is not None:
                rec.add_group("stack", done, batch=batch)
        elif progress:
            progress.update(len(cfg.stack_variants) * cfg.stack_rounds)
        rows.extend(done)
    return rows


def stack_batch(cfg: Config, mc, batch: int, progress=None) -> list[dict]:
    """Every variant of ``cfg.stack_variants`` at one batch size, their timed steps interleaved.

    Why interleaved: a dense bf16 step holds an H100/H200 at its power limit, where the clock follows the chip's
    temperature (a hotter chip leaks more). Timed one after the other, the second variant would run on a chip
    the first had heated. So the ``cfg.iterations`` timed steps of each variant are split over
    ``cfg.stack_rounds`` rounds whose order alternates (A B, B A, A B, ...: a drift in time weighs on every
    variant alike). The first turn of each variant builds it and runs ``cfg.warmup`` untimed steps; every later
    turn that follows another variant runs one untimed step first, after the allocator's cache is emptied, so
    the timed steps find their memory as in a run of their own. Every variant's model stays on the GPU
    meanwhile; a row's ``peak_gb`` is its own (weights, inputs, activations and gradients), not the others'.
    Telemetry covers a variant's timed steps only.
    """
    dt = torch.bfloat16
    variants = cfg.stack_variants
    rows = {v: {"variant": v, "batch": batch, "patches": mc.num_patches, "dtype": "bfloat16",
                "rounds": cfg.stack_rounds} for v in variants}
    sizes = round_sizes(cfg.iterations, cfg.stack_rounds)
    models = {}  # variant -> (model, forward fn), while it takes turns
    built = {}  # variant -> bytes of its weights and inputs, as built
    kept = {}  # variant -> bytes it keeps on the GPU between steps (built + what its first steps left)
    f = {v: [] for v in variants}
    b = {v: [] for v in variants}
    peak = dict.fromkeys(variants, 0)
    tms = {}
    gone = set()  # out of memory: left out of later rounds
    last = None
    for r, k in enumerate(sizes):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            if v in gone:
                continue
            oom = False
            try:
                if v not in models:  # its first turn: build and warm up (compiles and autotunes)
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    before = torch.cuda.memory_allocated()
                    models[v] = stack_step(v, mc, batch, cfg.device, dt, cfg.seed)
                    built[v] = torch.cuda.memory_allocated() - before
                    timed_steps(models[v][1], models[v][0], max(1, cfg.warmup), [], [])
                    torch.cuda.synchronize()
                    kept[v] = torch.cuda.memory_allocated() - before
                    tms[v] = Telemetry(torch.cuda.current_device())
                elif last != v:  # another variant ran since: its cached blocks go, and one step untimed
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    timed_steps(models[v][1], models[v][0], 1, [], [])
                    torch.cuda.synchronize()
                last = v
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                with tms[v]:
                    timed_steps(models[v][1], models[v][0], k, f[v], b[v])
                peak[v] = max(peak[v], torch.cuda.max_memory_allocated() - base + kept[v])
            except torch.OutOfMemoryError:
                others = sum(n for w, n in kept.items() if w != v and w in models)
                where = f" in round {r + 1} of {len(sizes)}, its timed steps so far dropped" if r else ""
                held = f" ({others / 1e9:.1f} GB of it the other variants' weights and inputs)" if others > 0.05e9 \
                    else ""
                total = torch.cuda.get_device_properties(0).total_memory / 1e9
                rows[v].update(status="out of memory", note=f"out of memory at {total:.0f} GB{held}{where}")
                gone.add(v)
                models.pop(v, None)
                last = None
                oom = True
            if oom:  # outside the handler, whose traceback holds the failed step's tensors
                torch.cuda.empty_cache()
                if progress:
                    progress.update(len(sizes) - r - 1)  # the turns it will not take
            if progress:
                progress.update(1)
    for v in variants:
        if v in gone:
            continue
        fb = [x + y for x, y in zip(f[v], b[v])]
        rows[v].update(status="ok", forward_ms=measure.percentile(f[v], 50), backward_ms=measure.percentile(b[v], 50),
                       fwd_bwd_ms=measure.percentile(fb, 50), fwd_bwd_p10_ms=measure.percentile(fb, 10),
                       fwd_bwd_p90_ms=measure.percentile(fb, 90), peak_gb=peak[v] / 1e9,
                       weights_and_inputs_gb=built[v] / 1e9, iterations=len(fb))
        rows[v].update(tms[v].summary(len(fb)) or {"telemetry": f"not measured: {tms[v].unavailable}"})
    models.clear()
    torch.cuda.empty_cache()
    return [rows[v] for v in variants]


def stack_ratios(rows: list[dict], baseline: str = "transformers-sdpa") -> list[dict]:
    """Each variant against the baseline at the same batch: speed-up (>1 faster) and memory ratio (<1 less);
    where both rows have GPU telemetry (a positive energy and clock), energy per step and mean SM clock as ratios
    too (<1: less, lower)."""
    base = {r["batch"]: r for r in rows if r["variant"] == baseline and r.get("status") == "ok"}
    out = []
    for r in rows:
        if r["variant"] == baseline or r.get("status") != "ok" or r["batch"] not in base:
            continue
        b = base[r["batch"]]
        row = {"variant": r["variant"], "batch": r["batch"],
               "forward_speedup": b["forward_ms"] / r["forward_ms"],
               "backward_speedup": b["backward_ms"] / r["backward_ms"],
               "fwd_bwd_speedup": b["fwd_bwd_ms"] / r["fwd_bwd_ms"],
               "peak_memory_ratio": r["peak_gb"] / b["peak_gb"]}
        if all(x.get("energy_j_per_step", 0) > 0 and x.get("sm_clock_mhz", 0) > 0 for x in (b, r)):
            # the GPU's board energy and mean SM clock over each side's timed steps (workbook.telemetry)
            row["energy_ratio"] = r["energy_j_per_step"] / b["energy_j_per_step"]
            row["sm_clock_ratio"] = r["sm_clock_mhz"] / b["sm_clock_mhz"]
        if all(k in x for x in (b, r) for k in ("fwd_bwd_p10_ms", "fwd_bwd_p90_ms")):
            # how far the step-to-step spread moves the ratio: the slow tenth of one against the fast tenth of the other
            row["fwd_bwd_speedup_low"] = b["fwd_bwd_p10_ms"] / r["fwd_bwd_p90_ms"]
            row["fwd_bwd_speedup_high"] = b["fwd_bwd_p90_ms"] / r["fwd_bwd_p10_ms"]
        out.append(row)
    return out


def power_note(rows: list[dict]) -> str | None:
    """One sentence for the report when stack rows ran with the GPU held at its power limit, else None.

    At the cap the driver trades clock for power, so a step with fewer memory-bound gaps runs the same GEMMs
    at a lower clock; the sentence gives each variant's mean SM clock and energy per step so a reader sees
    whether a speed ratio is one of work or of clock."""
    ok = [r for r in rows if r.get("status") == "ok" and "power_capped_share" in r]
    capped = [r for r in ok if r["power_capped_share"] >= 0.5]
    if not capped:
        return None
    limit = next((r["power_limit_w"] for r in capped if "power_limit_w" in r), None)

    def temp(r):  # a hotter chip leaks more power, so at the cap it gets a lower clock for the same work
        return f", {r['gpu_temp_start_c']:.0f}-{r['gpu_temp_max_c']:.0f} C" if "gpu_temp_max_c" in r else ""

    each = "; ".join(f"{r['variant']} at batch {r['batch']}: {r['sm_clock_mhz']:.0f} MHz, {r['power_w']:.0f} W, "
                     f"{r['energy_j_per_step']:.0f} J a step{temp(r)}" for r in capped)
    temps = ", GPU temperature from the first sample to the highest" if any(temp(r) for r in capped) else ""
    return (f"{len(capped)} of {len(ok)} stack rows ran with the GPU at its power limit"
            + (f" ({limit:.0f} W)" if limit else "") + " for at least half of their samples, so the driver lowered "
            f"the SM clock and the clock, not only the work, sets their times (mean SM clock, mean power, energy "
            f"per step{temps}: {each}).")


BAR = {"batch": 256, "fwd_bwd_speedup": 1.3, "peak_memory_ratio": 0.7}

# transformers resizes the NaFlex position table image by image up to 5.23 (per image: a .tolist() of its
# grid, a host sync when the shapes live on the GPU, an antialiased F.interpolate and two slice writes, and
# the interpolation's backward); 5.24 made it one batched product. On an H100 the so400m embeddings'
# forward+backward at batch 256 was many times slower with 5.17 than with 5.25, so which release runs the
# baseline moves the stack's speed-up more than any kernel here does (outputs/reference/nvidia-h100/README.md).
BATCHED_RESIZE_SINCE = "5.24"


def transformers_version() -> str:
    """The installed transformers release (the stack's baseline)."""
    import transformers

    return transformers.__version__


def resizes_per_image(version: str) -> bool:
    """Whether this transformers release resizes the NaFlex position table image by image (before 5.24)."""
    def major_minor(v: str) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", v)
        if not m:
            raise ValueError(f"not a transformers version: {v!r}")
        return int(m[1]), int(m[2])

    return major_minor(version) < major_minor(BATCHED_RESIZE_SINCE)


def baseline_note(rows: list[dict], version: str | None = None) -> str | None:
    """A sentence for the top of the report when stack ``rows`` timed a transformers variant and that
    transformers (``version``, else the installed one) resizes positions per image; else None."""
    if not any(r["variant"].startswith("transformers") for r in rows):
        return None
    version = version or transformers_version()
    if not resizes_per_image(version):
        return None
    return (f"The stack's baseline is transformers {version}, whose NaFlex position resize runs image by image "
            f"(a host sync, an interpolation and its backward per image; transformers {BATCHED_RESIZE_SINCE} "
            "made it one batched product). That loop is part of its step here, and the fused model does not "
            f"spend it, so the speed-up is larger than against transformers {BATCHED_RESIZE_SINCE} or later "
            "(compare a run with a newer transformers on the same machine).")


def bar_check(ratios: list[dict], cfg: Config, baseline_version: str | None = None) -> list[dict]:
    """The issue's claimed bar on H100/H200, so400m, batch 256 x 256, bf16: fwd+bwd >= 1.3x, peak <= 0.7x.

    The verdict compares medians; the speed row also gives the ratio's spread over the steps measured, and
    says when the bar falls inside it (a verdict that another machine, or another run, may turn). Both rows
    name the baseline's transformers release (``baseline_version``, else the installed one), and the speed row
    says when that release resizes positions image by image (see :data:`BATCHED_RESIZE_SINCE`)."""
    if cfg.stack_config != "so400m":
        return []
    version = baseline_version or transformers_version()
    baseline = f"transformers {version}" + (" (per-image position resize)" if resizes_per_image(version) else "")
    out = []
    for r in ratios:
        if r["batch"] != BAR["batch"] or r["variant"] != "fused":
            continue
        speed = {"check": "fwd+bwd speed-up vs transformers sdpa", "bar": f">= {BAR['fwd_bwd_speedup']}",
                 "measured": r["fwd_bwd_speedup"],
                 "met": "yes" if r["fwd_bwd_speedup"] >= BAR["fwd_bwd_speedup"] else "no", "baseline": baseline}
        if "fwd_bwd_speedup_low" in r:
            low, high = r["fwd_bwd_speedup_low"], r["fwd_bwd_speedup_high"]
            speed["spread"] = f"{low:.2f}-{high:.2f} (p10-p90 of the steps)"
            if low < BAR["fwd_bwd_speedup"] <= high:  # the verdict is the medians'; say when the spread spans the bar
                speed["met"] += ", the bar lies within the spread"
        out.append(speed)
        out.append({"check": "peak memory vs transformers sdpa", "bar": f"<= {BAR['peak_memory_ratio']}",
                    "measured": r["peak_memory_ratio"],
                    "met": "yes" if r["peak_memory_ratio"] <= BAR["peak_memory_ratio"] else "no",
                    "baseline": f"transformers {version}"})
    return out


def model_check(cfg: Config) -> list[dict]:
    """The fused tower against transformers' Siglip2VisionModel with the same weights (fp32, tiny config,
    mixed NaFlex grids with padding): max abs difference of both outputs and of every gradient, beside the
    largest output and gradient and the number of parameters whose gradient is not all zero (so that a
    difference is read against the size of what was compared)."""
    from workbook.models import siglip2 as S

    mc = S.config("tiny")
    hf = S.hf_model(mc, seed=cfg.seed, dtype=torch.float32, device=cfg.device)
    fz = S.from_hf(hf)
    rows = []
    for grids in (None, [(4, 4), (3, 5), (2, 2)]):
        pv, mask, ss = S.inputs(mc, 3, grids=grids, device=cfg.device, seed=cfg.seed)
        o = hf(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss)
        a, p = fz(pv, mask, ss)
        g = torch.Generator().manual_seed(cfg.seed)
        da = torch.randn(a.shape, generator=g).to(cfg.device)
        dp = torch.randn(p.shape, generator=g).to(cfg.device)
        torch.autograd.backward([o.last_hidden_state, o.pooler_output], [da, dp])
        torch.autograd.backward([a, p], [da, dp])
        hp = dict(hf.named_parameters())
        worst = max(((hp[k].grad - v.grad).abs().max().item(), k) for k, v in fz.named_parameters())
        # the sizes the differences are measured against: a zero difference of all-zero tensors checks nothing
        scales = {"last_hidden_abs_max": o.last_hidden_state.abs().max().item(),
                  "grad_abs_max": max(v.grad.abs().max().item() for v in hp.values()),
                  "grads_nonzero": sum(bool(v.grad.any()) for v in hp.values()), "grads": len(hp)}
        rows.append({"grids": "all 4x4" if grids is None else "4x4, 3x5 (padded), 2x2 (padded)",
                     "last_hidden_max_abs_diff": (o.last_hidden_state - a).abs().max().item(),
                     "pooled_max_abs_diff": (o.pooler_output - p).abs().max().item(),
                     "worst_grad_max_abs_diff": worst[0], "worst_grad_parameter": worst[1], **scales})
        hf.zero_grad()
        fz.zero_grad()
    return rows


def model_check_problems(rows: list[dict]) -> list[str]:
    """Sentences for model-check rows that compared (partly) all-zero tensors, where agreement means nothing."""
    out = []
    for r in rows:
        if r["last_hidden_abs_max"] == 0 or r["grads_nonzero"] < r["grads"]:
            out.append(f"model check ({r['grids']}): transformers' output is at most {r['last_hidden_abs_max']:g} "
                       f"and {r['grads'] - r['grads_nonzero']} of {r['grads']} gradients are all zero, so its "
                       f"differences ({r['last_hidden_max_abs_diff']:g} output, {r['worst_grad_max_abs_diff']:g} "
                       "gradients) do not show that the models agree")
    return out


def headline(rec, summary: list[dict], claim: list[dict], stack: list[dict]) -> None:
    """The few figures `workbook list` and the index show."""
    fails = [f"{s['kernel']}/{s['dtype']}" for s in summary if s["failed"]]
    figures = {"precision_verdict": "all pass (2x rule)" if not fails else "FAIL: " + ", ".join(fails)}
    for r in claim:
        if r["dtype"] == "bfloat16" and r["impl"].startswith("eager"):
            figures["fc1_gelu_bf16_mean_ulp_eager"] = r["mean_ulp"]
        if r["dtype"] == "bfloat16" and r["impl"].startswith("triton, GELU"):
            figures["fc1_gelu_bf16_mean_ulp_triton"] = r["mean_ulp"]
    for r in stack_ratios(stack) if stack else []:
        if r["variant"] == "fused":
            figures[f"stack_b{r['batch']}_fwd_bwd_speedup"] = r["fwd_bwd_speedup"]
            figures[f"stack_b{r['batch']}_peak_memory_ratio"] = r["peak_memory_ratio"]
            if "energy_ratio" in r:
                figures[f"stack_b{r['batch']}_energy_ratio"] = r["energy_ratio"]
    rec.headline(**figures)
