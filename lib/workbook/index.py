"""``outputs/index.html``: every run with its status, duration and headline figures, linked.

Why it exists: run folders pile up under ``outputs/``; one page lets a reader find the run behind a figure and
see at a glance which runs failed or stopped.
"""
from __future__ import annotations

import html
from pathlib import Path

from workbook.provenance import hardware_label, now_iso
from workbook.units import headline_items


def write(outputs: Path, runs: list[dict]) -> Path:
    outputs.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in runs:
        try:
            rel = Path(r["path"]).relative_to(outputs)
        except ValueError:
            rel = Path(r["path"])
        link = f'<a href="{html.escape(str(rel / "report.html"))}">{html.escape(r["run_id"])}</a>'
        status = html.escape(r.get("status", "?"))
        color = {"ok": "#2e7d32", "failed": "#c62828"}.get(r.get("status"), "#f9a825")
        head = "<br>".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in headline_items(r.get("headline", {})))
        if r.get("fallbacks"):
            head += "<br><b>fallback:</b> " + html.escape("; ".join(r["fallbacks"]))
        err = f"<br><small>{html.escape(r['error'])}</small>" if r.get("error") else ""
        hw = html.escape(hardware_label(r.get("provenance", {}).get("hardware", {})))
        dur = f"{r['duration_s']:.1f}" if r.get("duration_s") is not None else ""
        rows.append(f"<tr><td>{html.escape(r['notebook'])}</td><td>{link}</td>"
                    f'<td style="color:{color}"><b>{status}</b>{err}</td><td>{dur}</td><td>{hw}</td>'
                    f"<td>{html.escape(r.get('profile') or '')}</td><td>{head}</td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>workbook runs</title>
<style>body{{font-family:sans-serif;margin:24px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:4px 8px;vertical-align:top;font-size:14px}}th{{background:#f4f4f4}}</style>
</head><body><h1>Workbook runs</h1><p>{len(runs)} runs · written {html.escape(now_iso())}</p>
<table><tr><th>notebook</th><th>run</th><th>status</th><th>duration (s)</th><th>hardware</th><th>profile</th>
<th>headline</th></tr>{''.join(rows)}</table></body></html>"""
    path = outputs / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
