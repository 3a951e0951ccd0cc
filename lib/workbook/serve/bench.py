"""The load on a server, from GuideLLM: a plan of benchmarks run in one process, resumable.

GuideLLM (the load generator vLLM's docs point to) installs beside our pins; AIPerf would
downgrade pandas, plotly, transformers and pyzmq. It starts its workers with multiprocessing
"spawn", so it runs here in a process of its own (``python -m workbook.serve.bench PLAN``), which
runs every benchmark of the plan in turn and writes each one's per-request records to
``item-<i>.json`` as it finishes: a plan re-run after an interruption skips the finished ones.

Three facts about GuideLLM 0.8.1 that shape this driver:

- Each worker process seeds its own Poisson draws identically, so with several workers the gaps
  repeat; one worker (``GUIDELLM__MAX_WORKER_PROCESSES=1``) draws a proper exponential sequence.
- Its Poisson strategy can release the workers before it sets the arrival offset, which fires
  every request at once; :func:`_fix_poisson_start` sets the offset first. The achieved arrival
  rate and the gaps' coefficient of variation are recorded per benchmark, so a broken arrival
  process shows in the report rather than in the latencies.
- It keeps the first and last token times of each request and the number of chunks, not every
  chunk's arrival: ITL comes out as its pooled mean (see :mod:`workbook.serve.metrics`).

Around each benchmark the server's ``/metrics`` is read (:mod:`workbook.serve.clock`), so each
item also holds the server's own account of its requests, where the server keeps one (workbook
serve and vLLM do); when the server runs on this machine's GPU, the GPU's SM clock over each
benchmark too (:mod:`workbook.telemetry`): an engine that idles between requests may find the
clock down when the next one comes.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workbook.serve.metrics import Timing

ENV = {"GUIDELLM__MAX_WORKER_PROCESSES": "1", "GUIDELLM__LOGGING__CONSOLE_LOG_LEVEL": "WARNING",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Item:
    """One benchmark: Poisson arrivals at ``value`` requests/s, or ``value`` concurrent
    streams, against ``model``; bounded by ``max_requests`` and ``max_seconds``."""

    label: str
    model: str
    kind: str  # "poisson" or "concurrent"
    value: float
    max_requests: int
    max_seconds: float
    seed: int = 0
    group: str = ""  # e.g. "rates", "concurrency", "ab"
    config: str = ""  # the A/B configuration this item measures
    round: int = 0


@dataclass
class Plan:
    url: str
    tokenizer: str  # a local tokenizer folder (or hub id where the hub is reachable)
    prompt_tokens: int
    output_tokens: int
    items: list[Item]
    gpu: bool = False  # the server runs on this machine's GPU 0: its SM clock is read per benchmark


def write_plan(plan: Plan, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "plan.json"
    path.write_text(json.dumps(asdict(plan), indent=1))
    return path


def run(plan: Plan, out_dir: Path, *, log_file: Path, timeout_s: float,
        relay=None) -> list[dict]:
    """Run the plan's unfinished benchmarks in a GuideLLM process; every item's records.
    ``relay`` gets a line as each benchmark ends (:mod:`workbook.follow`)."""
    from workbook import proc
    from workbook.errors import WorkbookError

    path = write_plan(plan, out_dir)
    env = {**os.environ, **ENV}
    r = proc.run([sys.executable, "-m", "workbook.serve.bench", str(path)], log=log_file,
                 timeout_s=timeout_s, cwd=out_dir, env=env, relay=relay)
    done = [load_item(out_dir, i) for i in range(len(plan.items))]
    if r.returncode != 0 and any(d is None for d in done):
        how = (f"timed out after {timeout_s:.0f} s" if r.timed_out
               else f"exit code {r.returncode}")
        raise WorkbookError(f"The load generator stopped ({how}); the benchmarks finished so "
                            f"far are kept and a re-run resumes after them. Last lines of its "
                            f"log:\n{proc.tail_text(log_file, n=15)}")
    return done


def load_item(out_dir: Path, i: int) -> dict | None:
    p = out_dir / f"item-{i}.json"
    return json.loads(p.read_text()) if p.exists() else None


def timings(item: dict) -> list[Timing]:
    """The item's requests as :class:`Timing`: first and last token times only (what GuideLLM
    keeps), so ``all_chunks`` is False."""
    out = []
    for r in item["requests"]:
        chunks = [s for s in (r["first_token"], r["last_token"]) if s is not None]
        if len(chunks) == 2 and r["output_tokens"] <= 1:
            chunks = chunks[:1]
        out.append(Timing(send_s=r["send"], chunk_s=chunks if r["ok"] else [],
                          output_tokens=r["output_tokens"] or 0,
                          prompt_tokens=r["prompt_tokens"] or 0, ok=r["ok"],
                          error=r["error"] or "", all_chunks=False))
    return out


def arrivals(item: dict) -> dict:
    """How the load generator actually sent: achieved rate and the gaps' coefficient of variation
    (1 for Poisson arrivals, 0 for evenly spaced)."""
    import statistics

    sends = sorted(r["send"] for r in item["requests"])
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    span = sends[-1] - sends[0] if len(sends) > 1 else 0.0
    cv = (statistics.pstdev(gaps) / statistics.fmean(gaps)
          if len(gaps) > 1 and statistics.fmean(gaps) > 0 else None)
    return {"sent": len(sends), "achieved_rate": (len(sends) - 1) / span if span > 0 else None,
            "gap_cv": cv}


def duration_s(item: dict) -> float:
    reqs = item["requests"]
    ends = [r["end"] or r["last_token"] for r in reqs if (r["end"] or r["last_token"])]
    if not reqs or not ends:
        return 0.0
    return max(ends) - min(r["send"] for r in reqs)


def _telemetry():
    from workbook.telemetry import Telemetry

    return Telemetry(0, period_s=0.05)


def gpu_summary(tm) -> dict | None:
    """The GPU's SM clock over one benchmark (mean, lowest, what held it down), or why not."""
    if tm is None:
        return None
    s = tm.summary()
    if s is None:
        return {"unavailable": tm.unavailable}
    return {"sm_clock_mhz": s["sm_clock_mhz"], "sm_clock_min_mhz": s["sm_clock_min_mhz"],
            "clock_reasons": s["clock_reasons"], "power_w": s["power_w"]}


