"""`workbook compare`: rows matched across runs, only what changed beyond noise (p10-p90 bands, else
a tolerance), values with units, runs of two notebooks refused, --all, and the HTML page with its
A-vs-B figures.

No notebook is executed: each run is a results.json written here."""
import json
import socket
from pathlib import Path

import pytest

from workbook import cli, compare, compare_html
from workbook.errors import WorkbookError
from workbook.paths import shown
from workbook.record import write_json_atomic


def _results(params, tables, headline=None, fallbacks=(), hardware=None, versions=None,
             notebook="nb"):
    return {"notebook": notebook, "status": "complete", "params": params,
            "headline": headline or {}, "fallbacks": list(fallbacks), "tables": tables,
            "hardware": hardware or {"cpu": {"model": "AMD EPYC", "cores_usable": 2}, "gpus": []},
            "versions": versions or {"version": "2.9.0", "cuda": None, "triton": None}}


def _write(d: Path, data: dict) -> Path:
    write_json_atomic(d / "results.json", data)
    return d


def _row(lines, label):
    """The figure lines printed under the row ``label`` (up to the next row or table)."""
    i = lines.index("  " + label)
    out = []
    for line in lines[i + 1:]:
        if not line.startswith("    "):
            break
        out.append(line.split())
    return out


def test_compare_two_runs(tmp_path):
    a = _write(tmp_path / "A", _results(
        {"device": "cpu", "n": 3, "same": 1},
        {"lat": [{"impl": "eager", "size": "224", "ms": 2.0, "iters": 10},
                 {"impl": "compiled", "size": "224", "ms": 4.0, "iters": 10},
                 {"impl": "steady", "size": "224", "ms": 4.0, "iters": 10},
                 {"impl": "only_a", "size": "224", "ms": 1.0}]},
        headline={"best_ms": 2.0, "path": "eager"}, fallbacks=["ran eager"]))
    b = _write(tmp_path / "B", _results(
        {"device": "cuda", "n": 3, "same": 1},
        {"lat": [{"impl": "compiled", "size": "224", "ms": 1.0, "iters": 10},
                 {"impl": "eager", "size": "224", "ms": 3.0, "iters": 10},
                 {"impl": "steady", "size": "224", "ms": 4.1, "iters": 10},
                 {"impl": "only_b", "size": "224", "ms": 9.0},
                 {"impl": "only_b2", "size": "224", "ms": 9.0}]},
        headline={"best_ms": 1.0, "path": "eager"},
        hardware={"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]},
        versions={"version": "2.9.0", "cuda": "12.8"}))
    text = compare.compare(a, b)
    lines = text.splitlines()
    assert lines[0] == f"A: {shown(a)}" and lines[1] == f"B: {shown(b)}"
    hw = next(l for l in lines if l.startswith("hardware"))
    assert "AMD EPYC (2 cores)" in hw and "NVIDIA H100 80GB HBM3" in hw
    assert any(l.startswith("torch cuda") and l.split()[2:] == ["-", "12.8"] for l in lines)
    param_lines = [l for l in lines if l.startswith("param ")]
    assert len(param_lines) == 1 and param_lines[0].split() == ["param", "device", "cpu", "cuda"]
    assert "fallback in A: ran eager" in lines
    assert "headline: 1 of 2 figures changed beyond noise" in lines
    assert ["best_ms", "2", "ms", "1", "ms", "0.5×", "beyond", "±5%"] in [l.split() for l in lines]
    assert not any(l.split()[:1] == ["path"] for l in lines)  # equal text is not a change
    # rows matched on their descriptive (text and integer) fields, whatever their order in B; floats
    # are the figures, shown with the unit their key names; the 2.5 % move of "steady" is within the
    # 5 % tolerance
    assert ("table lat: 2 of 3 figures changed beyond noise; 3 rows matched; 1 only in A, 2 only "
            "in B") in lines
    got = _row(lines, "impl=eager, size=224, iters=10")
    assert got == [["ms", "2", "ms", "3", "ms", "1.5×", "beyond", "±5%"]]
    assert _row(lines, "impl=compiled, size=224, iters=10") == [
        ["ms", "4", "ms", "1", "ms", "0.25×", "beyond", "±5%"]]
    assert "  impl=steady, size=224, iters=10" not in lines
    assert not any("only_a" in l or "only_b" in l for l in lines)


def test_compare_ratio_only_for_one_sign_else_the_difference(tmp_path):
    rows_a = [{"k": "zero", "v_ms": 0.0}, {"k": "flip", "v_ms": -1.0}, {"k": "down", "v_ms": 2.0},
              {"k": "neg", "v_ms": -2.0}]
    rows_b = [{"k": "zero", "v_ms": 5.0}, {"k": "flip", "v_ms": 2.0}, {"k": "down", "v_ms": 0.0},
              {"k": "neg", "v_ms": -4.0}]
    lines = compare.compare(_write(tmp_path / "A", _results({}, {"t": rows_a})),
                            _write(tmp_path / "B", _results({}, {"t": rows_b}))).splitlines()
    assert _row(lines, "k=zero")[0][5:7] == ["+5", "ms"]  # no division by zero: B - A
    assert _row(lines, "k=flip")[0][5:7] == ["+3", "ms"]
    assert _row(lines, "k=down")[0][5:7] == ["-2", "ms"]
    assert _row(lines, "k=neg")[0][5] == "2×"  # both negative: the ratio


def test_compare_identical_runs_say_nothing_changed(tmp_path):
    data = _results({"n": 1}, {"t": [{"k": "x", "v_ms": 1.5, "w": None}, {"k": "y", "v_ms": 2.5}]},
                    headline={"best_ms": 1.5})
    lines = compare.compare(_write(tmp_path / "A", data), _write(tmp_path / "B", data)).splitlines()
    assert lines[-1] == ("nothing changed beyond noise: 0 of 4 figures (headline and 1 table, 2 "
                         "rows matched); --all shows them")
    assert len(lines) <= 10 and not any(l.startswith(("table", "headline", "param")) for l in lines)


def _banded(fig, lo, hi, low=None):
    return {"latency_median_ms": fig, "latency_p10_ms": lo, "latency_p90_ms": hi,
            "latency_min_ms": low or lo}


@pytest.fixture
def banded(tmp_path):
    """Rows whose figures record p10-p90 bands (both naming styles), and a figure with none."""
    a = [{"case": "overlap", **_banded(10.0, 9.0, 11.0)},  # +8 %, but the bands overlap: noise
         {"case": "apart", **_banded(10.0, 9.5, 10.5)},  # +20 % and the bands apart: changed
         # +1 %, bands apart: changed all the same
         {"case": "apart_but_small", **_banded(10.0, 9.99, 10.01)},
         {"case": "fb", "fwd_bwd_ms": 5.0, "fwd_bwd_p10_ms": 4.0, "fwd_bwd_p90_ms": 6.0,
          "speedup": 1.00}]
    b = [{"case": "overlap", **_banded(10.8, 10.0, 12.0, low=9.2)},
         {"case": "apart", **_banded(12.0, 11.0, 13.0)},
         {"case": "apart_but_small", **_banded(10.1, 10.05, 10.15)},
         {"case": "fb", "fwd_bwd_ms": 5.5, "fwd_bwd_p10_ms": 5.2, "fwd_bwd_p90_ms": 6.2,
          "speedup": 1.04}]
    return (_write(tmp_path / "A", _results({}, {"t": a})),
            _write(tmp_path / "B", _results({}, {"t": b})))


def test_compare_band_overlap_is_hidden_and_bands_apart_are_flagged(banded):
    lines = compare.compare(*banded).splitlines()
    # figures per row: the median (its band shown with it) and the min; fb: fwd_bwd_ms and speedup
    assert "table t: 3 of 8 figures changed beyond noise; 4 rows matched" in lines
    assert "  case=overlap" not in lines
    assert _row(lines, "case=apart") == [
        ["latency_median_ms", "10", "ms", "[9.5–10.5]", "12", "ms", "[11–13]", "1.2×", "beyond",
         "p10-p90"],
        ["latency_min_ms", "9.5", "ms", "11", "ms", "1.16×", "beyond", "±5%"]]
    assert _row(lines, "case=apart_but_small") == [
        ["latency_median_ms", "10", "ms", "[9.99–10]", "10.1", "ms", "[10.1–10.2]", "1.01×",
         "beyond", "p10-p90"]]
    assert "  case=fb" not in lines  # the +10 % of fwd_bwd_ms is within its band; speedup moved 4 %
    assert not any(l.split()[:1] in (["latency_p10_ms"], ["latency_p90_ms"], ["fwd_bwd_p10_ms"])
                   for l in lines)


def test_compare_tolerance(banded, capsys):
    lines = compare.compare(*banded, tolerance=0.01).splitlines()
    assert ["speedup", "1×", "1.04×", "1.04×", "beyond", "±1%"] in [l.split() for l in lines]
    # a band decides, not the tolerance
    assert not any(l.split()[:1] == ["fwd_bwd_ms"] for l in lines)
    with pytest.raises(WorkbookError,
                       match=r"^--tolerance=-0.1 is not allowed: a relative change of at least 0"):
        compare.compare(*banded, tolerance=-0.1)
    assert cli.main(["compare", str(banded[0]), str(banded[1]), "--tolerance", "nan"]) == 2
    assert "error: --tolerance=nan is not allowed" in capsys.readouterr().err


def test_compare_all_shows_every_figure_with_units(banded):
    lines = compare.compare(*banded, show_all=True).splitlines()
    assert "table t: 3 of 8 figures changed beyond noise; 4 rows matched" in lines
    assert _row(lines, "case=overlap") == [
        ["latency_median_ms", "10", "ms", "[9–11]", "10.8", "ms", "[10–12]", "1.08×", "within",
         "p10-p90"],
        ["latency_min_ms", "9", "ms", "9.2", "ms", "1.02×", "within", "±5%"]]
    assert _row(lines, "case=fb") == [
        ["fwd_bwd_ms", "5", "ms", "[4–6]", "5.5", "ms", "[5.2–6.2]", "1.1×", "within", "p10-p90"],
        ["speedup", "1×", "1.04×", "1.04×", "within", "±5%"]]
    # bands stay with their figure
    assert not any(l.split()[:1] == ["latency_p10_ms"] for l in lines)


def test_compare_all_lists_equal_figures_of_identical_runs(tmp_path):
    data = _results({}, {"t": [{"k": "x", "v_ms": 1.5}]})
    lines = compare.compare(_write(tmp_path / "A", data), _write(tmp_path / "B", data),
                            show_all=True).splitlines()
    assert "table t: 0 of 1 figure changed beyond noise; 1 row matched" in lines
    assert _row(lines, "k=x") == [["v_ms", "1.5", "ms", "1.5", "ms", "1×"]]


def test_compare_refuses_runs_of_two_notebooks(tmp_path, capsys):
    a = _write(tmp_path / "A", _results({}, {}, notebook="pos_interp"))
    b = _write(tmp_path / "B", _results({}, {}, notebook="triton_precision"))
    msg = ("Run A (A) is a pos_interp run and run B (B) a triton_precision run: compare two runs "
           "of the same notebook.")
    with pytest.raises(WorkbookError) as e:
        compare.compare(a, b)
    assert str(e.value) == msg
    assert cli.main(["compare", str(a), str(b)]) == 2
    assert capsys.readouterr().err == f"error: {msg}\n"


def test_compare_run_without_results(tmp_path):
    a = _write(tmp_path / "A", _results({}, {}))
    (tmp_path / "B").mkdir()
    with pytest.raises(WorkbookError,
                       match=r"Run B \(.*B\) has no results.json: its notebook stopped before"):
        compare.compare(a, tmp_path / "B")
    (tmp_path / "B" / "results.json").write_text('{"notebook": ')
    with pytest.raises(WorkbookError, match=r"Run B \(.*B\) has a results.json that is not JSON"):
        compare.compare(a, tmp_path / "B")


def test_compare_table_only_on_one_side(tmp_path):
    a = _write(tmp_path / "A", _results({}, {"t": [{"k": "x", "v": 1.0}, {"k": "y", "v": 1.0}]}))
    b = _write(tmp_path / "B", _results({}, {}))
    lines = compare.compare(a, b).splitlines()
    assert ("table t: 0 of 0 figures changed beyond noise; 0 rows matched; 2 only in A, 0 only in B"
            in lines)
    # rows that went away are a change
    assert not any(l.startswith("nothing changed") for l in lines)


def test_compare_repeated_rows_pair_up_in_order(tmp_path):
    a = _write(tmp_path / "A", _results({}, {"t": [{"k": "x", "v": 1.0}, {"k": "x", "v": 2.0}]}))
    b = _write(tmp_path / "B", _results({}, {"t": [{"k": "x", "v": 4.0}]}))
    lines = compare.compare(a, b).splitlines()
    assert ("table t: 1 of 1 figure changed beyond noise; 1 row matched; 1 only in A, 0 only in B"
            in lines)
    assert _row(lines, "k=x") == [["v", "1", "4", "4×", "beyond", "±5%"]]


def test_compare_null_metric_and_a_figure_on_one_side(tmp_path):
    a = _write(tmp_path / "A",
               _results({}, {"t": [{"k": "x", "v": 1.0, "w": 2.0, "gone_ms": 3.0}]}))
    b = _write(tmp_path / "B",
               _results({}, {"t": [{"k": "x", "v": 1.0, "w": None, "new_ms": 4.0}]}))
    lines = compare.compare(a, b).splitlines()
    assert _row(lines, "k=x") == [["w", "2", "-", "no", "value", "in", "B"],
                                  ["gone_ms", "3", "ms", "-", "no", "value", "in", "B"],
                                  ["new_ms", "-", "4", "ms", "no", "value", "in", "A"]]


def test_compare_uses_declared_keys_to_line_up_backends(tmp_path):
    a = _results({"backend": "cpu"}, {"runs": [{"backend": "cpu", "mode": "eager",
                                                "dtype": "float32", "batch": 1, "ms": 100.0}]})
    b = _results({"backend": "cuda"}, {"runs": [{"backend": "cuda", "mode": "compile",
                                                 "dtype": "float32", "batch": 1, "ms": 2.0}]})
    for d in (a, b):
        d["keys"] = {"runs": ["dtype", "batch"]}
    lines = compare.compare(_write(tmp_path / "A", a), _write(tmp_path / "B", b)).splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith("  backend=cpu, mode=eager"))
    assert lines[i + 1].strip() == "B: backend=cuda, mode=compile"
    assert lines[i + 2].split() == ["ms", "100", "ms", "2", "ms", "0.02×", "beyond", "±5%"]


