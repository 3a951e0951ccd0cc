"""The pos_interp experiment: does a 4-point bilinear gather beat SigLIP's bicubic, and at what
cost?

The seed claims that swapping SigLIP's position-embedding interpolation from bicubic to vLLM's
vectorised 4-point bilinear gather cuts time-to-first-token with little loss of fidelity. Without
a vLLM server, this module measures what can be measured: per-call speed, the vision tower's
forward with each implementation (an upper bound on any TTFT saving, since TTFT also holds the
language model's prefill), and fidelity on tables and pooled embeddings, with the kernel change and
the corner-alignment change measured apart. The notebook narrates; the work is here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbook import interp, measure, metrics, targets
from workbook.console import progress as tqdm
from workbook.errors import bad_param
from workbook.experiments.pos_interp_claims import (  # noqa: F401 - the notebook's last step
    CLAIMS, COSINE_CLAIM, claim_check,
)
from workbook.spec import Values
from workbook.specs.pos_interp import DEVICES, DTYPES as DTYPE_NAMES, PX

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

# The 2x2 design that separates the two changes the seed's switch makes at once.
EFFECTS = [
    ("kernel (align_corners=False)", "hf_bicubic", "bilinear"),
    ("kernel (align_corners=True)", "bicubic_ac", "bilinear_ac"),
    ("alignment (bicubic)", "hf_bicubic", "bicubic_ac"),
    ("alignment (bilinear)", "bilinear", "bilinear_ac"),
    ("both: hf_bicubic -> gather4", "hf_bicubic", "gather4"),
]


@dataclass
class Config:
    p: Values  # the checked parameters
    target: targets.Target
    implementations: list[str]  # as given, then the reference and the candidate if missing
    resolutions: list[int]  # the lists without repeats, in the order given
    tower_resolutions: list[int]
    dtypes: list[str]
    batch_sizes: list[int]
    patch: int
    notes: list[str] = field(default_factory=list)


def configure(p: Values) -> Config:
    """The rules between parameters, the model and the machine; a bad combination is one sentence
    here, before anything is built."""
    from workbook.models import patch_size

    impls = list(dict.fromkeys([*p.implementations, p.reference, p.candidate]))
    patch = patch_size(p.model)  # unknown names raise with the closest names
    for name in ("resolutions", "tower_resolutions"):
        if any(r < patch for r in p[name]):
            raise bad_param(name, p[name], f"{PX} ({patch} px for {p.model})")
    if p.pretrained and p.checkpoint:
        raise bad_param("pretrained", p.pretrained, "empty when a checkpoint is given")
    if p.pretrained and p.depth:
        raise bad_param("depth", p.depth, "0 (as configured) when loading pretrained weights")
    if p.checkpoint:
        from workbook.models import load_pos_table

        load_pos_table(p.checkpoint)  # raises if the file is missing or holds no position table
    target = targets.resolve(p.device, param="device", choices=DEVICES)
    cfg = Config(p, target, impls, _unique(p.resolutions), _unique(p.tower_resolutions),
                 _unique(p.dtypes), _unique(p.batch_sizes), patch)
    if target.name == "cpu" and "float16" in [*cfg.dtypes, p.tower_dtype]:
        cfg.notes.append("float16 on the CPU runs through slow fallback kernels; its timings say "
                         "little about a GPU.")
    return cfg


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def describe(cfg: Config) -> list[dict]:
    p, t = cfg.p, cfg.target
    weights = p.checkpoint or (f"pretrained {p.pretrained}" if p.pretrained
                               else f"seeded random (seed {p.seed})")
    return [{"parameter": k, "value": v} for k, v in (
        ("device", f"{t.name} ({t.device_name}; {t.reason})"),
        ("model", f"{p.model}, patch {cfg.patch}, depth "
                  f"{'as configured' if not p.depth else p.depth}"),
        ("weights", weights),
        ("reference -> candidate", f"{p.reference} -> {p.candidate}"),
        ("implementations", ", ".join(cfg.implementations)),
        ("resolutions (px)", ", ".join(map(str, cfg.resolutions))),
        ("tower resolutions (px)", ", ".join(map(str, cfg.tower_resolutions))),
        ("dtypes / tower dtype", f"{', '.join(cfg.dtypes)} / {p.tower_dtype}"),
        ("batch sizes", ", ".join(map(str, cfg.batch_sizes))),
        ("iterations / warm-up", f"{p.iterations} / {p.warmup}"),
    )]


def describe_tower(tower) -> list[dict]:
    return [{"parameter": "tower", "value": f"{tower.timm_name}: {tower.params / 1e6:.1f} M "
             f"parameters, width {tower.width}, depth {tower.depth}, native grid "
             f"{tower.grid}x{tower.grid}; weights: {tower.weights}"}]


def start_record(cfg: Config, tower, rec) -> None:
    """What every reader of the results must know, written before any measurement."""
    rec.set(device=cfg.target.name, device_name=cfg.target.device_name,
            device_reason=cfg.target.reason, model=cfg.p.model, timm_model=tower.timm_name,
            weights=tower.weights, tower_params=tower.params, tower_depth=tower.depth,
            native_grid=tower.grid, patch=tower.patch)
    rec.not_measured("TTFT and TPOT under a vLLM server", "this workbook has no vLLM; the vision "
                     "tower's forward is measured instead, an upper bound on the TTFT saving")
    if not (cfg.p.checkpoint or cfg.p.pretrained):
        rec.note(f"Seeded random weights (seed {cfg.p.seed}): speed is representative, "
                 "pooled-embedding fidelity describes an untrained tower.")
    if cfg.p.depth:
        rec.note(f"The tower has {cfg.p.depth} block(s) instead of its configured depth (parameter "
                 "depth); the interpolation's share of the forward is larger than in the full "
                 "model.")
    for n in cfg.notes:
        rec.note(n)


def build(cfg: Config):
    from workbook.models import build_tower

    p = cfg.p
    return build_tower(p.model, pretrained=p.pretrained, checkpoint=p.checkpoint, depth=p.depth,
                       seed=p.seed)


def tables(cfg: Config, tower) -> dict[str, torch.Tensor]:
    """The tables fidelity is measured on: random, smooth 2-D sin-cos, the tower's own, a
    checkpoint's."""
    from workbook.models import load_pos_table, pos_table

    n, d = tower.grid, tower.width
    out = {"random": interp.random_table(n, d, seed=cfg.p.seed),
           "sincos": interp.sincos_table(n, d)}
    if cfg.p.checkpoint:
        out["checkpoint"], _ = load_pos_table(cfg.p.checkpoint)
    elif cfg.p.pretrained:
        out["pretrained"] = pos_table(tower).float().clone()
    return out


