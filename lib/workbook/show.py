"""Tables for notebooks: rows of results as a pandas DataFrame that renders well in JupyterLab and HTML."""
from __future__ import annotations


def table(rows: list[dict], columns: list[str] | None = None, *, where: dict | None = None, precision: int = 4):
    """A DataFrame of ``rows`` (optionally filtered by ``where`` and cut to ``columns``), floats rounded for reading."""
    import pandas as pd

    if where:
        rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    df = pd.DataFrame(rows)
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    return df.style.format(precision=precision, na_rep="-").hide(axis="index")
