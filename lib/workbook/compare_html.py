"""The compare page: ``outputs/compare/<A-id>__<B-id>.html``, what ``workbook compare`` prints, as
tables and A-vs-B figures.

Why it exists: a change that a line of text states (``1.31× beyond p10-p90``) is read faster from
two bars with their spread, and a page can be kept and linked next to the two runs' reports. Each
table gets one figure per changed field: A and B bars side by side for each row where it changed
(rows named by the fields that differ between them), with p10-p90 error bars where the rows record
them. plotly.js is embedded once, so the page renders with no network.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import plotly.graph_objects as go

from workbook import plots
from workbook.compare import Comparison, Figure, RowDiff, TableDiff
from workbook.paths import outputs_dir, shown
from workbook.units import label, unit

STYLE = """body{font-family:sans-serif;margin:24px;max-width:1400px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;vertical-align:top}
th{background:#f4f4f4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.changed,.noise{white-space:nowrap}
.changed{color:#c62828;font-weight:bold}.noise{color:#777}
.summary{font-weight:bold}.plot{max-width:1100px}"""


def page_path(c: Comparison) -> Path:
    return outputs_dir() / "compare" / f"{c.dir_a.name}__{c.dir_b.name}.html"


def _e(x) -> str:
    return html.escape(str(x))


def _link(d: Path, page: Path) -> str:
    rep = d / "report.html"
    if not rep.exists():
        return _e(shown(d))
    return f'<a href="{_e(os.path.relpath(rep, page.parent))}">{_e(shown(d))}</a>'


def _figure_cells(f: Figure) -> str:
    cls = "changed" if f.changed else "noise"
    return (f'<td>{_e(f.key)}</td><td class="n">{_e(f.text("A"))}</td>'
            f'<td class="n">{_e(f.text("B"))}</td><td class="n">{_e(f.ratio())}</td>'
            f'<td class="{cls}">{_e(f.why)}</td>')


def _figures_table(rows: list[tuple[str, Figure]], first: str) -> str:
    head = (f"<tr><th>{_e(first)}</th><th>figure</th><th>A [p10–p90]</th><th>B [p10–p90]</th>"
            "<th>B/A (or B − A)</th><th></th></tr>")
    body = "".join(f"<tr><td>{_e(r)}</td>{_figure_cells(f)}</tr>" for r, f in rows)
    return f"<table>{head}{body}</table>" if rows else ""


def _row_name(r: RowDiff) -> str:
    return r.label + (f" (B: {r.other})" if r.other else "")


def _short_labels(rows: list[RowDiff]) -> list[str]:
    """Row names for a figure's axis: the descriptive fields that differ between rows, wrapped."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r.fields)
            if len({str(r.fields.get(k)) for r in rows}) > 1] or list(rows[0].fields)
    out = []
    for r in rows:
        parts = [f"{k}={r.fields.get(k)}" for k in keys]
        lines, cur = [], ""
        for p in parts:
            if cur and len(cur) + len(p) >= 48:
                lines.append(cur)
                cur = p
            else:
                cur = f"{cur}, {p}" if cur else p
        out.append("<br>".join(lines + [cur]) or "(row)")
    return out


def bar_figures(t: TableDiff) -> list[go.Figure]:
    """One figure per field that changed in ``t``: A and B bars per row that moved, p10-p90 bars."""
    by_key: dict[str, list[tuple[RowDiff, Figure]]] = {}
    for r in t.rows:
        for f in r.figures:
            if f.changed:
                by_key.setdefault(f.key, []).append((r, f))
    figs = []
    for key, items in by_key.items():
        names = _short_labels([r for r, _ in items])
        fig = go.Figure()
        for side, color in (("A", plots.COLORS[0]), ("B", plots.COLORS[1])):
            vals = [f.a if side == "A" else f.b for _, f in items]
            bands = [f.band_a if side == "A" else f.band_b for _, f in items]
            kw = {}
            if any(bands):
                kw["error_x"] = dict(type="data", symmetric=False, thickness=1.2,
                                     array=[(b[1] - v) if b and v is not None else 0
                                            for v, b in zip(vals, bands)],
                                     arrayminus=[(v - b[0]) if b and v is not None else 0
                                                 for v, b in zip(vals, bands)])
            fig.add_trace(go.Bar(y=names, x=vals, name=side, orientation="h", marker_color=color,
                                 **kw))
        u = unit(key)
        banded = any(f.band_a or f.band_b for _, f in items)
        lines = sum(n.count("<br>") + 1 for n in names)
        title = f"{t.name}: {label(key)}" + (" (error bars: p10-p90)" if banded else "")
        fig.update_layout(title=title, barmode="group", xaxis_title=key + (f" ({u})" if u else ""),
                          height=160 + 18 * lines + 14 * len(items),
                          legend=dict(traceorder="normal"))
        # rows in the table's order, top down
        fig.update_yaxes(autorange="reversed", automargin=True)
        figs.append(fig)
    return figs


def render(c: Comparison, page: Path, *, show_all: bool = False) -> str:
    """The page's HTML."""
    plots.setup()
    parts = [f"<h1>compare {_e(c.notebook or '')}: {_e(c.dir_a.name)} (A) vs "
             f"{_e(c.dir_b.name)} (B)</h1>",
             f"<p>A: {_link(c.dir_a, page)}<br>B: {_link(c.dir_b, page)}</p>",
             "<table><tr><th></th><th>A</th><th>B</th></tr>"
             + "".join(f"<tr><th>{_e(w)}</th><td>{_e(a)}</td><td>{_e(b)}</td></tr>"
                       for w, a, b in c.context)
             + "</table>"]
    parts += [f"<p><b>{_e(fb)}</b></p>" for fb in c.fallbacks]
    tol = f"±{c.tolerance * 100:g}%"
    parts.append("<p>A figure changed beyond noise when the p10-p90 bands of A and B do not "
                 f"overlap, or, where no band is recorded, when it moved more than {_e(tol)} "
                 "relative to A. "
                 + ("Every figure is listed (--all)." if show_all else "Only those are listed.")
                 + "</p>")
    if c.nothing_changed and not show_all:
        parts.append(f'<p class="summary">{_e(c.nothing_line())}</p>')
    else:
        if c.headline:
            parts.append(f'<h2>headline</h2><p class="summary">{_e(c.headline_summary())}</p>')
            heads = [("headline", f) for f in c.headline if show_all or f.changed]
            parts.append(_figures_table(heads, "figure of"))
        first_plot = True
        for t in c.tables:
            parts.append(f'<h2>table {_e(t.name)}</h2><p class="summary">{_e(t.summary())}</p>')
            rows = [(_row_name(r), f) for r in t.rows for f in r.figures if show_all or f.changed]
            parts.append(_figures_table(rows, "row"))
            for fig in bar_figures(t):
                html = fig.to_html(full_html=False, include_plotlyjs=first_plot,
                                   config={"displaylogo": False})
                parts.append(f'<div class="plot">{html}</div>')
                first_plot = False
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>compare '
            f'{_e(c.dir_a.name)} vs {_e(c.dir_b.name)}</title><style>{STYLE}</style></head>'
            f'<body>{"".join(parts)}</body></html>')


def write(c: Comparison, *, show_all: bool = False, path: Path | None = None) -> Path:
    """Write the compare page (default ``outputs/compare/<A-id>__<B-id>.html``); return its path."""
    page = Path(path) if path else page_path(c)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(c, page, show_all=show_all), encoding="utf-8")
    return page
