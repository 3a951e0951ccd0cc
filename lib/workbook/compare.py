"""``workbook compare A B``: two runs' results side by side, with the hardware each ran on.

Why it exists: the question after a re-run is nearly always "what changed, and on what machine"; reading two
``results.json`` by eye misses rows that moved.

Rows of the same table are matched on their descriptive (non-numeric) fields, so the same
configuration measured on two machines or two backends lines up; numeric fields are shown for A, B
and B/A.
"""
from __future__ import annotations

from pathlib import Path

from workbook.provenance import hardware_label
from workbook.record import load


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_measure(v) -> bool:
    """Floats (and nulls: a NaN metric is stored as null) are measurements; text, integers, flags describe.
    Lists and mappings (histograms, say) are neither: they are left out of the side-by-side view."""
    return v is None or isinstance(v, (float, list, dict))


def _key(row: dict, columns: list[str] | None = None) -> tuple:
    if columns:
        return tuple((k, str(row.get(k))) for k in columns)
    return tuple(sorted((k, str(v)) for k, v in row.items() if not _is_measure(v)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def compare(dir_a: Path, dir_b: Path) -> str:
    a, b = load(Path(dir_a) / "results.json"), load(Path(dir_b) / "results.json")
    out = [f"A: {dir_a}", f"B: {dir_b}", ""]
    out.append(f"{'':24} {'A':40} {'B':40}")
    out.append(f"{'hardware':24} {hardware_label(a.get('hardware', {}))[:40]:40} "
               f"{hardware_label(b.get('hardware', {}))[:40]:40}")
    for k in ("version", "cuda", "triton"):
        out.append(f"{'torch ' + k:24} {_fmt(a.get('versions', {}).get(k)):40} {_fmt(b.get('versions', {}).get(k)):40}")
    keys = sorted(set(a.get("params", {})) | set(b.get("params", {})))
    diff = [k for k in keys if a.get("params", {}).get(k) != b.get("params", {}).get(k)]
    for k in diff:
        out.append(f"{'param ' + k:24} {_fmt(a.get('params', {}).get(k))[:40]:40} "
                   f"{_fmt(b.get('params', {}).get(k))[:40]:40}")
    for side, d in (("A", a), ("B", b)):
        for fb in d.get("fallbacks", []):
            out.append(f"fallback in {side}: {fb}")
    heads = sorted(set(a.get("headline", {})) | set(b.get("headline", {})))
    if heads:
        out += ["", "headline"]
        for k in heads:
            out.append(f"  {k:40} {_fmt(a.get('headline', {}).get(k)):>12} {_fmt(b.get('headline', {}).get(k)):>12}")
    for table in sorted(set(a.get("tables", {})) | set(b.get("tables", {}))):
        out += ["", f"table {table} (A | B | B/A)"]
        cols = a.get("keys", {}).get(table) or b.get("keys", {}).get(table)
        rows_b: dict[tuple, list[dict]] = {}
        for r in b.get("tables", {}).get(table, []):
            rows_b.setdefault(_key(r, cols), []).append(r)
        n_b = sum(len(v) for v in rows_b.values())
        matched = 0
        for ra in a.get("tables", {}).get(table, []):
            same = rows_b.get(_key(ra, cols))
            if not same:
                continue
            rb = same.pop(0)  # repeated configurations pair up in order
            matched += 1
            label = ", ".join(f"{k}={v}" for k, v in ra.items() if not _is_measure(v))
            out.append(f"  {label}")
            if cols:
                other = ", ".join(f"{k}={v}" for k, v in rb.items() if not _is_measure(v) and ra.get(k) != v)
                if other:
                    out.append(f"    B: {other}")
            for k, va in ra.items():
                vb = rb.get(k)
                if isinstance(va, float) and _is_num(vb):
                    ratio = f"{vb / va:.3g}" if va else "-"
                    out.append(f"      {k:32} {_fmt(va):>12} {_fmt(vb):>12} {ratio:>8}")
        only_a = len(a.get("tables", {}).get(table, [])) - matched
        only_b = n_b - matched
        if only_a or only_b:
            out.append(f"  ({matched} rows matched; {only_a} only in A, {only_b} only in B)")
    return "\n".join(out)
