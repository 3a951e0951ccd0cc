"""Tables for notebooks: rows of results as a pandas table that renders well in JupyterLab and HTML.

Long tables are folded behind a toggle so a report reads as figures and short tables first; the
full numbers are always in ``results.json``.
"""
from __future__ import annotations

FOLD_ROWS = 24


def table(rows: list[dict], columns: list[str] | None = None, *, where: dict | None = None, precision: int = 4,
          fold: int = FOLD_ROWS):
    """``rows`` (optionally filtered by ``where`` and cut to ``columns``) with floats rounded for reading.

    Returns a pandas Styler; with more than ``fold`` rows, an HTML block that shows it folded.
    """
    import pandas as pd

    if where:
        rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    df = pd.DataFrame(rows)
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    styled = df.style.format(precision=precision, na_rep="-").hide(axis="index")
    if len(df) <= fold:
        return styled
    from IPython.display import HTML

    return HTML(f"<details><summary>table of {len(df)} rows (click to show)</summary>{styled.to_html()}</details>")
