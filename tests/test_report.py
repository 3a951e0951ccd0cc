"""Reports (summary + nbconvert render), the runs index, and the plot helpers (`workbook compare`:
test_compare.py).

No notebook is executed: render() gets a small notebook built with nbformat whose code cell already
has outputs; the runs and results are dicts and JSON files written here.
"""
import nbformat
import pytest

from workbook import index, report

PROV = {
    "hardware": {"cpu": {"model": "AMD EPYC", "cores_usable": 2}, "gpus": []},
    "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True},
    "torch": {"version": "2.9.0", "cuda": None},
}


def _run(**kw):
    run = {"notebook": "smoke", "run_id": "20250101-120000-abcd", "status": "ok", "error": None,
           "duration_s": 12.345, "started_at": "2025-01-01T12:00:00+00:00",
           "params": {"n": 3, "sizes": [1, 2], "label": "a"},
           "param_sources": {"n": "-p", "sizes": "default", "label": "profile gpu"},
           "provenance": PROV}
    run.update(kw)
    return run


def _body(html: str) -> str:
    return html[html.index("<body"):]


# --- summary_html
# -----------------------------------------------------------------------------------


def test_summary_ok_run():
    res = {"status": "complete", "headline": {"x_ms": 1.23456, "n": 3}, "fallbacks": [],
           "not_measured": [], "notes": ["measured at 2 threads"]}
    h = report.summary_html(_run(), res)
    assert h.startswith('<div class="wb-header">') and h.endswith("</div>")
    assert "wb-failed" not in h
    assert "smoke · run 20250101-120000-abcd" in h
    assert "Status: OK" in h and "12.3 s" in h
    assert "Error" not in h and "Fallback" not in h and "Not measured" not in h
    assert "<b>Note:</b> measured at 2 threads" in h
    assert "AMD EPYC (2 cores)" in h
    assert "0123456789 (dirty)" in h and "0123456789a" not in h  # commit cut to 10 characters
    assert "<b>torch</b> 2.9.0" in h
    # labels and units from the key names, 3-4 figures
    assert "<b>Headline:</b> x: 1.23 ms · n: 3</p>" in h
    assert "never marked its results complete" not in h


def test_summary_parameters_table():
    h = report.summary_html(_run(), None)
    assert "<summary>parameters</summary>" in h
    assert "<tr><td>n</td><td><code>3</code></td><td>-p</td></tr>" in h
    assert "<tr><td>sizes</td><td><code>[1, 2]</code></td><td>default</td></tr>" in h
    assert "<tr><td>label</td><td><code>&quot;a&quot;</code></td><td>profile gpu</td></tr>" in h


def test_summary_failed_run_shows_error_fallbacks_and_not_measured():
    res = {"status": "running", "headline": {}, "fallbacks": ["ran eager: torch.compile failed"],
           "not_measured": [{"what": "triton kernel", "why": "triton is not installed"}],
           "notes": []}
    h = report.summary_html(_run(status="failed", error="RuntimeError: planned failure (cell 3)"),
                            res)
    assert h.startswith('<div class="wb-header wb-failed">')
    assert "Status: FAILED" in h
    assert "<b>Error:</b> <code>RuntimeError: planned failure (cell 3)</code>" in h
    assert '<p class="wb-warn"><b>Fallback:</b> ran eager: torch.compile failed</p>' in h
    assert "<b>Not measured:</b> triton kernel — triton is not installed" in h
    # a failed run explains itself; the "never marked complete" warning is only for runs that claim
    # ok
    assert "never marked its results complete" not in h


def test_summary_ok_run_whose_results_stayed_running_warns():
    h = report.summary_html(_run(), {"status": "running"})
    assert "never marked its results complete" in h


def test_summary_escapes_html():
    h = report.summary_html(_run(status="failed",
                                 error="ValueError: <script>alert(1)</script> & more",
                                 notebook="a<b>"), {"fallbacks": ["<i>x</i>"]})
    assert "<script>" not in h and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in h
    assert "a&lt;b&gt;" in h and "&lt;i&gt;x&lt;/i&gt;" in h


def test_summary_without_provenance_or_duration():
    h = report.summary_html({"notebook": "nb", "run_id": "r", "status": "interrupted"}, None)
    assert "Status: INTERRUPTED" in h and "wb-failed" in h and " s · " not in h
    assert "Hardware" not in h and "<b>git</b> none" in h


# --- render
# ------------------------------------------------------------------------------------------