# -- the GuideLLM process ---------------------------------------------------------------------
def _fix_poisson_start() -> None:
    """Set the Poisson arrival offset before the workers start (GuideLLM 0.8.1 does it after,
    so a fast worker can fire every request at once)."""
    from guidellm.scheduler import AsyncPoissonStrategy, SchedulingStrategy

    def init_processes_start(self, start_time):
        with self._offset.get_lock():
            self._offset.value = start_time
        SchedulingStrategy.init_processes_start(self, start_time)

    AsyncPoissonStrategy.init_processes_start = init_processes_start


def _scenario(plan: dict, item: dict, out_json: Path):
    from guidellm.schemas.benchmark import BenchmarkScenario

    poisson = item["kind"] == "poisson"
    spec = {
        "backend": {"kind": "openai_http", "target": plan["url"], "model": item["model"],
                    "request_format": "/v1/completions"},
        "profile": {"kind": "poisson" if poisson else "concurrent"},
        "constraints": [{"kind": "max_requests", "count": item["max_requests"]},
                        {"kind": "max_duration", "seconds": item["max_seconds"]}],
        "tokenizer": {"kind": "huggingface_auto", "model": plan["tokenizer"]},
        "data": [{"kind": "synthetic_text", "prompt_tokens": plan["prompt_tokens"],
                  "output_tokens": plan["output_tokens"]}],
        "seed": {"kind": "static", "value": item["seed"]},
        "outputs": [{"kind": "json", "path": str(out_json)}],
        "metrics": {"kind": "generative", "sample_size": None},
    }
    key = "profile.rate" if poisson else "profile.streams"
    value = float(item["value"]) if poisson else int(item["value"])
    return BenchmarkScenario.create(scenario=None, spec=spec, benchmarks=[{key: value}])


def _records(raw: dict) -> list[dict]:
    rows = []
    for b in raw["benchmarks"]:
        for status in ("successful", "errored", "incomplete"):
            for r in b["requests"][status]:
                t = r["info"]["timings"]
                rows.append({"send": t["request_start"], "target": t.get("targeted_start"),
                             "first_token": t.get("first_token_iteration"),
                             "last_token": t.get("last_token_iteration"),
                             "end": t.get("request_end"), "chunks": t.get("token_iterations"),
                             "prompt_tokens": r.get("prompt_tokens"),
                             "output_tokens": r.get("output_tokens"),
                             "ok": status == "successful",
                             "error": (str(r["info"].get("error") or "")[:200]
                                       or ("still in flight at the bound"
                                           if status == "incomplete" else ""))})
    return rows


async def _main(plan_path: Path) -> int:
    from guidellm.benchmark import benchmark_generative_text

    from workbook.record import write_json_atomic
    from workbook.serve import clock

    _fix_poisson_start()
    plan = json.loads(plan_path.read_text())
    out = plan_path.parent
    items = plan["items"]
    for i, item in enumerate(items):
        if (out / f"item-{i}.json").exists():
            print(f"[{i + 1}/{len(items)}] {item['label']}: done earlier", flush=True)
            continue
        t0 = time.perf_counter()
        raw_path = out / f"guidellm-{i}.json"
        before = clock.scrape(plan["url"])
        tm = _telemetry() if plan.get("gpu") else None
        with tm or contextlib.nullcontext():
            await benchmark_generative_text(args=_scenario(plan, item, raw_path), progress=False,
                                            console=None)
        own = clock.window(before, clock.scrape(plan["url"]))
        rows = _records(json.loads(raw_path.read_text()))
        write_json_atomic(out / f"item-{i}.json", {**item, "requests": rows,
                                                   "server_clock": own, "gpu": gpu_summary(tm)})
        ok = sum(r["ok"] for r in rows)
        print(f"[{i + 1}/{len(items)}] {item['label']}: {ok}/{len(rows)} ok in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(Path(sys.argv[1]))))
