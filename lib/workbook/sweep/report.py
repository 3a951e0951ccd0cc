"""The sweep's page, ``outputs/sweeps/<id>/report.html``: every point with its headline figures
and a link to its report, and each headline figure against each swept parameter.

A row per point (swept values, status, where it ran, the run's headline figures as the index shows
them); then, for every numeric headline figure, one figure per axis: the figure against that axis's
values, one line per combination of the other axes. plotly.js is embedded once, so the page opens
with no network, like the reports it links.
"""
from __future__ import annotations

import html
import json
import os
from collections import Counter
from pathlib import Path

from workbook.paths import outputs_dir
from workbook.units import label, unit

STYLE = """body{font-family:sans-serif;margin:24px;max-width:1400px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#c62828}.plot{max-width:1100px}"""


def _e(x) -> str:
    return html.escape(str(x))


def rows(sweep: dict) -> list[dict]:
    """One row per point: its swept values, status, run and headline figures."""
    out = []
    for p in sweep["points"]:
        run_dir = outputs_dir() / sweep["notebook"] / p["run_id"] if p.get("run_id") else None
        head = {}
        if run_dir is not None and (run_dir / "results.json").is_file():
            head = json.loads((run_dir / "results.json").read_text()).get("headline") or {}
        took = (p["ended"] - p["started"]) if p.get("ended") and p.get("started") else None
        out.append({**{k: _text(v) for k, v in p["params"].items()},
                    **({"revision": p["rev"]} if p.get("rev") else {}), "status": p["status"],
                    "run": run_dir, "host": p.get("host"), "seconds": took,
                    "error": p.get("error"), "headline": head})
    return out


def _axes_text(sweep: dict) -> list[str]:
    out = [f"{a} ({len(v)})" for a, v in sweep["axes"].items()]
    if sweep.get("revisions"):
        n = sweep.get("repeat") or 1
        out.append(f"revision ({len(sweep['revisions'])}"
                   + (f", {n} runs each, taking turns)" if n > 1 else ")"))
    return out or ["none"]


