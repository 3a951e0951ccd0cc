"""One plotly style for every report, and figures that survive export to HTML.

Under papermill plotly's automatic renderer is ``plotly_mimetype``, which nbconvert drops: the HTML
report would have no figures. :func:`setup` picks ``plotly_mimetype+notebook`` (JupyterLab's own
renderer, plus an HTML one that embeds plotly.js once, so reports render with no network) unless
``PLOTLY_RENDERER`` says otherwise.
"""
from __future__ import annotations

import os
from collections import defaultdict

import plotly.graph_objects as go
import plotly.io as pio

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
# one colour per series: after the first eight, 16 more that stay apart from them and from each
# other
MORE_COLORS = ["#7f7f7f", "#bcbd22", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39",
               "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#9c9ede",
               "#e7969c", "#cedb9c"]
PALETTE = COLORS + MORE_COLORS
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]


def color(i: int) -> str:
    """The ``i``-th series' colour; past the palette's end they repeat (:func:`lines` dashes)."""
    return PALETTE[i % len(PALETTE)]


def setup() -> None:
    pio.renderers.default = os.environ.get("PLOTLY_RENDERER") or "plotly_mimetype+notebook"
    pio.templates["workbook"] = go.layout.Template(layout=go.Layout(
        font=dict(family="Helvetica, Arial, sans-serif", size=13),
        colorway=COLORS, hovermode="closest", margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(font=dict(size=11)), title=dict(x=0.01),
    ))
    pio.templates.default = "plotly_white+workbook"


def lines(rows: list[dict], *, x: str, y: str, group: str | list[str], title: str, log_x=False,
          log_y=False, error: tuple[str, str] | None = None, y_title: str | None = None,
          x_title: str | None = None) -> go.Figure:
    """One line per value of ``group`` (a key or keys of the rows); ``error``: (low, high) keys."""
    keys = [group] if isinstance(group, str) else list(group)
    series: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        series[" · ".join(str(r[k]) for k in keys)].append(r)
    fig = go.Figure()
    for i, (name, rs) in enumerate(series.items()):
        rs = sorted(rs, key=lambda r: r[x])
        kw = {}
        if error:
            lo, hi = error
            kw["error_y"] = dict(type="data", symmetric=False, array=[r[hi] - r[y] for r in rs],
                                 arrayminus=[r[y] - r[lo] for r in rs], thickness=1)
        line = dict(color=color(i), dash=DASHES[(i // len(PALETTE)) % len(DASHES)])
        fig.add_trace(go.Scatter(x=[r[x] for r in rs], y=[r[y] for r in rs], mode="lines+markers",
                                 name=name, line=line, marker=dict(color=color(i)), **kw))
    fig.update_layout(title=title, xaxis_title=x_title or x, yaxis_title=y_title or y,
                      showlegend=True)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def bars(rows: list[dict], *, x: str, y: str, group: str, title: str, log_y=False,
         y_title: str | None = None) -> go.Figure:
    series: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        series[str(r[group])].append(r)
    fig = go.Figure([go.Bar(x=[str(r[x]) for r in rs], y=[r[y] for r in rs], name=name,
                            marker_color=color(i))
                     for i, (name, rs) in enumerate(series.items())])
    fig.update_layout(title=title, barmode="group", xaxis_title=x, yaxis_title=y_title or y,
                      showlegend=True)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def spread(rows: list[dict], *, x: str, y: str, group: str, title: str,
           y_title: str | None = None) -> go.Figure:
    """Several measurements at each x (repeated runs): a box per x and series with every
    measurement drawn, where bars would stack them."""
    series: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        series[str(r[group])].append(r)
    fig = go.Figure([go.Box(x=[str(r[x]) for r in rs], y=[r[y] for r in rs], name=name,
                            boxpoints="all", pointpos=0, jitter=0.3, marker_color=color(i),
                            line_color=color(i))
                     for i, (name, rs) in enumerate(series.items())])
    fig.update_layout(title=title, boxmode="group", xaxis_title=x, yaxis_title=y_title or y,
                      showlegend=True)
    fig.update_xaxes(type="category")
    return fig


def heatmap(z, *, x, y, title: str, zmin=None, zmax=None, colorscale="Viridis") -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, zmin=zmin, zmax=zmax, colorscale=colorscale))
    fig.update_layout(title=title)
    return fig
