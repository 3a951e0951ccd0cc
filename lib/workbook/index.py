"""``outputs/index.html``: every run, a section per notebook, with status, duration and headline
figures, linked.

Why it exists: run folders pile up under ``outputs/``; one page lets a reader find the run behind a
figure and see at a glance which runs failed or stopped. Each notebook's section starts with its
newest run that finished ok (the one to read), then the other runs newest first; failed and
interrupted runs are folded away below, with how many there are.
"""
from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

from workbook.liveness import elsewhere
from workbook.provenance import hardware_label, now_iso
from workbook.units import headline_items

# others (running, interrupted) amber
COLORS = {"ok": "#2e7d32", "failed": "#c62828", "killed": "#c62828"}
FOLDED = ("failed", "interrupted", "killed")
STYLE = """body{font-family:sans-serif;margin:24px}table{border-collapse:collapse;margin:6px 0 12px}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;font-size:14px}th{background:#f4f4f4}
tr.latest td{background:#f1f8e9}.tag{font-size:11px;color:#2e7d32;border:1px solid #2e7d32;
border-radius:3px;padding:0 3px;margin-left:4px}summary{cursor:pointer;margin:4px 0}
nav a{margin-right:12px}"""
HEAD = ("<tr><th>run</th><th>status</th><th>started</th><th>duration (s)</th><th>hardware</th>"
        "<th>profile</th><th>headline</th></tr>")


def _e(x) -> str:
    return html.escape(str(x))


def _row(r: dict, outputs: Path, latest: bool = False) -> str:
    try:
        rel = Path(r["path"]).relative_to(outputs)
    except ValueError:
        rel = Path(r["path"])
    link = f'<a href="{_e(rel / "report.html")}">{_e(r["run_id"])}</a>'
    if latest:
        link += '<span class="tag">latest ok</span>'
    status = r.get("status", "?")
    note = r.get("error") or elsewhere(r)
    err = f"<br><small>{_e(note)}</small>" if note else ""
    head = "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in headline_items(r.get("headline", {})))
    if r.get("fallbacks"):
        head += "<br><b>fallback:</b> " + _e("; ".join(r["fallbacks"]))
    hw = _e(hardware_label(r.get("provenance", {}).get("hardware", {})))
    dur = f"{r['duration_s']:.1f}" if r.get("duration_s") is not None else ""
    started = _e((r.get("started_at") or "")[:19].replace("T", " "))
    tr = '<tr class="latest">' if latest else "<tr>"
    return (f'{tr}<td>{link}</td>'
            f'<td style="color:{COLORS.get(status, "#f9a825")}"><b>{_e(status)}</b>{err}</td>'
            f"<td>{started}</td><td>{dur}</td><td>{hw}</td><td>{_e(r.get('profile') or '')}</td>"
            f"<td>{head}</td></tr>")


def _counts(runs: list[dict]) -> str:
    n = Counter(r.get("status", "?") for r in runs)
    return ", ".join(f"{c} {s}"
                     for s, c in sorted(n.items(), key=lambda kv: (kv[0] != "ok", kv[0])))


def _section(notebook: str, runs: list[dict], outputs: Path) -> str:
    runs = sorted(runs, key=lambda r: r.get("started_at") or "", reverse=True)
    folded = [r for r in runs if r.get("status") in FOLDED]
    rest = [r for r in runs if r.get("status") not in FOLDED]
    latest = next((r for r in rest if r.get("status") == "ok"), None)
    if latest is not None:
        rest = [latest] + [r for r in rest if r is not latest]
    parts = [f'<section id="{_e(notebook)}"><h2>{_e(notebook)}</h2>',
             f"<p>{len(runs)} run{'s' if len(runs) != 1 else ''}: {_e(_counts(runs))}"
             + ("" if latest else " · <b>no run finished ok</b>") + "</p>"]
    if rest:
        parts.append(f"<table>{HEAD}{''.join(_row(r, outputs, r is latest) for r in rest)}</table>")
    if folded:
        kinds = _counts(folded)
        parts.append(f"<details><summary>{len(folded)} failed or interrupted run"
                     f"{'s' if len(folded) != 1 else ''} ({_e(kinds)})</summary><table>{HEAD}"
                     f"{''.join(_row(r, outputs) for r in folded)}</table></details>")
    return "".join(parts) + "</section>"


def write(outputs: Path, runs: list[dict]) -> Path:
    outputs.mkdir(parents=True, exist_ok=True)
    by_nb: dict[str, list[dict]] = {}
    for r in runs:
        by_nb.setdefault(r["notebook"], []).append(r)
    names = sorted(by_nb)
    links = "".join(f'<a href="#{_e(n)}">{_e(n)}</a>' for n in names)
    nav = f"<nav>{links}</nav>" if names else ""
    page = ('<!doctype html><html><head><meta charset="utf-8"><title>workbook runs</title>'
            f"<style>{STYLE}</style></head><body><h1>Workbook runs</h1>"
            f"<p>{len(runs)} runs · written {_e(now_iso())}</p>{nav}"
            + "".join(_section(n, by_nb[n], outputs) for n in names) + "</body></html>")
    path = outputs / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
