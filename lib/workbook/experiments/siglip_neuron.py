"""The siglip_neuron experiment: compile a SigLIP vision tower on a backend and check it against the CPU.

Seed: ViT-SO400M-14-SigLIP traced with torch_neuronx on Trainium2 (max/mean difference to CPU 2.4e-5 /
1e-6, first inference 29.3 s, 12.0 ms per image, 21x the CPU, 1.632 GB per NeuronCore). This module
produces such a report on any backend: compile (trace) time, first inference, steady-state latency and
throughput per batch size, speed-up over CPU eager fp32 measured in the same run on the same weights and
inputs, accuracy against that CPU reference with a per-dtype tolerance, and memory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from workbook.console import progress as tqdm

from workbook import artifacts, checks, measure, metrics
from workbook.backends import Backend, resolve
from workbook.errors import bad_param
from workbook.params import as_list
from workbook.paths import shown

ALL_DTYPES = ("float32", "tfloat32", "bfloat16", "float16")
ACCURACY_IMAGES = 8  # rows of each output compared with the CPU reference


@dataclass
class Config:
    backend: Backend
    backend_reason: str
    model: str
    weights: dict  # build_tower keyword arguments for the weights
    image_size: int
    modes: list[str]
    dtypes: list[str]
    cores: int
    batch_sizes: list[int]
    warmup: int
    iters: int
    tolerances: dict
    artifact_dir: Path
    seed: int
    images: str
    cpu_reference_max_batch: int
    options: dict
    steps: list[tuple[str, str, int]] = field(default_factory=list)  # (mode, dtype, batch) in run order
    notes: list[str] = field(default_factory=list)


def configure(*, model: str, pretrained: str, image_size: int, backend: str, modes, dtypes, cores: int,
              batch_sizes, warmup: int, iters: int, tolerances: dict, artifact_dir: str, seed: int, images: str,
              cpu_reference_max_batch: int, compiler_args: str, auto_cast: str, auto_cast_type: str,
              runs=()) -> Config:
    """Check every parameter (the cheap ones first) and choose the backend; one clear sentence on error."""
    checks.injected_are_parameters(configure)  # a misspelt `papermill -p` name is refused, not ignored
    from workbook.models import patch_size
    from workbook.models.siglip import TINY_MODELS

    patch = patch_size(model)  # unknown names raise with the closest names
    checks.integer("image_size", image_size, patch, allowed=f"a multiple of the patch size ({patch} px for {model})")
    if image_size % patch:
        raise bad_param("image_size", image_size, f"a multiple of the patch size ({patch} px for {model}), "
                        f"e.g. {image_size // patch * patch} or {(image_size // patch + 1) * patch}")
    batches = checks.integers("batch_sizes", batch_sizes, 1, "a non-empty list of integers of at least 1")
    checks.integer("warmup", warmup, 0)
    checks.integer("iters", iters, 1)
    checks.integer("cpu_reference_max_batch", cpu_reference_max_batch, 0)
    dts = [str(d) for d in as_list("dtypes", dtypes)]
    for d in dts:
        if d not in ALL_DTYPES:
            raise bad_param("dtypes", dtypes, "a list from " + ", ".join(ALL_DTYPES))
    weights = _weights(pretrained)
    if images and not _image_files(images):
        raise bad_param("images", images, "a folder holding images (jpg/png/webp), or empty for seeded tensors")
    from workbook.backends.neuron import AUTO_CAST, AUTO_CAST_TYPES

    if auto_cast not in AUTO_CAST:
        raise bad_param("auto_cast", auto_cast, "one of " + ", ".join(AUTO_CAST))
    if auto_cast_type not in AUTO_CAST_TYPES:
        raise bad_param("auto_cast_type", auto_cast_type, "one of " + ", ".join(AUTO_CAST_TYPES))
    checks.seed(seed)
    cache_dir = checks.directory("artifact_dir", artifact_dir)
    b, reason = resolve(backend)
    ms = [str(m) for m in as_list("modes", modes)]
    if not ms:
        raise bad_param("modes", modes, "a non-empty list from " + ", ".join(b.modes))
    for m in ms:
        if m not in b.modes:
            raise bad_param("modes", modes, f"modes of the {b.name} backend: " + ", ".join(b.modes))
    for d in dts:
        if d not in b.dtypes:
            raise bad_param("dtypes", dtypes, f"dtypes of the {b.name} backend: " + ", ".join(b.dtypes))
    b.check(mode=ms[0], dtype=dts[0], cores=cores)
    steps = [(m, d, bs) for m in ms for d in dts for bs in dict.fromkeys(batches)]
    if runs:
        steps = _parse_runs(runs, b)
        batches = [s[2] for s in steps]
        dts = list(dict.fromkeys(s[1] for s in steps))
        ms = list(dict.fromkeys(s[0] for s in steps))
    tolerances = _tolerances(tolerances, dts)
    args = [a for a in str(compiler_args).split() if a]
    options = {"compiler_args": args}
    own_cast = any(a.startswith("--auto-cast") for a in args)
    if not own_cast:  # compiler_args that set --auto-cast themselves win; the two are never merged
        options.update(auto_cast=auto_cast, auto_cast_type=auto_cast_type)
    if b.name == "neuron":
        b.compiler_args(options)  # the backend's own option rules, here rather than at the first trace
    cfg = Config(b, reason, model, weights, image_size, ms, dts, cores, list(dict.fromkeys(batches)), warmup, iters,
                 tolerances, cache_dir or artifacts.default_dir(), seed, images, cpu_reference_max_batch, options)
    cfg.steps = steps
    if own_cast and b.name == "neuron":
        cfg.notes.append("compiler_args sets --auto-cast itself, so the auto_cast and auto_cast_type parameters "
                         "are not passed to neuronx-cc.")
    if model in TINY_MODELS:
        cfg.notes.append(f"{model} is a small test configuration, not a real SigLIP size.")
    return cfg


def _tolerances(tolerances, dts: list[str]) -> dict:
    """A number of at least 0 for every dtype that runs (plain papermill passes the mapping as YAML text)."""
    allowed = "a mapping with a relative-L2-error tolerance (a number >= 0) for every dtype that runs: " + ", ".join(dts)
    value = tolerances
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise bad_param("tolerances", tolerances, allowed) from None
    if not isinstance(value, dict):
        raise bad_param("tolerances", tolerances, allowed)
    out = {}
    for k, v in value.items():
        try:  # YAML reads 2e-2 (no dot) as text
            out[str(k)] = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            out[str(k)] = None
    if any(out.get(d) is None or out[d] < 0 for d in dts):
        raise bad_param("tolerances", tolerances, allowed)
    return out


def _image_files(folder: str) -> list[Path]:
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def _parse_runs(runs, b) -> list[tuple[str, str, int]]:
    """``["compile-cudagraphs:bfloat16:1", ...]``: explicit configurations instead of modes × dtypes × batch sizes."""
    allowed = f"a list of mode:dtype:batch triples with modes {', '.join(b.modes)} and dtypes {', '.join(b.dtypes)}"
    out = []
    for item in as_list("runs", runs):
        parts = str(item).split(":")
        if len(parts) != 3 or parts[0] not in b.modes or parts[1] not in b.dtypes or not parts[2].isdigit() \
                or int(parts[2]) < 1:
            raise bad_param("runs", runs, allowed)
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def _weights(pretrained: str) -> dict:
    """``pretrained``: empty (seeded random), an open_clip tag, or a local checkpoint path."""
    if not pretrained:
        return {}
    looks_like_path = any(s in pretrained for s in ("/", "\\")) or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path:
        if not Path(pretrained).is_file():
            raise bad_param("pretrained", pretrained, "an open_clip tag, or a checkpoint path that exists")
        return {"checkpoint": pretrained}
    return {"pretrained": pretrained}


def build(cfg: Config):
    from workbook.errors import ParameterError
    from workbook.models import build_tower

    try:
        return build_tower(cfg.model, seed=cfg.seed, **cfg.weights)
    except ParameterError as e:  # this notebook takes a checkpoint path through `pretrained`
        raise ParameterError(str(e).replace("Parameter checkpoint=", "Parameter pretrained=", 1)) from None


def start_record(cfg: Config, tower, rec) -> None:
    d = cfg.backend.describe()
    for table in ("runs", "cpu_reference", "error_histogram"):
        rec.keys(table, ["dtype", "batch"])  # so `workbook compare` lines up runs on different backends
    rec.set(backend=cfg.backend.name, backend_reason=cfg.backend_reason, backend_info=d, model=cfg.model,
            timm_model=tower.timm_name, weights=tower.weights, tower_params=tower.params, image_size=cfg.image_size)
    if d.get("standin"):
        rec.fallback("torch_neuronx is the TEST STAND-IN: the 'neuron' rows are CPU numbers, not Neuron figures.")
    if not cfg.weights:
        rec.note(f"Seeded random weights (seed {cfg.seed}): speed is representative; accuracy compares the same "
                 "weights on two backends, which is what matters for a compile check.")
    for n in cfg.notes:
        rec.note(n)
    if cfg.backend.name != "neuron":
        rec.not_measured("Neuron compile, latency and per-core memory",
                         f"this run's backend is {cfg.backend.name}; Neuron figures come only from Neuron hardware")


def describe(cfg: Config, tower) -> list[dict]:
    return [{"parameter": k, "value": v} for k, v in (
        ("backend", f"{cfg.backend.name} ({cfg.backend_reason})"),
        ("model", f"{cfg.model} → {tower.timm_name}, {tower.params / 1e6:.1f} M parameters, {cfg.image_size} px"),
        ("weights", tower.weights),
        ("runs (mode:dtype:batch)", ", ".join(f"{m}:{d}:{b}" for m, d, b in cfg.steps)),
        ("cores", f"{cfg.cores} {cfg.backend.unit}"),
        ("batch sizes", ", ".join(map(str, cfg.batch_sizes))),
        ("warm-up / timed iterations", f"{cfg.warmup} / {cfg.iters}"),
        ("artifact cache", shown(cfg.artifact_dir)),
    )]


def inputs(cfg: Config, n: int) -> torch.Tensor:
    """``n`` images: from the user's folder (SigLIP preprocessing) or seeded tensors in [-1, 1]."""
    if not cfg.images:
        g = torch.Generator().manual_seed(cfg.seed)
        return torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    import open_clip
    from PIL import Image

    tf = open_clip.image_transform(cfg.image_size, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3,
                                   interpolation="bicubic", resize_mode="squash")
    files = _image_files(cfg.images)
    xs = [tf(Image.open(f).convert("RGB")) for f in files[:n]]
    while len(xs) < n:
        xs += xs[: n - len(xs)]
    return torch.stack(xs)