def test_band_keys_both_naming_styles():
    row = {"latency_median_ms": 1.0, "latency_p10_ms": 0.9, "latency_p90_ms": 1.1,
           "latency_min_ms": 0.8, "fwd_bwd_ms": 2.0, "fwd_bwd_p10_ms": 1.9, "fwd_bwd_p90_ms": 2.1,
           "interp_p10_ms": 1.0}
    assert compare.band_keys(row) == {"latency_median_ms": ("latency_p10_ms", "latency_p90_ms"),
                                      "fwd_bwd_ms": ("fwd_bwd_p10_ms", "fwd_bwd_p90_ms")}


# --- the page
# ---------------------------------------------------------------------------------------------


def test_compare_command_writes_the_page_with_figures(banded, wb_root, capsys):
    assert cli.main(["compare", str(banded[0]), str(banded[1])]) == 0
    out = capsys.readouterr().out
    page = wb_root / "outputs" / "compare" / "A__B.html"
    assert out.rstrip().endswith(f"compare page: {shown(page)}")
    html = page.read_text()
    assert "table t</h2>" in html and "3 of 8 figures changed beyond noise; 4 rows matched" in html
    assert "beyond p10-p90" in html and "within p10-p90" not in html  # only the changes, as printed
    assert html.count("Plotly.newPlot") == 2  # latency_median_ms and latency_min_ms changed
    # plotly.js inline, once
    assert html.count("plotly.js v") == 1 and 'src="https://cdn.plot.ly' not in html