def _grid(cfg: Config, res: int) -> int:
    return interp.grid_for(res, cfg.patch)


def table_fidelity(cfg: Config, tabs: dict, rec) -> list[dict]:
    """Each implementation in each dtype against the reference's exact (float64) result, per
    position."""
    rows = []
    dev = cfg.target.name
    for tname, tab in tqdm(tabs.items(), desc="table fidelity"):
        n = interp.grid_side(tab)
        for res in cfg.resolutions:
            g = _grid(cfg, res)
            ref = interp.interpolate(cfg.p.reference, tab.to(dev, torch.float64), (g, g))
            for dt in cfg.dtypes:
                for name in cfg.implementations:
                    out = interp.interpolate(name, tab.to(dev, DTYPES[dt]), (g, g))
                    m = metrics.compare(out, ref)
                    norms = out.double().norm(dim=-1).mean() / ref.norm(dim=-1).mean()
                    row = {"table": tname, "resolution": res, "grid": f"{n}->{g}", "dtype": dt,
                           "implementation": name, "max_abs_diff": m["max_abs_diff"],
                           "cosine_min": m["cosine_min"], "cosine_mean": m["cosine_mean"],
                           "norm_ratio": norms.item()}
                    rec.add("table_fidelity", row)
                    rows.append(row)
    return rows


def effects(cfg: Config, tabs: dict, rec) -> list[dict]:
    """Kernel vs alignment, each measured with the other held fixed, in float64 (semantics only)."""
    rows = []
    names = {x for e in EFFECTS for x in e[1:]}
    for tname, tab in tabs.items():
        for res in cfg.resolutions:
            g = _grid(cfg, res)
            outs = {k: interp.interpolate(k, tab.double(), (g, g)) for k in names}
            for effect, a, b in EFFECTS:
                m = metrics.compare(outs[b], outs[a])
                row = {"table": tname, "resolution": res, "effect": effect, "from": a, "to": b,
                       "cosine_min": m["cosine_min"], "cosine_mean": m["cosine_mean"],
                       "max_abs_diff": m["max_abs_diff"]}
                rec.add("effects", row)
                rows.append(row)
    return rows


