"""Labels and units from result key names, and numbers shown to 3-4 significant figures.

Why it exists: results follow the convention "units in key names" (``best_b1_latency_ms``,
``decode_speedup_over_one_process``), so the key alone says what a figure is. Every place that shows
figures (`workbook list`, the index, report headers, `workbook compare`) reads them through here, so
a figure reads the same everywhere: ``best batch-1 latency: 1162 ms`` rather than
``best_b1_latency_ms=1162.3``.
"""
from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal

# a key's last token(s) -> the unit shown; two-token units are tried first
_PAIRS = {("img", "s"): "img/s", ("tokens", "s"): "tokens/s", ("tok", "s"): "tok/s",
          ("gb", "s"): "GB/s"}
_UNITS = {"ms": "ms", "s": "s", "seconds": "s", "sec": "s", "us": "µs", "ns": "ns", "gb": "GB",
          "mb": "MB", "mib": "MiB", "gib": "GiB", "pct": "%", "x": "×", "w": "W", "j": "J",
          "mhz": "MHz", "c": "°C", "ulp": "ulp"}
# these count only at the end of a longer key (or before "per X"): "power_w" is in watts, "w" and
# "x_offset" are not
_SHORT = {"s", "x", "w", "j", "c", "us", "ns", "sec"}
_RATIO_WORDS = {"speedup", "ratio", "speedups", "ratios"}
_NO_SPACE = {"%", "×"}  # units written right after the number
_WORDS = {"speedup": "speed-up", "fwd": "forward", "bwd": "backward", "img": "images"}


def _split(key: str) -> tuple[list[str], str | None, int, int]:
    """The key's tokens, its unit, and the token span [start, end) of the unit (with ``per X``)."""
    toks = key.lower().split("_")
    for i in range(len(toks) - 1, -1, -1):
        end, per = i + 1, ""
        if end + 1 < len(toks) and toks[end] == "per":  # energy_j_per_step -> J/step
            per, end = "/" + toks[end + 1], end + 2
        at_end = end == len(toks)
        if i > 0 and (toks[i - 1], toks[i]) in _PAIRS and at_end:
            return toks, _PAIRS[toks[i - 1], toks[i]] + per, i - 1, end
        u = _UNITS.get(toks[i])
        if u and (toks[i] not in _SHORT or (at_end and i > 0)):
            return toks, u + per, i, end
    return toks, None, len(toks), len(toks)


def unit(key: str) -> str | None:
    """The unit a key's name gives (``ms``, ``img/s``, ``%``, ``×`` for speed-ups), or None."""
    toks, u, _, _ = _split(key)
    if any(t in _RATIO_WORDS for t in toks):
        return "×"
    return u


def label(key: str) -> str:
    """The key as words, without its unit: ``best_b1_latency_ms`` -> ``best batch-1 latency``."""
    toks, u, start, end = _split(key)
    kept = toks[:start] + toks[end:]
    words: list[str] = []
    for t in kept:
        if re.fullmatch(r"b\d+", t):
            words.append(f"batch-{t[1:]}")
        elif t == "bwd" and words[-1:] == ["forward"]:
            words[-1] = "forward+backward"
        else:
            words.append(_WORDS.get(t, t))
    return " ".join(w for w in words if w) or key


def number(v) -> str:
    """A number to 3-4 significant figures, halves rounded up: 1162.3 -> 1162, 12.345 -> 12.3,
    0.05835 -> 0.0584.

    Rounding starts from the number's shortest decimal form (``repr``), so 0.05835 rounds as written
    rather than as the binary 0.058349999...; ints stay whole."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    d = Decimal(repr(float(v)))
    if abs(d) >= Decimal("999.5") and abs(d) < Decimal(10) ** 6:
        return str(int(d.quantize(Decimal(1), ROUND_HALF_UP)))
    q = d.quantize(Decimal(1).scaleb(d.adjusted() - 2), ROUND_HALF_UP)
    return f"{float(q):.3g}"


def fmt(value, key: str | None = None) -> str:
    """``value`` as text with the unit ``key`` names: None -> ``-``, text as is, ints as ints."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return number(value)
    if isinstance(value, (int, float)):
        u = unit(key) if key else None
        text = number(value)
        if not u:
            return text
        return f"{text}{u}" if u in _NO_SPACE else f"{text} {u}"
    if isinstance(value, str):
        return value
    return str(value)


def headline_items(headline: dict) -> list[tuple[str, str]]:
    """``(label, value with unit)`` for each headline figure, in the recorded order."""
    return [(label(k), fmt(v, k)) for k, v in (headline or {}).items()]
