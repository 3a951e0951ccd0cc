"""The export search's pure part: the candidates, the two rules that decide what is not tried, and
what a state's results mean (counts, the optimal configurations, a map per tp).

Pure functions of their inputs, so they are tested against hand-worked examples and a resumed
search re-plans from its results alone; :mod:`workbook.llm.search` runs only what :func:`plan`
leaves "pending".

Candidates: tensor-parallel sizes that are at least 2, multiples of the cores per device, not above
the total cores (a tp equal to every core of the instance is a valid deployment) and divide the
attention heads; batch sizes from a list; sequence lengths that are powers of two from ``min_seq``
up to, strictly below, ``max_position_embeddings``. All three are tried in decreasing order (tp,
then batch, then seq), because memory grows with batch size and sequence length.

Rules (``RULES_VERSION``), applied by :func:`plan` to candidates without a result of their own:

1. *valid-by-rule*: if (tp, b, s') is valid, every shorter s < s' at the same (tp, b) is valid; the
   reason names the nearest tested config that implies it. A longer, untested sequence stays
   pending.
2. *skipped-by-rule*: if tp has a largest valid batch size B, batch sizes above B are not tried at
   that tp. In decreasing order a larger batch always has results already during a fresh run; the
   rule matters for results loaded on resume.
"""
from __future__ import annotations

from collections import Counter

from workbook import checks
from workbook.errors import bad_param

RULES_VERSION = 1
DEFAULT_BATCHES = (1, 4, 8, 16, 32, 64, 128)
TESTED = ("valid", "failed", "timeout", "crashed")
STATUSES = TESTED + ("valid-by-rule", "skipped-by-rule", "pending")
VALID = ("valid", "valid-by-rule")


def candidates(total_cores: int, cores_per_device: int, num_heads: int, max_positions: int,
               batch_sizes=DEFAULT_BATCHES, min_seq: int = 1024) -> dict:
    """The configurations to search, each list largest first: ``{"tps", "batches", "seqs"}``."""
    checks.integer("total_cores", total_cores, 2,
                   allowed="an integer of at least 2 (tensor parallelism needs two cores)")
    checks.integer("cores_per_device", cores_per_device, 1,
                   allowed="a positive integer (NeuronCores per device, 2 on trn1/inf2)")
    checks.integer("num_heads", num_heads, 1,
                   allowed="a positive integer (the model's num_attention_heads)")
    checks.integer("min_seq", min_seq, 1, allowed="a positive power of two")
    if min_seq & (min_seq - 1):
        raise bad_param("min_seq", min_seq, "a positive power of two")
    checks.integer("max_positions", max_positions, min_seq + 1,
                   allowed=f"an integer above min_seq={min_seq} (the model's "
                   "max_position_embeddings; sequence lengths are the powers of two from min_seq "
                   "up to, not including, it)")
    batches = list(batch_sizes) if not isinstance(batch_sizes, (str, bytes)) else None
    if not batches or len(set(batches)) != len(batches) or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise bad_param("batch_sizes", batch_sizes,
                        "a non-empty list of distinct positive integers")
    sizes = [t for t in range(cores_per_device, total_cores + 1, cores_per_device) if t >= 2]
    if not sizes:
        raise bad_param("cores_per_device", cores_per_device, f"at most total_cores={total_cores}")
    tps = [t for t in sizes if num_heads % t == 0]
    if not tps:
        raise bad_param("num_heads", num_heads, "divisible by at least one tensor-parallel size "
                        f"allowed by total_cores={total_cores} and cores_per_device="
                        f"{cores_per_device}: {sizes}")
    seqs, s = [], min_seq
    while s < max_positions:
        seqs.append(s)
        s *= 2
    return {"tps": sorted(tps, reverse=True), "batches": sorted(batches, reverse=True),
            "seqs": sorted(seqs, reverse=True)}


def normalize_cands(cands) -> dict:
    try:
        out = {k: sorted((int(x) for x in cands[k]), reverse=True)
               for k in ("tps", "batches", "seqs")}
    except (KeyError, TypeError, ValueError):
        raise bad_param("cands", cands,
                        "the dict that candidates() returns (tps, batches, seqs)") from None
    if not all(out.values()):
        raise bad_param("cands", cands, "non-empty lists of tps, batches and seqs")
    return out