SOURCE_MARK = "SOURCE_ONLY_TOKEN"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One small notebook (markdown, a code cell with stream and error outputs), rendered 3 ways."""
    d = tmp_path_factory.mktemp("render") / "run1"
    d.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    cell = nbformat.v4.new_code_cell(f"{SOURCE_MARK} = 1\nprint('printed output')\nraise "
                                     "ValueError('bad')")
    cell.execution_count = 1
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="printed output\n"),
                    nbformat.v4.new_output("error", ename="ValueError", evalue="evalue_text",
                                           traceback=["ValueError: evalue_text"])]
    nb.cells = [nbformat.v4.new_markdown_cell("# Notebook title"), cell]
    nb_path = d / "notebook.ipynb"
    nbformat.write(nb, str(nb_path))
    header = report.summary_html(_run(status="failed", error="ValueError: bad (cell 1)"), None)
    out = {}
    for mode in report.CODE_MODES:
        path = report.render(nb_path, d / f"report-{mode}.html", header, code=mode)
        assert path == d / f"report-{mode}.html"
        out[mode] = path.read_text(encoding="utf-8")
    out["plain"] = report.render(nb_path, d / "plain.html").read_text(encoding="utf-8")
    out["nb_path"] = nb_path
    return out


@pytest.mark.parametrize("mode", report.CODE_MODES)
def test_render_outputs_and_header_first(rendered, mode):
    body = _body(rendered[mode])
    assert "printed output" in body and "evalue_text" in body  # outputs are kept in every mode
    assert "Notebook title" in body
    first_cell = body.split('class="jp-Cell ')[1]
    assert 'class="wb-header wb-failed"' in first_cell  # the summary is the first cell of the body
    assert "Status: FAILED" in first_cell
    assert body.index("wb-header") < body.index("Notebook title") < body.index("printed output")


def test_render_collapsed_folds_code(rendered):
    body = _body(rendered["collapsed"])
    # one code cell; markdown cells are not folded
    assert body.count('<details class="wb-code">') == 1
    start = body.index('<details class="wb-code">')
    end = body.index("</details>", start)
    assert SOURCE_MARK in body[start:end]  # the source is inside the toggle
    assert body.count(SOURCE_MARK) == 1


def test_render_hidden_removes_source(rendered):
    html = rendered["hidden"]
    assert SOURCE_MARK not in html
    assert "wb-code" not in html


def test_render_shown_keeps_source_unfolded(rendered):
    html = rendered["shown"]
    assert SOURCE_MARK in html
    assert "wb-code" not in html


def test_render_without_header(rendered):
    body = _body(rendered["plain"])
    assert "wb-header" not in body
    assert "Notebook title" in body and SOURCE_MARK in body


def test_render_rejects_bad_code_mode(rendered, tmp_path):
    with pytest.raises(ValueError, match="code must be one of"):
        report.render(rendered["nb_path"], tmp_path / "x.html", code="folded")
    assert not (tmp_path / "x.html").exists()


def test_render_header_survives_blank_lines_in_error(rendered, tmp_path):
    header = report.summary_html(_run(status="failed", error="RuntimeError: first\n\n    second"),
                                 {"fallbacks": ["fallback_text"]})
    body = _body(report.render(rendered["nb_path"], tmp_path / "r.html", header).read_text())
    assert '<p class="wb-warn"><b>Fallback:</b> fallback_text</p>' in body


# --- index
# -------------------------------------------------------------------------------------------


def test_index_lists_runs_with_links_status_and_headline(tmp_path):
    outputs = tmp_path / "outputs"
    runs = [
        _run(path=str(outputs / "smoke" / "run-ok"), run_id="run-ok",
             headline={"x_ms": 1.23456, "n": 4}, profile="gpu"),
        _run(path=str(outputs / "smoke" / "run-bad"), run_id="run-bad", status="failed",
             error="RuntimeError: <boom>", duration_s=None, fallbacks=["eager", "cpu"]),
        _run(path=str(outputs / "other" / "run-going"), run_id="run-going", notebook="other",
             status="running"),
    ]
    path = index.write(outputs, runs)
    assert path == outputs / "index.html"
    page = path.read_text()
    assert "3 runs" in page
    assert '<a href="smoke/run-ok/report.html">run-ok</a>' in page
    assert '<a href="smoke/run-bad/report.html">run-bad</a>' in page
    assert '<a href="other/run-going/report.html">run-going</a>' in page
    assert str(tmp_path) not in page  # links are relative to outputs
    assert '<td style="color:#2e7d32"><b>ok</b>' in page
    assert ('<td style="color:#c62828"><b>failed</b><br><small>RuntimeError: &lt;boom&gt;</small>'
            in page)
    assert '<td style="color:#f9a825"><b>running</b>' in page
    assert "x: 1.23 ms<br>n: 4" in page  # labels and units from the key names
    assert "<b>fallback:</b> eager; cpu" in page
    assert "<td>12.3</td>" in page
    assert "<td>AMD EPYC (2 cores)</td>" in page and "<td>gpu</td>" in page
    assert "<td>2025-01-01 12:00:00</td>" in page


def _sections(page: str) -> dict[str, str]:
    """Each notebook's section of the page, by notebook."""
    out = {}
    for part in page.split('<section id="')[1:]:
        out[part[:part.index('"')]] = part[:part.index("</section>")]
    return out