def interp_speed(cfg: Config, tower, rec) -> list[dict]:
    """Per-call time of each implementation on the tower's table shape, per resolution and dtype."""
    from workbook.models import pos_table

    rows = []
    dev = cfg.target.name
    base = pos_table(tower).detach().to(dev, torch.float32)
    grids = sorted(set(cfg.resolutions) | set(cfg.tower_resolutions))
    if dev == "cuda":
        measure.spin(lambda: interp.interpolate(cfg.p.reference, base, (64, 64)), device=dev,
                     seconds=2.0)
    for dt in dict.fromkeys(cfg.dtypes + [cfg.p.tower_dtype]):
        tab = base.to(DTYPES[dt])
        for res in tqdm(grids, desc=f"interpolation speed {dt}"):
            done = rec.done_group("interp_speed", timed=True, dtype=dt, resolution=res)
            if done is not None:  # timed by the unfinished run this one resumes
                rows.extend(done)
                continue
            g = _grid(cfg, res)
            fns = {name: (lambda name=name: interp.interpolate(name, tab, (g, g)))
                   for name in cfg.implementations}
            times = measure.time_interleaved(fns, device=dev, warmup=max(cfg.p.warmup, 1),
                                             iters=cfg.p.iterations * 5)
            group = [{"resolution": res, "grid": g, "dtype": dt, "implementation": name,
                      "native": g == tower.grid, **t.as_dict("interp_")}
                     for name, t in times.items()]
            rec.add_group("interp_speed", group, dtype=dt, resolution=res)
            rows.extend(group)
    return rows


def tower_runs(cfg: Config, tower, interp_rows: list[dict], rec) -> tuple[list[dict], list[dict]]:
    """Forward time of the tower with each implementation, its interpolation share, and embedding
    fidelity."""
    from workbook.models import images, use_interpolation

    dev, dt = cfg.target.name, DTYPES[cfg.p.tower_dtype]
    tower.model.to(dev, dt).eval()
    per_call = {(r["resolution"], r["implementation"]): r["interp_median_ms"]
                for r in interp_rows if r["dtype"] == cfg.p.tower_dtype}
    speed, fid = [], []
    steps = [(res, b) for res in cfg.tower_resolutions for b in cfg.batch_sizes]
    if dev == "cuda":  # bring the GPU to its working clocks before the first configuration is timed
        x0 = images(steps[0][1], _grid(cfg, steps[0][0]) * tower.patch, seed=cfg.p.seed,
                    device=dev, dtype=dt)
        with torch.inference_mode():
            measure.spin(lambda: use_interpolation(tower, cfg.p.reference).model(x0), device=dev,
                         seconds=3.0)
    for res, b in tqdm(steps, desc="vision tower"):
        done = rec.done_group("tower_speed", timed=True, resolution=res, batch=b)
        if done is not None:  # measured by the run this one resumes (its fidelity rows went first)
            speed.extend(done)
            fid.extend(rec.done_group("embedding_fidelity", resolution=res, batch=b))
            continue
        step_speed, step_fid = _tower_step(cfg, tower, per_call, res, b, dev, dt)
        # fidelity first: a step counts as done (skipped on resume) once its speed group is written
        rec.add_group("embedding_fidelity", step_fid, resolution=res, batch=b)
        rec.add_group("tower_speed", step_speed, resolution=res, batch=b)
        speed.extend(step_speed)
        fid.extend(step_fid)
    return speed, fid


def _tower_step(cfg: Config, tower, per_call: dict, res: int, b: int, dev: str, dt):
    """One resolution and batch: the speed rows and the embedding-fidelity rows."""
    from workbook.models import images, use_interpolation

    g = _grid(cfg, res)
    native = g == tower.grid
    x = images(b, g * tower.patch, seed=cfg.p.seed, device=dev, dtype=dt)  # what a valid conv uses
    ref_name = cfg.p.reference
    order = [ref_name] + [i for i in cfg.implementations if i != ref_name]
    embeds = {}
    with torch.inference_mode():
        for name in order:  # the first output of each is its embedding (and a warm-up call)
            embeds[name] = use_interpolation(tower, name).model(x).float()
        fns = {name: (lambda name=name: use_interpolation(tower, name).model(x)) for name in order}
        times = measure.time_interleaved(fns, device=dev, warmup=cfg.p.warmup,
                                         iters=cfg.p.iterations)
    use_interpolation(tower, None)
    ref_ms = times[ref_name].median_ms
    speed = []
    for name, t in times.items():
        call = per_call.get((res, name))
        speed.append({"resolution": res, "pixels": g * tower.patch, "grid": g, "batch": b,
                      "dtype": cfg.p.tower_dtype, "implementation": name, "native": native,
                      **t.as_dict("forward_"), "interp_ms": call,
                      "interp_share_pct": 100 * call / t.median_ms if call else None,
                      "saving_vs_reference_pct": 100 * (1 - t.median_ms / ref_ms)})
    fid = []
    for name in cfg.implementations:
        m = metrics.compare(embeds[name], embeds[ref_name])
        fid.append({"resolution": res, "batch": b, "implementation": name, "native": native,
                    "cosine_min": m["cosine_min"], "cosine_mean": m["cosine_mean"],
                    "max_abs_diff": m["max_abs_diff"]})
    return speed, fid
