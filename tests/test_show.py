"""show.table: tables reach the notebook wherever called, titled, rounded, folded or turned."""
import re

import pytest

from workbook import show

ROWS = [{"impl": "eager", "size": 1, "ms": 1.23456789}, {"impl": "compiled", "size": 1, "ms": 0.5},
        {"impl": "eager", "size": 2, "ms": 2.0}]


def test_frame_where_and_columns():
    df = show.frame(ROWS, ["size", "ms", "not_a_column"], where={"impl": "eager"})
    assert list(df.columns) == ["size", "ms"]
    # data not rounded
    assert df.to_dict("records") == [{"size": 1, "ms": 1.23456789}, {"size": 2, "ms": 2.0}]
    assert show.frame(ROWS, where={"impl": "none"}).empty


@pytest.mark.parametrize("v,text",
                         [(1.23456789, "1.235"), (1162.34, "1162"), (123456.7, "123457"),
                          (0.05835, "0.05835"),
                                    (0.0000123456, "1.235e-05"), (0.0, "0"), (3, "3"),
                          (float("nan"), "-"),
                                    (True, "True"), ("x", "x")])
def test_number_keeps_significant_figures(v, text):
    assert show.number(v) == text


def test_html_is_titled_marked_and_rounded():
    h = show.html(ROWS, title="Speed per kernel")
    assert 'data-wb-table="Speed per kernel"' in h and "<b>Speed per kernel</b>" in h
    assert "1.235" in h and "1.23456789" not in h
    assert "overflow-x:auto" in h  # wide tables scroll inside the page instead of running off it


def test_table_displays_inside_a_loop_and_returns_none(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append((obj, raw)))
    results = [show.table(ROWS, title=f"t{i}") for i in range(2)]  # as inside a for loop of a cell
    assert results == [None, None]  # nothing for IPython to show a second time at the end of a cell
    assert [o["text/html"].count("data-wb-table") for o, _ in shown] == [1, 1]
    assert all(raw for _, raw in shown) and shown[1][0]["text/plain"].startswith("t1\n")


def test_long_tables_fold_and_short_ones_do_not():
    rows = [{"i": i, "x": i / 3} for i in range(30)]
    assert "<details><summary>30 rows (click to show)</summary>" in show.html(rows, fold=24)
    assert "<details>" not in show.html(rows[:5], fold=24)


def test_wide_table_with_few_rows_is_turned_on_its_side():
    row = {f"column_{i}": i * 1.5 for i in range(14)}
    h = show.html([row], title="wide")
    assert "<th" in h and "field" in h and "value" in h
    assert len(re.findall(r"<tr>", h)) == 15  # a header and one line per column
    narrow = show.html([{"a": 1, "b": 2}])
    assert "field" not in narrow


def test_empty_table_says_so():
    assert "(no rows)" in show.html([], title="nothing")


def test_plots_give_every_series_its_own_colour_and_a_legend():
    from workbook import plots

    rows = [{"impl": f"i{k}", "table": t, "n": n, "y": float(n + k)} for k in range(6)
            for t in ("a", "b") for n in (1, 2)]
    fig = plots.lines(rows, x="n", y="y", group=["table", "impl"], title="12 series")
    colours = [t.line.color for t in fig.data]
    assert len(fig.data) == 12 and len(set(colours)) == 12 and fig.layout.showlegend
    bars = plots.bars(rows, x="n", y="y", group="impl", title="b")
    assert len({t.marker.color for t in bars.data}) == 6 and bars.layout.showlegend
    many = plots.lines([{"g": k, "n": 1, "y": 1.0} for k in range(30)], x="n", y="y", group="g",
                       title="30")
    styles = {(t.line.color, t.line.dash) for t in many.data}
    assert len(styles) == 30  # past the palette, the dash tells series apart
