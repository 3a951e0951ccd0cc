"""Tables for notebooks: rows of results shown as an HTML table, wherever the call stands in a cell.

Why it exists: a pandas Styler reaches the notebook (and so the report) only when it is the last
top-level expression of a cell; a table made inside ``if`` or ``for`` silently vanished.
:func:`table` displays the table itself, with a title, so every table a notebook makes is in its
report. Long tables are folded behind a toggle, and wide ones with few rows are turned on their side
so they fit the page; the full numbers are always in ``results.json``.
"""
from __future__ import annotations

import html as _html

FOLD_ROWS = 24
# a table wider than this many characters (cells' text plus padding), with few rows, is
PAGE_CHARS = 130
WIDE_ROWS = 4  # shown one line per column instead


def number(v, digits: int = 4) -> str:
    """A float with ``digits`` significant figures, never in exponent form between 1e-3 and 1e15."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if v != v:  # NaN
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 10 ** (digits - 1):
        return f"{v:.0f}"
    if a >= 1e-3:
        return f"{v:.{digits}g}"
    return f"{v:.{digits - 1}e}"


def _width(df, digits: int) -> int:
    """About how many characters wide ``df`` renders: each column's widest cell or header."""
    return sum(max([len(str(c))] + [len(number(v, digits)) for v in df[c]]) + 3 for c in df.columns)


def frame(rows: list[dict], columns: list[str] | None = None, *, where: dict | None = None):
    """``rows`` filtered by ``where``, cut to ``columns`` (those present, in order): a DataFrame."""
    import pandas as pd

    if where:
        rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    df = pd.DataFrame(rows)
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    return df


def html(rows: list[dict], columns: list[str] | None = None, *, title: str = "",
         where: dict | None = None, digits: int = 4, fold: int = FOLD_ROWS) -> str:
    """The HTML :func:`table` shows: a titled block marked ``data-wb-table`` (tests count them)."""
    df = frame(rows, columns, where=where)
    transposed = (0 < len(df) <= WIDE_ROWS and len(df.columns) > 2
                  and _width(df, digits) > PAGE_CHARS)
    if transposed:  # one line per column: a wide single-row table would run off the page
        df = df.T.reset_index()
        df.columns = (["field"]
                      + [f"row {i + 1}" if len(df.columns) > 2 else "value"
                         for i in range(len(df.columns) - 1)])
    styled = df.style.format(lambda v: number(v, digits), na_rep="-").hide(axis="index")
    body = styled.to_html() if len(df.columns) else "<p><i>(no columns)</i></p>"
    if df.empty:
        body = "<p><i>(no rows)</i></p>"
    n = len(df) if not transposed else len(df.columns) - 1
    if len(df) > fold:
        body = f"<details><summary>{n} rows (click to show)</summary>{body}</details>"
    head = f'<p class="wb-table-title"><b>{_html.escape(title)}</b></p>' if title else ""
    mark = _html.escape(title or "table", quote=True)
    return (f'<div class="wb-table" data-wb-table="{mark}" style="overflow-x:auto;max-width:100%">'
            f"{head}{body}</div>")


def table(rows: list[dict], columns: list[str] | None = None, *, title: str = "",
          where: dict | None = None, digits: int = 4, fold: int = FOLD_ROWS) -> None:
    """Display ``rows`` now (inside ``if``/``for`` too), floats to ``digits`` significant figures.

    Returns None, so a call at the end of a cell does not show the table twice."""
    from IPython.display import display

    df = frame(rows, columns, where=where)
    text = f"{title}\n{df.to_string(index=False)}" if title else df.to_string(index=False)
    display({"text/html": html(rows, columns, title=title, where=where, digits=digits, fold=fold),
             "text/plain": text}, raw=True)


def figures(headline: dict, *, title: str = "Summary") -> None:
    """The run's headline figures: a table of label and value with unit, as the report has them."""
    from workbook.units import headline_items

    table([{"figure": k, "value": v} for k, v in headline_items(headline)], title=title)