def _results_by_key(results) -> dict:
    """``{(tp, batch, seq): status}`` from attempt records or from such a mapping (statuses or
    records)."""
    if isinstance(results, dict):
        return {tuple(k): (v if isinstance(v, str) else v["status"]) for k, v in results.items()}
    return {(r["tp"], r["batch"], r["seq"]): r["status"] for r in results}


def plan(cands: dict, results) -> list[tuple]:
    """``(tp, batch, seq, status, reason)`` for every candidate, in the order they are tried.

    ``status`` is the tested result where there is one, else "valid-by-rule" / "skipped-by-rule"
    (rules 1 and 2 of the module docstring, ``reason`` says why), else "pending". ``results``:
    attempt records (dicts with tp, batch, seq, status) or a mapping ``{(tp, batch, seq): status}``.
    """
    done = _results_by_key(results)
    rows = []
    for tp in cands["tps"]:
        top = max((b for (t, b, _), st in done.items() if t == tp and st == "valid"), default=None)
        for b in cands["batches"]:
            valid_seqs = sorted(s for (t, bb, s), st in done.items()
                                if (t, bb) == (tp, b) and st == "valid")
            for s in cands["seqs"]:
                if (tp, b, s) in done:
                    rows.append((tp, b, s, done[(tp, b, s)], "tested"))
                    continue
                longer = [v for v in valid_seqs if v > s]
                if longer:
                    rows.append((tp, b, s, "valid-by-rule", f"implied by ({tp}, {b}, {longer[0]}) "
                                 "valid: a shorter sequence at the same tp and batch size needs "
                                 "less memory"))
                elif top is not None and b > top:
                    rows.append((tp, b, s, "skipped-by-rule", f"tp {tp}: the largest valid batch "
                                 f"size is {top}; larger batch sizes are not tried"))
                else:
                    rows.append((tp, b, s, "pending", ""))
    return rows


# ---------------------------------------------------------------- reading a state

def plan_rows(state) -> list[dict]:
    """:func:`plan` of a state (its candidates and attempts), as dicts."""
    return [dict(zip(("tp", "batch", "seq", "status", "reason"), r))
            for r in plan(state["candidates"], state["attempts"])]


def summary(state: dict) -> list[dict]:
    """One row per candidate: tp, batch, seq, status, reason, seconds (None unless tested)."""
    secs = {(a["tp"], a["batch"], a["seq"]): a.get("seconds") for a in state["attempts"]}
    return [{**r, "seconds": secs.get((r["tp"], r["batch"], r["seq"]))} for r in plan_rows(state)]


def counts(state: dict) -> list[dict]:
    """How many candidates have each status: ``{"status", "configurations"}`` rows, by status."""
    n = Counter(r["status"] for r in plan_rows(state))
    return [{"status": k, "configurations": v} for k, v in sorted(n.items())]


def optimal(state: dict) -> list[dict]:
    """The maximal valid configurations: for each tp, the valid (batch, seq) pairs (tested or by
    rule) that no other valid pair at that tp matches or beats in both batch size and sequence
    length (the Pareto front). Different tps are not compared: more cores buy latency, fewer cost
    less; that trade-off is the reader's."""
    rows = [r for r in plan_rows(state) if r["status"] in VALID]
    front = [r for r in rows if not any(
        o["tp"] == r["tp"] and o["batch"] >= r["batch"] and o["seq"] >= r["seq"]
        and (o["batch"], o["seq"]) != (r["batch"], r["seq"]) for o in rows)]
    return [{k: r[k] for k in ("tp", "batch", "seq", "status")} for r in front]


def grid(state: dict, tp: int) -> dict:
    """Statuses at one tp for a heatmap: ``status[i][j]`` is for ``batches[i]`` and ``seqs[j]``,
    both increasing."""
    cands = state["candidates"]
    if tp not in cands["tps"]:
        raise bad_param("tp", tp, f"one of the searched tensor-parallel sizes {cands['tps']}")
    st = {(r["batch"], r["seq"]): r["status"] for r in plan_rows(state) if r["tp"] == tp}
    batches, seqs = sorted(cands["batches"]), sorted(cands["seqs"])
    return {"tp": tp, "batches": batches, "seqs": seqs,
            "status": [[st[(b, s)] for s in seqs] for b in batches]}
