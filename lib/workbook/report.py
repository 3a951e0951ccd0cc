"""HTML reports: the executed notebook rendered by nbconvert, with a run summary on top.

The summary (status, the error if the run failed, fallbacks, what was not measured, hardware,
parameters) is a cell put in front of the notebook at render time, so the first thing a reader sees
is whether the numbers can be trusted. Code cells are folded behind a toggle (or removed with
``code="hidden"``); plotly figures carry their own plotly.js, so reports render with no network.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import nbformat

from workbook import cells
from workbook.liveness import elsewhere
from workbook.paths import lib_dir
from workbook.provenance import hardware_label

CODE_MODES = ("collapsed", "hidden", "shown")


def _esc(x) -> str:
    """Escaped, on one line: in the summary's markdown cell a blank line would end the HTML."""
    return html.escape(str(x)).replace("\r", "").replace("\n", "<br>")


def summary_html(run: dict, results: dict | None) -> str:
    """The report's first cell, from ``run.json`` and (if the notebook got that far)
    ``results.json``."""
    status = run.get("status", "?")
    failed = status != "ok"
    parts = [f'<div class="wb-header{" wb-failed" if failed else ""}">',
             f"<h2>{_esc(run['notebook'])} · run {_esc(run['run_id'])}</h2>",
             f"<p><b>Status: {_esc(status.upper())}</b>"]
    if run.get("duration_s") is not None:
        parts.append(f" · {run['duration_s']:.1f} s")
    parts.append(f" · {_esc(run.get('started_at', ''))}")
    where = elsewhere(run)
    parts.append(f" · {_esc(where)}</p>" if where else "</p>")
    res = results or {}
    # the one line a run says before anything else (e.g. which path produced the numbers)
    if res.get("lead"):
        parts.append(f'<p class="wb-lead"><b>{_esc(res["lead"])}</b></p>')
    if run.get("error"):
        parts.append(f"<p><b>Error:</b> <code>{_esc(run['error'])}</code></p>")
    far = cells.how_far(run)
    if far:
        parts.append(f'<p class="wb-warn"><b>How far:</b> {_esc(far)}</p>')
    for fb in res.get("fallbacks", []):
        parts.append(f'<p class="wb-warn"><b>Fallback:</b> {_esc(fb)}</p>')
    if res.get("resumed", {}).get("groups"):
        r = res["resumed"]
        what = ", ".join(f"{n} of {t}" for t, n in r["groups"].items())
        parts.append(f'<p class="wb-warn"><b>Resumed:</b> {_esc(what)} measured by the unfinished '
                     f'run {_esc(r["from"])} (same notebook source, parameters, lib, hardware and '
                     'torch), not by this one; their rows say <code>resumed_from</code>.</p>')
    if res.get("resumed", {}).get("remeasured"):
        r = res["resumed"]
        what = ", ".join(f"{n} of {t}" for t, n in r["remeasured"].items())
        parts.append(f'<p class="wb-warn"><b>Measured again:</b> {_esc(what)}, which the '
                     f'unfinished run {_esc(r["from"])} had timed on another machine of the same '
                     'kind: every time in this report comes from this machine.</p>')
    if res.get("status") == "running" and not failed:
        parts.append('<p class="wb-warn">The notebook never marked its results complete.</p>')
    for nm in res.get("not_measured", []):
        parts.append(f'<p class="wb-warn"><b>Not measured:</b> {_esc(nm["what"])} — '
                     f'{_esc(nm["why"])}</p>')
    for note in res.get("notes", []):
        parts.append(f"<p><b>Note:</b> {_esc(note)}</p>")
    prov = run.get("provenance", {})
    hw = prov.get("hardware", {})
    git = prov.get("git", {})
    tv = prov.get("torch", {})
    parts.append("<p><b>Hardware:</b> " + _esc(hardware_label(hw)) if hw else "<p>")
    parts.append(f" · <b>torch</b> {_esc(tv.get('version'))} (CUDA {_esc(tv.get('cuda'))})"
                 f" · <b>git</b> {_esc((git.get('commit') or 'none')[:10])}"
                 f"{' (dirty)' if git.get('dirty') else ''}</p>")
    if res.get("headline"):
        from workbook.units import headline_items

        parts.append("<p><b>Headline:</b> " + " · ".join(
            f"{_esc(k)}: {_esc(v)}" for k, v in headline_items(res["headline"])) + "</p>")
    parts.append(_cells_html(run))
    src = run.get("param_sources", {})
    rows = "".join(f"<tr><td>{_esc(k)}</td><td><code>{_esc(json.dumps(v))}</code></td><td>"
                   f"{_esc(src.get(k, ''))}</td></tr>"
                   for k, v in run.get("params", {}).items())
    parts.append(f"<details><summary>parameters</summary><table><tr><th>name</th><th>value</th>"
                 f"<th>from</th></tr>{rows}</table></details></div>")
    return "".join(parts)


def _cells_html(run: dict) -> str:
    """One line per code cell that ran (its heading and time), folded, and the link to the log."""
    done = run.get("cells") or []
    out = ""
    if done:
        lines = "".join(f"<li>cell {c['cell']} of {c['of']} · {_esc(c['heading'])} · "
                        f"{cells.duration(c['seconds'])}"
                        f"{'' if c['status'] == 'ok' else ' · <b>' + _esc(c['status']) + '</b>'}"
                        "</li>" for c in done)
        total = cells.duration(sum(c["seconds"] for c in done))
        out += (f"<details><summary>progress: {len(done)} of {run.get('cells_total', len(done))} "
                f"code cells ran ({total})</summary><ul>{lines}</ul></details>")
    if run.get("log"):
        moved = run.get("log_lines_moved") or 0
        count = f" ({moved} lines moved out of this report)" if moved else ""
        out += (f'<p><a href="{_esc(run["log"])}">log</a>: progress (bars, child processes\' '
                f"lines) and library messages{count}, and the kernel's own messages</p>")
    return out


def render(nb_path: Path, html_path: Path, header_html: str | None = None,
           code: str = "collapsed") -> Path:
    """Write ``html_path`` from the notebook at ``nb_path``, ``header_html`` as its first cell."""
    from nbconvert import HTMLExporter

    if code not in CODE_MODES:
        raise ValueError(f"code must be one of {CODE_MODES}")
    nb = nbformat.read(str(nb_path), as_version=4)
    if header_html:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(header_html))
    exporter = HTMLExporter(
        template_name="workbook" if code == "collapsed" else "lab",
        extra_template_basedirs=[str(lib_dir() / "templates")],
        exclude_input=(code == "hidden"),
    )
    exporter.register_preprocessor("nbconvert.preprocessors.TagRemovePreprocessor", enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb_path.parent.name}})
    html_path.write_text(body, encoding="utf-8")
    return html_path