def _text(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _numeric_keys(rs: list[dict]) -> list[str]:
    keys = []
    for r in rs:
        for k, v in r["headline"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return keys


def figures(sweep: dict, rs: list[dict]):
    """Each numeric headline figure against each axis, a line per combination of the others."""
    from workbook import plots

    axes = list(sweep["axes"]) + (["revision"] if sweep.get("revisions") else [])
    done = [r for r in rs if r["status"] == "ok"]
    for key in _numeric_keys(done):
        for axis in axes:
            others = [a for a in axes if a != axis]
            pts = [{**r, "y": r["headline"].get(key), "series": " · ".join(
                f"{a}={r[a]}" for a in others) or key} for r in done if key in r["headline"]]
            if not pts:
                continue
            numeric = all(isinstance(r[axis], (int, float)) for r in pts)
            u = unit(key)
            title = f"{label(key)} against {axis}"
            turns = Counter((json.dumps(r[axis], default=str), r["series"]) for r in pts)
            if max(turns.values()) > 1:  # repeated runs: each one drawn, none stacked
                yield plots.spread(pts, x=axis, y="y", group="series", title=title,
                                   y_title=key + (f" ({u})" if u else ""))
            elif numeric:
                yield plots.lines(pts, x=axis, y="y", group="series", title=title,
                                  y_title=key + (f" ({u})" if u else ""), x_title=axis)
            else:
                yield plots.bars(pts, x=axis, y="y", group="series", title=title,
                                 y_title=key + (f" ({u})" if u else ""))


def render(sweep: dict, page: Path) -> str:
    from workbook import plots
    from workbook.show import number

    plots.setup()
    rs = rows(sweep)
    axes = list(sweep["axes"]) + (["revision"] if sweep.get("revisions") else [])
    keys = _numeric_keys(rs)
    fixed = ", ".join(f"{k}={_text(v)}" for k, v in sweep["fixed"].items()) or "none"
    head = [f"<h1>sweep {_e(sweep['id'])}: {_e(sweep['notebook'])}</h1>",
            f"<p>axes: {_e(', '.join(_axes_text(sweep)))}; "
            f"fixed: {_e(fixed)}; profile: {_e(sweep.get('profile') or 'none')}; executor: "
            f"{_e(sweep['executor'])}, {_e(sweep['max_parallel'])} at a time</p>"]
    cols = axes + ["status", "report", "host", "seconds"] + keys
    table = ["<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>"]
    for r in rs:
        link = (f'<a href="{_e(os.path.relpath(r["run"] / "report.html", page.parent))}">'
                f'{_e(r["run"].name)}</a>' if r["run"] is not None else "")
        status = (f'<span class="failed">{_e(r["status"])}: {_e(r["error"] or "")}</span>'
                  if r["status"] == "failed" else _e(r["status"]))
        cells = ([f"<td>{_e(r[a])}</td>" for a in axes] + [f"<td>{status}</td>", f"<td>{link}</td>",
                 f"<td>{_e(r['host'] or '')}</td>",
                 f'<td class="n">{_e(number(r["seconds"], 3)) if r["seconds"] else ""}</td>']
                 + [f'<td class="n">{_e(number(r["headline"].get(k)))}</td>' for k in keys])
        table.append("<tr>" + "".join(cells) + "</tr>")
    table.append("</table>")
    parts = head + ["".join(table)]
    deltas = revision_deltas(sweep)
    if deltas:
        a, b = (r["rev"] for r in sweep["revisions"][:2])
        repeated = (sweep.get("repeat") or 1) > 1
        band = "the ranges of the repeated runs" if repeated else "p10-p90 bands"
        parts.append(f"<h2>{_e(b)} (B) against {_e(a)} (A)</h2><p>A figure changed when the "
                     f"{band} of A and B do not overlap, or, where there are none, when it moved "
                     "more than 5 %"
                     + ("" if repeated else " (one run a side: --repeat N gives every figure a band)")
                     + "; as markdown for a pull request:</p>"
                     f"<pre>{_e(markdown(sweep, deltas))}</pre>")
    first = True
    for fig in figures(sweep, rs):
        parts.append('<div class="plot">' + fig.to_html(full_html=False, include_plotlyjs=first,
                                                        config={"displaylogo": False}) + "</div>")
        first = False
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>sweep {_e(sweep["id"])}'
            f'</title><style>{STYLE}</style></head><body>{"".join(parts)}</body></html>')


def write(sweep: dict) -> Path:
    page = outputs_dir() / "sweeps" / sweep["id"] / "report.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(sweep, page), encoding="utf-8")
    return page


def revision_deltas(sweep: dict) -> list[dict]:
    """With two revisions: each grid point's headline figures, A against B. One run a side: as
    ``workbook compare`` judges them (bands where recorded, else the tolerance); repeated runs:
    the medians, with the repeats' range as each side's band."""
    revs = sweep.get("revisions") or []
    if len(revs) != 2:
        return []
    a, b = revs[0]["commit"], revs[1]["commit"]
    runs: dict[str, dict[str, list[Path]]] = {}
    for p in sweep["points"]:
        if p["status"] == "ok" and p.get("run_id"):
            runs.setdefault(json.dumps(p["params"], sort_keys=True), {}).setdefault(
                p["commit"], []).append(outputs_dir() / sweep["notebook"] / p["run_id"])
    out = []
    for params, pair in runs.items():
        if a in pair and b in pair:
            point = ", ".join(f"{k}={_text(v)}" for k, v in json.loads(params).items()) or "-"
            for f in _judged(pair[a], pair[b]):
                out.append({"point": point, "figure": f.key, "a": f.a, "b": f.b,
                            "a_text": f.text("A"), "b_text": f.text("B"),
                            "b_over_a": f.ratio(), "verdict": f.verdict, "why": f.why,
                            "runs": (len(pair[a]), len(pair[b]))})
    return out


def _judged(dirs_a: list[Path], dirs_b: list[Path]) -> list:
    from workbook import compare

    if len(dirs_a) == 1 and len(dirs_b) == 1:
        return compare.diff(dirs_a[0], dirs_b[0]).headline
    heads_a, heads_b = _headlines(dirs_a), _headlines(dirs_b)
    keys = list(dict.fromkeys([k for h in heads_a + heads_b for k in h]))
    out = []
    for k in keys:
        va, vb = [h.get(k) for h in heads_a], [h.get(k) for h in heads_b]
        (a, band_a), (b, band_b) = _middle(va), _middle(vb)
        f = compare.classify(compare.Figure(k, a, b, band_a, band_b), compare.TOLERANCE)
        f.why = f.why.replace("p10-p90", "the repeats' range")
        out.append(f)
    return out


def _headlines(dirs: list[Path]) -> list[dict]:
    return [json.loads((d / "results.json").read_text()).get("headline") or {} for d in dirs]


def _middle(values: list):
    """The median of a side's repeats and their range (None for one value); a value that is not
    a number: itself where the repeats agree, else the values they took, in sorted order."""
    import statistics

    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if nums and len(nums) == len(values):
        return statistics.median(nums), ((min(nums), max(nums)) if len(nums) > 1 else None)
    seen = sorted({json.dumps(v, sort_keys=True, default=str) for v in values})
    return (values[0] if len(seen) == 1 else " / ".join(seen)), None


def markdown(sweep: dict, deltas: list[dict]) -> str:
    """The delta table as markdown, for a pull request's description."""
    a, b = (r["rev"] for r in sweep["revisions"][:2])
    n = max((max(d["runs"]) for d in deltas), default=1)
    how = (f"median of {n} runs a side, taken in turns, [the repeats' range]" if n > 1
           else "one run a side, [p10-p90] where recorded")
    lines = [f"{sweep['notebook']}: `{b}` (B) against `{a}` (A), workbook sweep {sweep['id']} "
             f"({how})", "",
             "| point | figure | A | B | B/A | verdict |", "|---|---|---|---|---|---|"]
    for d in deltas:
        why = f" ({d['why']})" if d["why"] else ""
        lines.append(f"| {d['point']} | {d['figure']} | {d['a_text']} | {d['b_text']} | "
                      f"{d['b_over_a']} | {d['verdict']}{why} |")
    return "\n".join(lines)