def test_index_groups_by_notebook_latest_ok_first_failures_folded(tmp_path):
    outputs = tmp_path / "outputs"

    def run(nb, rid, status, hour):
        return _run(path=str(outputs / nb / rid), run_id=rid, notebook=nb, status=status,
                    started_at=f"2025-01-01T{hour:02d}:00:00+00:00")

    runs = [run("zeta", "z-ok-old", "ok", 1), run("zeta", "z-ok-new", "ok", 5),
            run("zeta", "z-failed", "failed", 9), run("zeta", "z-running", "running", 8),
            run("zeta", "z-intr", "interrupted", 7), run("zeta", "z-failed-old", "failed", 2),
            run("alpha", "a-failed", "failed", 3)]
    page = index.write(outputs, runs).read_text()
    assert "7 runs" in page
    secs = _sections(page)
    assert list(secs) == ["alpha", "zeta"]  # a section per notebook, by name
    assert '<nav><a href="#alpha">alpha</a><a href="#zeta">zeta</a></nav>' in page
    z = secs["zeta"]
    assert "<h2>zeta</h2><p>6 runs: 2 ok, 2 failed, 1 interrupted, 1 running</p>" in z
    shown_part, folded = z.split("<details>")
    # the newest ok run first (marked), then the others newest first; failed and interrupted
    # folded away
    order = [rid for rid in ("z-ok-new", "z-running", "z-ok-old") if rid in shown_part]
    assert order == ["z-ok-new", "z-running", "z-ok-old"]
    pos = [shown_part.index(f">{r}</a>") for r in order]
    assert pos == sorted(pos)
    assert ('<tr class="latest"><td><a href="zeta/z-ok-new/report.html">z-ok-new</a><span '
            'class="tag">latest ok') in z
    assert z.count('class="latest"') == 1
    assert "z-failed" not in shown_part and "z-intr" not in shown_part
    assert folded.startswith("<summary>3 failed or interrupted runs (2 failed, 1 interrupted)"
                             "</summary>")
    order = [folded.index(f">{name}</a>") for name in ("z-failed", "z-intr", "z-failed-old")]
    assert order == sorted(order)
    a = secs["alpha"]
    assert "1 run: 1 failed · <b>no run finished ok</b>" in a
    assert "<table>" not in a.split("<details>")[0]
    assert "<summary>1 failed or interrupted run (1 failed)</summary>" in a


def test_index_empty(tmp_path):
    page = index.write(tmp_path / "new", []).read_text()
    assert "0 runs" in page and "<a href" not in page and "<section" not in page


def test_index_run_in_sibling_folder_with_common_prefix(tmp_path):
    page = index.write(tmp_path / "out",
                       [_run(path=str(tmp_path / "out2" / "nb" / "r"), run_id="r")]).read_text()
    assert "r</a>" in page


# --- show.table and plots
# ---------------------------------------------------------------------------


ROWS = [{"impl": "eager", "size": 1, "ms": 1.23456789}, {"impl": "compiled", "size": 1, "ms": 0.5},
        {"impl": "eager", "size": 2, "ms": 2.0}]


def test_plots_lines_groups_sorts_and_error_band():
    from workbook import plots

    rows = [{"impl": "a", "n": 2, "y": 4.0, "lo": 3.0, "hi": 6.0},
            {"impl": "a", "n": 1, "y": 1.0, "lo": 0.5, "hi": 1.5},
            {"impl": "b", "n": 1, "y": 2.0, "lo": 2.0, "hi": 2.0}]
    fig = plots.lines(rows, x="n", y="y", group="impl", title="t", error=("lo", "hi"), log_y=True)
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [1.0, 4.0]  # sorted by x
    assert list(fig.data[0].error_y.array) == [0.5, 2.0]
    assert list(fig.data[0].error_y.arrayminus) == [0.5, 1.0]
    assert fig.layout.yaxis.type == "log" and fig.layout.title.text == "t"
    multi = plots.lines(rows, x="n", y="y", group=["impl", "n"], title="m")
    assert sorted(t.name for t in multi.data) == ["a · 1", "a · 2", "b · 1"]
    bars = plots.bars(rows, x="n", y="y", group="impl", title="b")
    assert [t.name for t in bars.data] == ["a", "b"] and list(bars.data[0].x) == ["2", "1"]


def test_summary_lead_line_comes_first_after_the_title():
    res = {"status": "complete", "lead": "Numbers from: cpu tensor parallelism (gloo), 2 ranks",
           "fallbacks": ["x failed; y ran instead"], "not_measured": [], "notes": []}
    h = report.summary_html(_run(), res)
    assert '<p class="wb-lead"><b>Numbers from: cpu tensor parallelism (gloo), 2 ranks</b></p>' in h
    assert h.index("wb-lead") < h.index("Fallback")