def test_page_bars_carry_p10_p90_error_bars(banded):
    c = compare.diff(*banded)
    figs = compare_html.bar_figures(c.tables[0])
    med = next(f for f in figs if f.layout.xaxis.title.text == "latency_median_ms (ms)")
    a, b = med.data
    assert (a.name, b.name) == ("A", "B") and a.orientation == "h"
    assert list(a.y) == ["case=apart", "case=apart_but_small"] and list(a.x) == [10.0, 10.0]
    assert list(b.x) == [12.0, 10.1]
    assert list(a.error_x.array) == pytest.approx([0.5, 0.01])
    assert list(b.error_x.arrayminus) == pytest.approx([1.0, 0.05])
    assert "p10-p90" in med.layout.title.text
    assert med.layout.title.text.startswith("t: latency median")
    low = next(f for f in figs if f.layout.xaxis.title.text == "latency_min_ms (ms)")
    assert low.data[0].error_x.array is None  # no band recorded for the minimum
    assert list(low.data[0].y) == ["case=apart"]  # one row: named by all its fields


def test_page_rows_are_named_by_the_fields_that_differ(tmp_path):
    rows = [{"impl": impl, "res": res, "dtype": "bf16", "iters": 10, "ms": ms}
            for impl, res, ms in (("a", 224, 1.0), ("b", 224, 2.0), ("a", 384, 3.0))]
    faster = [{**r, "ms": r["ms"] / 2} for r in rows]
    c = compare.diff(_write(tmp_path / "A", _results({}, {"t": rows})),
                     _write(tmp_path / "B", _results({}, {"t": faster})))
    (fig,) = compare_html.bar_figures(c.tables[0])
    assert list(fig.data[0].y) == ["impl=a, res=224", "impl=b, res=224", "impl=a, res=384"]


