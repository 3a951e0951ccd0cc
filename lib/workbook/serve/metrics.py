"""Serving metrics as ``vllm bench serve`` defines them, from per-request timestamps.

Whatever load generator ran, each request comes here as a :class:`Timing`: when it was sent, when
each streamed chunk arrived, how many tokens it made, whether it succeeded. From those:

- TTFT: send -> first chunk; E2EL: send -> last chunk;
- TPOT per request: (E2EL - TTFT) / (output tokens - 1), for requests with more than one token;
- ITL: every gap between consecutive chunks, pooled over all requests (where only the first and
  last arrival are known, its pooled mean: the sum of (E2EL - TTFT) over the sum of (tokens - 1));
- mean, median, std and p90/p99 of each, in ms; request, output-token and total-token throughput
  over the benchmark's duration; goodput: requests per second meeting every SLO given.

:func:`summary` returns them under ``vllm bench serve --save-result``'s field names, so its results
can be read by tools written for vLLM's. Load generators name these differently (GuideLLM's
``inter_token_latency_ms`` is this TPOT, its ``time_per_output_token_ms`` includes TTFT): the
numbers here never come from their aggregates, only from the timestamps.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)
SLO_KEYS = ("ttft", "tpot", "e2el")


@dataclass
class Timing:
    send_s: float  # the request was sent (any clock, seconds; the same clock for every field)
    chunk_s: list[float] = field(default_factory=list)  # arrival of each streamed token chunk
    output_tokens: int = 0
    prompt_tokens: int = 0
    ok: bool = True
    error: str = ""
    all_chunks: bool = True  # False: chunk_s holds only the first and last token's arrival

    @property
    def ttft_ms(self) -> float | None:
        return (self.chunk_s[0] - self.send_s) * 1e3 if self.ok and self.chunk_s else None

    @property
    def e2el_ms(self) -> float | None:
        return (self.chunk_s[-1] - self.send_s) * 1e3 if self.ok and self.chunk_s else None

    @property
    def tpot_ms(self) -> float | None:
        if not self.ok or self.output_tokens < 2 or not self.chunk_s:
            return None
        return (self.e2el_ms - self.ttft_ms) / (self.output_tokens - 1)

    @property
    def itl_ms(self) -> list[float] | None:
        """Every gap between chunks; None when only the first and last arrival are known."""
        if not self.ok:
            return []
        if not self.all_chunks:
            return None
        return [(b - a) * 1e3 for a, b in zip(self.chunk_s, self.chunk_s[1:])]


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default, as vLLM uses)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _stats(name: str, values: list[float]) -> dict:
    out = {f"mean_{name}_ms": statistics.fmean(values) if values else None,
           f"median_{name}_ms": statistics.median(values) if values else None,
           f"std_{name}_ms": statistics.pstdev(values) if values else None}
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = percentile(values, p)
    return out


def meets(t: Timing, slos_ms: dict) -> bool:
    """Every SLO met (``{"ttft": ms, "tpot": ms, "e2el": ms}``, any subset); a one-token request
    has no TPOT and meets a TPOT SLO, as in vLLM."""
    if not t.ok:
        return False
    for key, limit in slos_ms.items():
        got = getattr(t, f"{key}_ms")
        if got is not None and got > limit:
            return False
    return True


def summary(timings: list[Timing], duration_s: float, slos_ms: dict | None = None) -> dict:
    """The benchmark's metrics under vLLM's --save-result field names (times in ms)."""
    ok = [t for t in timings if t.ok]
    out_tokens = sum(t.output_tokens for t in ok)
    in_tokens = sum(t.prompt_tokens for t in ok)
    dur = duration_s if duration_s > 0 else float("nan")
    res = {"duration": duration_s, "completed": len(ok), "failed": len(timings) - len(ok),
           "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
           "request_throughput": len(ok) / dur, "output_throughput": out_tokens / dur,
           "total_token_throughput": (in_tokens + out_tokens) / dur}
    if slos_ms:
        res["request_goodput"] = sum(meets(t, slos_ms) for t in ok) / dur
    res.update(_stats("ttft", [t.ttft_ms for t in ok if t.ttft_ms is not None]))
    res.update(_stats("tpot", [t.tpot_ms for t in ok if t.tpot_ms is not None]))
    if all(t.all_chunks for t in ok):
        res.update(_stats("itl", [g for t in ok for g in t.itl_ms]))
    else:  # only first and last arrivals: the pooled mean is known, the spread of gaps is not
        res.update({k: None for k in _stats("itl", [])})
        gaps = sum(t.output_tokens - 1 for t in ok if t.tpot_ms is not None)
        span = sum(t.e2el_ms - t.ttft_ms for t in ok if t.tpot_ms is not None)
        res["mean_itl_ms"] = span / gaps if gaps else None
        res["itl_note"] = ("pooled mean only: the load generator keeps each request's first and "
                           "last token times, not every gap")
    res.update(_stats("e2el", [t.e2el_ms for t in ok if t.e2el_ms is not None]))
    res["errors"] = sorted({t.error for t in timings if not t.ok and t.error})[:5]
    return res


def check_slos(slos_ms: dict) -> dict:
    """``{"ttft": 500, "tpot": 50}`` as given; one sentence for a key or limit that is not."""
    from workbook.errors import bad_param

    for k, v in slos_ms.items():
        if k not in SLO_KEYS:
            raise bad_param("slo_ms", slos_ms, "keys among " + ", ".join(SLO_KEYS))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise bad_param("slo_ms", slos_ms, "a positive number of ms per key")
    return dict(slos_ms)