def _batch(pool: torch.Tensor, b: int) -> torch.Tensor:
    reps = -(-b // pool.shape[0])
    return pool.repeat(reps, 1, 1, 1)[:b].contiguous()


def cpu_reference(cfg: Config, tower, pool: torch.Tensor, rec) -> tuple[torch.Tensor, list[dict]]:
    """CPU eager fp32 on all usable threads: the accuracy reference outputs and the speed baseline."""
    from workbook.backends import get

    cpu = get("cpu")
    threads = cpu.core_count()
    torch.set_num_threads(threads)
    model = tower.model.to("cpu", torch.float32).eval()
    with torch.inference_mode():
        ref = model(pool[:ACCURACY_IMAGES]).float()
    rows = []
    for b in tqdm([b for b in cfg.batch_sizes if b <= cfg.cpu_reference_max_batch], desc="CPU fp32 reference"):
        x = _batch(pool, b)
        with torch.inference_mode():
            t = measure.time_fn(lambda: model(x), device="cpu", warmup=min(cfg.warmup, 1), iters=max(2, cfg.iters // 2))
        row = {"backend": "cpu", "mode": "eager", "dtype": "float32", "batch": b, "threads": threads,
               **t.as_dict("latency_"), "ms_per_image": t.median_ms / b, "throughput_img_s": 1e3 * b / t.median_ms}
        rec.add("cpu_reference", row)
        rows.append(row)
    if not rows:
        rec.note("No CPU timing (cpu_reference_max_batch is below every batch size): no speed-up is reported.")
    return ref, rows


def run_matrix(cfg: Config, tower, pool: torch.Tensor, ref: torch.Tensor, cpu_rows: list[dict], rec) -> list[dict]:
    """Every (mode, dtype, batch): prepare (compile or load), first inference, steady state, accuracy, memory.

    Each configuration is a resumable group of ``rec`` (its histogram written first, then its row): a run that
    resumes an unfinished one takes the configurations that one finished instead of preparing them again.
    """
    import psutil

    b = cfg.backend
    cpu_best = min((r["ms_per_image"] for r in cpu_rows), default=None)
    cpu_at = {r["batch"]: r["ms_per_image"] for r in cpu_rows}
    weights = artifacts.weights_digest(tower.model)
    rows = []
    for mode, dtype, bs in tqdm(cfg.steps, desc=f"{b.name} runs"):
        key = dict(mode=mode, dtype=dtype, batch=bs)
        done = rec.done_group("runs", timed=True, **key)
        if done is not None:  # finished by the unfinished run this one resumes (its histogram went in first)
            rec.done_group("error_histogram", **key)
            rows.extend(done)
            continue
        example = _batch(pool, bs)
        parts = {"model": cfg.model, "weights": weights, "shape": list(example.shape), "dtype": dtype, "mode": mode,
                 "cores": cfg.cores, "options": cfg.options, "versions": _versions()}
        entry = artifacts.entry(cfg.artifact_dir, b.name, parts) if mode != "eager" else None
        b.reset_peak_memory()
        t0 = time.perf_counter()
        prep = b.prepare(tower.model, example, mode=mode, dtype=dtype, cores=cfg.cores, options=cfg.options,
                         cache=entry)
        x = b.to_input(example, dtype)
        with torch.inference_mode():
            out = b.to_output(prep.fn(x))
            b.synchronize()
            first_s = time.perf_counter() - t0
            t = measure.time_fn(lambda: prep.fn(x), device=b.clock, warmup=cfg.warmup, iters=cfg.iters)
        n = min(ACCURACY_IMAGES, bs, ref.shape[0])
        acc = metrics.compare(out[:n], ref[:n])
        tol = float(cfg.tolerances[dtype])  # on the relative L2 error, which does not depend on the output's scale
        row = {"backend": prep.backend, "mode": mode, "dtype": dtype, "batch": bs, "cores": cfg.cores,
               "cache": prep.cache, "compile_s": prep.compile_s, "load_s": prep.load_s, "first_inference_s": first_s,
               **t.as_dict("latency_"), "ms_per_image": t.median_ms / bs, "throughput_img_s": 1e3 * bs / t.median_ms,
               "speedup_vs_cpu_same_batch": cpu_at[bs] / (t.median_ms / bs) if bs in cpu_at else None,
               "speedup_vs_cpu_best": cpu_best / (t.median_ms / bs) if cpu_best else None,
               **acc, "tolerance_rel_l2": tol, "accuracy_pass": acc["rel_l2_err"] <= tol,
               "host_rss_mb": psutil.Process().memory_info().rss / 2**20, **_flat_memory(b.memory()),
               "notes": "; ".join(prep.notes)}
        rec.add_group("error_histogram", [{**key, **error_histogram(out[:n], ref[:n])}], **key)
        rec.add_group("runs", [row], **key)
        rows.append(row)
        prep = None  # free this configuration's compiled model before the next one
    return rows


HIST_EDGES = [10.0 ** (e / 4) for e in range(-40, 1)]  # 1e-10 .. 1, four bins a decade


def error_histogram(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Counts of |out - ref| per log-spaced bin (exact zeros counted apart), for the report's histogram."""
    d = (out.double() - ref.double()).abs().flatten()
    edges = torch.tensor(HIST_EDGES, dtype=torch.float64)
    idx = torch.bucketize(d[d > 0], edges)
    counts = torch.bincount(idx, minlength=len(edges) + 1).tolist()
    return {"zero_count": int((d == 0).sum()), "bin_upper_edges": HIST_EDGES + [float("inf")], "counts": counts}


def _flat_memory(mem: dict) -> dict:
    """CUDA figures are flat already; the Neuron per-core list becomes per-core total/peak columns."""
    out = {k: v for k, v in mem.items() if not isinstance(v, list)}
    for core in mem.get("neuron_cores", []):
        name = core.get("core", "?").replace(":", "_")
        for k, v in core.items():
            if k != "core" and isinstance(v, (int, float)):
                out[f"{name}_{k}"] = v
    return out


def _versions() -> dict:
    from workbook.provenance import package_versions

    pv = package_versions()
    return {k: pv.get(k) for k in ("torch", "timm", "torch-neuronx", "neuronx-cc", "triton")}


def summary(rows: list[dict], cpu_rows: list[dict]) -> list[dict]:
    """The seed report's shape: one line per configuration."""
    out = [{"configuration": f"cpu eager float32 ×{r['threads']} threads, batch {r['batch']}", "compile_s": None,
            "first_inference_s": None, "latency_ms_p50": r["latency_median_ms"], "ms_per_image": r["ms_per_image"],
            "throughput_img_s": r["throughput_img_s"], "speedup_vs_cpu": 1.0, "max_abs_diff": 0.0,
            "mean_abs_diff": 0.0, "rel_l2_err": 0.0, "accuracy": "reference"} for r in cpu_rows]
    for r in rows:
        out.append({"configuration": f"{r['backend']} {r['mode']} {r['dtype']} ×{r['cores']}, batch {r['batch']}"
                                     f" (cache {r['cache']})",
                    "compile_s": r["compile_s"], "first_inference_s": r["first_inference_s"],
                    "latency_ms_p50": r["latency_median_ms"], "ms_per_image": r["ms_per_image"],
                    "throughput_img_s": r["throughput_img_s"],
                    "speedup_vs_cpu": r["speedup_vs_cpu_same_batch"] or r["speedup_vs_cpu_best"],
                    "max_abs_diff": r["max_abs_diff"], "mean_abs_diff": r["mean_abs_diff"],
                    "rel_l2_err": r["rel_l2_err"],
                    "accuracy": ("pass" if r["accuracy_pass"] else "FAIL") + f" (rel L2 ≤ {r['tolerance_rel_l2']:g})"})
    return out


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


def throughput_rows(rows: list[dict], cpu_rows: list[dict]) -> list[dict]:
    """Throughput against batch size, one series per configuration; the CPU fp32 reference is a series of its
    own (on a CPU run it would otherwise share the eager fp32 run's name and the two lines would zig-zag)."""
    out = [{"series": "CPU fp32 reference", "batch": r["batch"], "throughput_img_s": r["throughput_img_s"]}
           for r in cpu_rows]
    out += [{"series": f"{r['backend']} {r['mode']} {r['dtype']}", "batch": r["batch"],
             "throughput_img_s": r.get("throughput_img_s")} for r in rows if r.get("throughput_img_s") is not None]
    return out


def histogram_rows(hist: list[dict]) -> list[dict]:
    """Long-format rows (configuration, bin upper edge, count) for plotting; empty bins left out."""
    out = []
    for h in hist:
        name = f"{h['mode']} {h['dtype']} b{h['batch']}"
        for edge, count in zip(h["bin_upper_edges"], h["counts"]):
            if count and edge is not None and edge != float("inf"):
                out.append({"configuration": name, "abs_diff_upper": edge, "count": count})
    return out


def memory_rows(rows: list[dict]) -> list[dict]:
    keep = ("mode", "dtype", "batch", "host_rss_mb")
    return [{k: v for k, v in r.items() if k in keep or k.endswith("_mb")} for r in rows]