def test_page_all_and_nothing_changed(tmp_path):
    data = _results({}, {"t": [{"k": "x", "v_ms": 1.5}]})
    c = compare.diff(_write(tmp_path / "A", data), _write(tmp_path / "B", data))
    quiet = compare_html.write(c, path=tmp_path / "q.html").read_text()
    assert "nothing changed beyond noise" in quiet and "Plotly.newPlot" not in quiet
    full = compare_html.write(c, show_all=True, path=tmp_path / "a.html").read_text()
    assert "<td>v_ms</td><td class=\"n\">1.5 ms</td>" in full
    assert "Every figure is listed (--all)." in full
    json.dumps(full)  # plain text


def test_compare_names_an_unfinished_run(tmp_path):
    a = _write(tmp_path / "A", _results({}, {"t": [{"k": "x", "v": 1.0}]}))
    b = _write(tmp_path / "B", _results({}, {"t": [{"k": "x", "v": 1.0}]}))
    gone = {"status": "running", "pid": 2 ** 22 + 12345, "host": socket.gethostname()}
    (b / "run.json").write_text(json.dumps(gone))
    lines = compare.compare(a, b).splitlines()
    status = next(ln for ln in lines if ln.startswith("run status"))
    assert status.split()[2:] == ["-", "killed"]  # A has no run.json; B's process is gone
    (b / "run.json").write_text(json.dumps({"status": "ok"}))
    assert not any(ln.startswith("run status") for ln in compare.compare(a, b).splitlines())
