"""The siglip_neuron experiment: compile a SigLIP vision tower on a backend and check it against the
CPU.

The seed reported one traced configuration on Trainium2 against the CPU. This module makes that
report on any backend, and a fair one: the speed-up is over CPU eager fp32 measured in the same run
on the same weights and inputs, accuracy is against that CPU reference with a tolerance per dtype,
and compile (trace) time, first inference, steady state and memory are measured per mode, dtype and
batch size. A figure only comes from the hardware it names.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbook import artifacts, checks, measure, metrics, targets
from workbook.backends import Backend, get
from workbook.console import progress as tqdm
from workbook.errors import bad_param
from workbook.experiments.siglip_rows import (  # noqa: F401 - the notebook's rows, from here
    HIST_EDGES, error_histogram, flat_memory, histogram_rows, memory_rows, summary, throughput_rows,
)
from workbook.paths import shown
from workbook.spec import Values

ACCURACY_IMAGES = 8  # rows of each output compared with the CPU reference
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Config:
    p: Values  # the checked parameters
    target: targets.Target
    backend: Backend
    weights: dict  # build_tower keyword arguments for the weights
    steps: list[tuple[str, str, int]]  # (mode, dtype, batch) in run order
    tolerances: dict[str, float]
    artifact_dir: Path
    options: dict  # compiler options, part of each artifact's cache key
    notes: list[str] = field(default_factory=list)

    @property
    def modes(self) -> list[str]:
        return list(dict.fromkeys(s[0] for s in self.steps))

    @property
    def dtypes(self) -> list[str]:
        return list(dict.fromkeys(s[1] for s in self.steps))

    @property
    def batch_sizes(self) -> list[int]:
        return list(dict.fromkeys(s[2] for s in self.steps))


def configure(p: Values) -> Config:
    """The rules between parameters, the model and the machine, and the backend this run uses; a
    bad combination is one sentence here, before anything is built."""
    from workbook.backends.neuron import probe
    from workbook.models import patch_size
    from workbook.models.siglip import TINY_MODELS

    patch = patch_size(p.model)  # unknown names raise with the closest names
    if p.image_size % patch:
        lo = p.image_size // patch * patch
        raise bad_param("image_size", p.image_size, f"a multiple of the patch size ({patch} px for "
                        f"{p.model}), e.g. " + (f"{lo} or {lo + patch}" if lo else f"{patch}"))
    weights = _weights(p.pretrained)
    if p.images and not _image_files(p.images):
        raise bad_param("images", p.images, "a folder holding images (jpg/png/webp), or empty for "
                        "seeded tensors")
    cache_dir = checks.directory("artifact_dir", p.artifact_dir) or artifacts.default_dir()
    target = targets.resolve(p.backend, neuron=probe)
    b = get(target.name)
    auto, why = b.auto_mode()
    steps = _parse_runs(p.runs, b) if p.runs else _matrix(p, b, auto)
    if p.cores > target.devices:
        n = target.devices
        raise bad_param("cores", p.cores, f"1 to {n}: this machine has {n} {b.unit} for the "
                        f"{b.name} backend")
    dtypes = list(dict.fromkeys(s[1] for s in steps))
    if any(d not in p.tolerances for d in dtypes):
        raise bad_param("tolerances", p.tolerances, "a relative-L2-error tolerance for every dtype "
                        "that runs: " + ", ".join(dtypes))
    args = p.compiler_args.split()
    options = {"compiler_args": args}
    if not any(a.startswith("--auto-cast") for a in args):  # flags given win; never both
        options.update(auto_cast=p.auto_cast, auto_cast_type=p.auto_cast_type)
    notes = b.rules(steps=steps, cores=p.cores, options=options)
    if "auto" in p.modes and not p.runs and why:
        notes.append(f"modes auto: {auto}, for {why}.")
    if p.model in TINY_MODELS:
        notes.append(f"{p.model} is a small test configuration, not a real SigLIP size.")
    return Config(p, target, b, weights, steps, dict(p.tolerances), cache_dir, options, notes)


def _matrix(p: Values, b: Backend, auto: str | None = None) -> list[tuple[str, str, int]]:
    """modes × dtypes × batch sizes, each of them one the backend runs (mode ``auto``: ``auto``
    as the caller resolved it, else the backend's own pick)."""
    auto = auto or b.auto_mode()[0]
    modes = [auto if m == "auto" else m for m in p.modes]
    for name, values, have in (("modes", modes, b.modes), ("dtypes", p.dtypes, b.dtypes)):
        if any(v not in have for v in values):
            raise bad_param(name, values, f"{name} of the {b.name} backend: " + ", ".join(have))
    return [(m, d, bs) for m in dict.fromkeys(modes) for d in dict.fromkeys(p.dtypes)
            for bs in dict.fromkeys(p.batch_sizes)]


def _parse_runs(runs: list[str], b: Backend) -> list[tuple[str, str, int]]:
    """``["compile-cudagraphs:bfloat16:1", ...]``: explicit configurations instead of the matrix."""
    allowed = (f"a list of mode:dtype:batch triples with modes {', '.join(b.modes)} and dtypes "
               f"{', '.join(b.dtypes)}")
    out = []
    for item in runs:
        parts = item.split(":")
        if (len(parts) != 3 or parts[0] not in b.modes or parts[1] not in b.dtypes
                or not parts[2].isdigit() or int(parts[2]) < 1):
            raise bad_param("runs", runs, allowed)
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def _image_files(folder: str) -> list[Path]:
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def _weights(pretrained: str) -> dict:
    """``pretrained``: empty (seeded random), an open_clip tag, or a local checkpoint path."""
    if not pretrained:
        return {}
    looks_like_path = any(s in pretrained for s in ("/", "\\")) or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path:
        if not Path(pretrained).is_file():
            raise bad_param("pretrained", pretrained, "an open_clip tag, or a checkpoint path that "
                            "exists")
        return {"checkpoint": pretrained}
    return {"pretrained": pretrained}


def build(cfg: Config):
    from workbook.errors import ParameterError
    from workbook.models import build_tower

    try:
        return build_tower(cfg.p.model, seed=cfg.p.seed, **cfg.weights)
    except ParameterError as e:  # this notebook takes a checkpoint path through `pretrained`
        text = str(e).replace("Parameter checkpoint=", "Parameter pretrained=", 1)
        raise ParameterError(text) from None


def start_record(cfg: Config, tower, rec) -> None:
    d = cfg.backend.describe()
    for table in ("runs", "cpu_reference", "error_histogram"):
        rec.keys(table, ["dtype", "batch"])  # so `workbook compare` lines up runs on other backends
    rec.set(backend=cfg.target.name, backend_reason=cfg.target.reason, backend_info=d,
            model=cfg.p.model, timm_model=tower.timm_name, weights=tower.weights,
            tower_params=tower.params, image_size=cfg.p.image_size)
    if d.get("standin"):
        rec.fallback("torch_neuronx is the TEST STAND-IN: the 'neuron' rows are CPU numbers, not "
                     "Neuron figures.")
    if not cfg.weights:
        rec.note(f"Seeded random weights (seed {cfg.p.seed}): speed is representative; accuracy "
                 "compares the same weights on two backends, which is what matters for a compile "
                 "check.")
    for n in cfg.notes:
        rec.note(n)
    if cfg.target.name != "neuron":
        rec.not_measured("Neuron compile, latency and per-core memory",
                         f"this run's backend is {cfg.target.name}; Neuron figures come only from "
                         "Neuron hardware")


def describe(cfg: Config, tower) -> list[dict]:
    p = cfg.p
    return [{"parameter": k, "value": v} for k, v in (
        ("backend", f"{cfg.target.name} ({cfg.target.reason})"),
        ("model", f"{p.model} → {tower.timm_name}, {tower.params / 1e6:.1f} M parameters, "
                  f"{p.image_size} px"),
        ("weights", tower.weights),
        ("runs (mode:dtype:batch)", ", ".join(f"{m}:{d}:{b}" for m, d, b in cfg.steps)),
        ("cores", f"{p.cores} {cfg.backend.unit}"),
        ("batch sizes", ", ".join(map(str, cfg.batch_sizes))),
        ("warm-up / timed iterations", f"{p.warmup} / {p.iters}"),
        ("artifact cache", shown(cfg.artifact_dir)),
    )]


def inputs(cfg: Config, n: int) -> torch.Tensor:
    """``n`` images: from the user's folder (SigLIP preprocessing) or seeded tensors in [-1, 1]."""
    size = cfg.p.image_size
    if not cfg.p.images:
        g = torch.Generator().manual_seed(cfg.p.seed)
        return torch.rand(n, 3, size, size, generator=g) * 2 - 1
    import open_clip
    from PIL import Image

    tf = open_clip.image_transform(size, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3,
                                   interpolation="bicubic", resize_mode="squash")
    xs = [tf(Image.open(f).convert("RGB")) for f in _image_files(cfg.p.images)[:n]]
    while len(xs) < n:
        xs += xs[: n - len(xs)]
    return torch.stack(xs)


def _batch(pool: torch.Tensor, b: int) -> torch.Tensor:
    reps = -(-b // pool.shape[0])
    return pool.repeat(reps, 1, 1, 1)[:b].contiguous()


def cpu_reference(cfg: Config, tower, pool: torch.Tensor, rec) -> tuple[torch.Tensor, list[dict]]:
    """CPU eager fp32 on all usable threads: the accuracy reference outputs and the speed
    baseline."""
    from workbook.proc import usable_cpus

    threads = usable_cpus()
    torch.set_num_threads(threads)
    model = tower.model.to("cpu", torch.float32).eval()
    with torch.inference_mode():
        ref = model(pool[:ACCURACY_IMAGES]).float()
    rows = []
    timed = [b for b in cfg.batch_sizes if b <= cfg.p.cpu_reference_max_batch]
    for b in tqdm(timed, desc="CPU fp32 reference"):
        x = _batch(pool, b)
        with torch.inference_mode():
            t = measure.time_fn(lambda: model(x), device="cpu", warmup=min(cfg.p.warmup, 1),
                                iters=max(2, cfg.p.iters // 2))
        row = {"backend": "cpu", "mode": "eager", "dtype": "float32", "batch": b,
               "threads": threads, **t.as_dict("latency_"), "ms_per_image": t.median_ms / b,
               "throughput_img_s": 1e3 * b / t.median_ms}
        rec.add("cpu_reference", row)
        rows.append(row)
    if not rows:
        rec.note("No CPU timing (cpu_reference_max_batch is below every batch size): no speed-up "
                 "is reported.")
    return ref, rows


def run_matrix(cfg: Config, tower, pool: torch.Tensor, ref: torch.Tensor, cpu_rows: list[dict],
               rec) -> list[dict]:
    """Every (mode, dtype, batch): prepare (compile or load), first inference, steady state,
    accuracy, memory; then the headline.

    Each configuration is a resumable group of ``rec`` (its histogram written first, then its row):
    a run that resumes an unfinished one takes the configurations that one finished instead of
    preparing them again.
    """
    cpu_best = min((r["ms_per_image"] for r in cpu_rows), default=None)
    cpu_at = {r["batch"]: r["ms_per_image"] for r in cpu_rows}
    weights = artifacts.weights_digest(tower.model)
    rows = []
    for mode, dtype, bs in tqdm(cfg.steps, desc=f"{cfg.backend.name} runs"):
        key = dict(mode=mode, dtype=dtype, batch=bs)
        done = rec.done_group("runs", timed=True, **key)
        if done is not None:  # finished by the run this one resumes (its histogram went in first)
            rec.done_group("error_histogram", **key)
            rows.extend(done)
            continue
        row, hist = _measure(cfg, tower.model, weights, pool, ref, mode, dtype, bs)
        if cpu_best:
            per_image = row["ms_per_image"]
            row["speedup_vs_cpu_same_batch"] = cpu_at[bs] / per_image if bs in cpu_at else None
            row["speedup_vs_cpu_best"] = cpu_best / per_image
        rec.add_group("error_histogram", [{**key, **hist}], **key)
        rec.add_group("runs", [row], **key)
        rows.append(row)
    headline(rows, rec)
    return rows


def _measure(cfg: Config, model, weights: str, pool, ref, mode: str, dtype: str, bs: int):
    """One configuration: its row (speed-ups left empty) and its error histogram."""
    import psutil

    b = cfg.backend
    example = _batch(pool, bs)
    parts = {"model": cfg.p.model, "weights": weights, "shape": list(example.shape), "dtype": dtype,
             "mode": mode, "cores": cfg.p.cores, "options": cfg.options, "versions": _versions()}
    entry = artifacts.entry(cfg.artifact_dir, b.name, parts) if mode != "eager" else None
    b.reset_peak_memory()
    t0 = time.perf_counter()
    prep = b.prepare(model, example, mode=mode, dtype=dtype, cores=cfg.p.cores,
                     options=cfg.options, cache=entry)
    x = b.to_input(example, dtype)
    with torch.inference_mode():
        out = b.to_output(prep.fn(x))
        b.synchronize()
        first_s = time.perf_counter() - t0
        t = measure.time_fn(lambda: prep.fn(x), device=b.clock, warmup=cfg.p.warmup,
                            iters=cfg.p.iters)
    n = min(ACCURACY_IMAGES, bs, ref.shape[0])
    acc = metrics.compare(out[:n], ref[:n])
    tol = cfg.tolerances[dtype]  # on the relative L2 error, which does not depend on the scale
    row = {"backend": prep.backend, "mode": mode, "dtype": dtype, "batch": bs, "cores": cfg.p.cores,
           "cache": prep.cache, "compile_s": prep.compile_s, "load_s": prep.load_s,
           "first_inference_s": first_s, **t.as_dict("latency_"),
           "ms_per_image": t.median_ms / bs, "throughput_img_s": 1e3 * bs / t.median_ms,
           "speedup_vs_cpu_same_batch": None, "speedup_vs_cpu_best": None,
           **acc, "tolerance_rel_l2": tol, "accuracy_pass": acc["rel_l2_err"] <= tol,
           "host_rss_mb": psutil.Process().memory_info().rss / 2**20,
           **flat_memory(b.memory()), "notes": "; ".join(prep.notes)}
    return row, error_histogram(out[:n], ref[:n])


def _versions() -> dict:
    from workbook.provenance import package_versions

    pv = package_versions()
    return {k: pv.get(k) for k in ("torch", "timm", "torch-neuronx", "neuronx-cc", "triton")}


def headline(rows: list[dict], rec) -> None:
    if not rows:
        return
    b1 = [r for r in rows if r["batch"] == 1]
    best_lat = min(b1, key=lambda r: r["latency_median_ms"]) if b1 else None
    best_tp = max(rows, key=lambda r: r["throughput_img_s"])
    head = {"all_accuracy_pass": all(r["accuracy_pass"] for r in rows),
            "best_throughput_img_s": best_tp["throughput_img_s"],
            "best_throughput_config": f"{best_tp['mode']} {best_tp['dtype']} b{best_tp['batch']}"}
    if best_lat:
        head.update(best_b1_latency_ms=best_lat["latency_median_ms"],
                    best_b1_config=f"{best_lat['mode']} {best_lat['dtype']}")
    rec.headline(**head)
