"""cells: one progress line per code cell, with an estimate from the last finished run, and how far
a run got."""
import nbformat
import pytest

from workbook import cells


def _nb():
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n = 1")
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell("n = 2")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\ntext"), params, injected,
                nbformat.v4.new_code_cell("setup"),
                nbformat.v4.new_markdown_cell("## Precision against fp64\nmore"),
                nbformat.v4.new_code_cell("a"), nbformat.v4.new_code_cell("b"),
                nbformat.v4.new_markdown_cell("Plain words first\n\nthen more"),
                nbformat.v4.new_code_cell("c")]
    return nb


@pytest.mark.parametrize("s,text",
                         [(4.26, "4.3 s"), (45.4, "45 s"), (185, "3 min 05 s"),
                          (3725, "1 h 02 min")])
def test_duration(s, text):
    assert cells.duration(s) == text


def test_headings_skip_parameter_cells_and_take_the_last_heading_above():
    assert cells.headings(_nb()) == {3: "Title", 5: "Precision against fp64",
                                     6: "Precision against fp64", 8: "Plain words first"}


def test_tracker_prints_one_line_per_code_cell_with_an_estimate(tmp_path):
    lines = []
    t = cells.Tracker(tmp_path / "log.txt", log=lines.append, prior=[1.0, 60.0, 120.0, 5.0],
                      prior_id="RUN1")
    nb = _nb()
    t.bind(nb)
    for i, cell in enumerate(nb.cells):
        t.start(i)
        if cell.cell_type == "code" and i == 5:
            cell.outputs = [nbformat.v4.new_output("stream", name="stderr",
                                                   text="x:  50%|##   | 1/2\nUserWarning: real\n")]
        t.complete(cell, i)
    assert len([ln for ln in lines if "cell " in ln]) == 4
    assert lines[0].startswith("  cell 1 of 4 · Title · ")
    assert lines[0].endswith("about 3 min 06 s left (from run RUN1)")
    assert "cell 2 of 4 · Precision against fp64" in lines[1]
    assert lines[2] == "    UserWarning: real"
    assert lines[-1].endswith("about 5.0 s left (from run RUN1)")
    rec = t.record()
    assert [c["cell"] for c in rec["cells"]] == [1, 2, 3, 4] and rec["cells_total"] == 4
    assert rec["log"] == "log.txt" and rec["log_lines_moved"] == 1
    log = (tmp_path / "log.txt").read_text()
    assert "--- cell 2 of 4 · Precision against fp64\nx:  50%|##   | 1/2" in log


def test_no_estimate_when_the_prior_run_had_other_cells(tmp_path):
    lines = []
    t = cells.Tracker(tmp_path / "log.txt", log=lines.append, prior=[1.0, 2.0], prior_id="OLD")
    t.bind(_nb())
    t.start(3)
    assert "left" not in lines[0]


def test_prior_cells_takes_the_newest_finished_run_of_the_same_notebook_and_profile():
    full = [{"cell": 1, "seconds": 2.0}, {"cell": 2, "seconds": 3.0}]
    runs = [{"notebook": "a", "profile": "gpu", "status": "ok", "cells": full, "cells_total": 2,
             "run_id": "gpu1"},
            {"notebook": "a", "profile": None, "status": "failed", "cells": full[:1],
             "cells_total": 2, "run_id": "f"},
            {"notebook": "b", "profile": None, "status": "ok", "cells": full, "cells_total": 2,
             "run_id": "b1"},
            {"notebook": "a", "profile": None, "status": "ok", "cells": full, "cells_total": 2,
             "run_id": "cpu1"}]
    assert cells.prior_cells(runs, "a", None) == ([2.0, 3.0], "cpu1")
    assert cells.prior_cells(runs, "a", "gpu") == ([2.0, 3.0], "gpu1")
    assert cells.prior_cells(runs, "c", None) == (None, "")


def test_how_far_names_the_cell_a_run_stopped_in():
    done = [{"cell": 1, "of": 3, "heading": "Set-up", "seconds": 1.0, "status": "ok"}]
    assert cells.how_far({"status": "ok", "cells": done}) is None
    stopped = done + [{"cell": 2, "of": 3, "heading": "Speed", "seconds": 75.0,
                       "status": "interrupted"}]
    assert cells.how_far({"status": "interrupted", "cells": stopped}) == (
        "The run stopped in cell 2 of 3 (Speed) after 1 min 15 s there; 1 of 3 code cells had "
        "finished.")
    failed = done + [{"cell": 2, "of": 3, "heading": "Speed", "seconds": 2.0, "status": "failed"}]
    far = cells.how_far({"status": "failed", "cells": failed})
    assert far.startswith("The run failed in cell 2 of 3 (Speed)")
    assert "got through 1 of 3" in cells.how_far({"status": "interrupted", "cells": done})


def test_kernel_socket_folders_of_runners_that_are_gone_are_swept(tmp_path):
    """A runner killed outright leaves its kernel's socket folder; the next runner removes the
    folders whose runner is gone and keeps those of live ones."""
    import os

    from workbook.cells import KERNEL_DIR_PREFIX, _sweep_kernel_dirs

    gone = tmp_path / f"{KERNEL_DIR_PREFIX}999999999-abc"
    live = tmp_path / f"{KERNEL_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{KERNEL_DIR_PREFIX}notapid"
    for d in (gone, live, other):
        d.mkdir()
    _sweep_kernel_dirs(tmp_path)
    assert not gone.exists() and live.exists() and other.exists()


def test_relayed_lines_are_echoed_at_once_and_the_rest_of_stderr_is_not(tmp_path):
    """papermill streams a cell's stderr to the tracker's echo as it comes, cut anywhere."""
    from workbook.console import RELAY

    lines = []
    t = cells.Tracker(tmp_path / "log.txt", log=lines.append)
    for chunk in (f"{RELAY}[direct] warm-", f"up: batch 1 ready in 40.2 s\nwarming:  50%|#####\r",
                  f"warming: 100%|##########\n{RELAY}[1/3] rate 2: 24/24 ok in 12.0 s\n",
                  "UserWarning: a real warning\n"):
        t.echo.write(chunk)
    assert lines == ["    [direct] warm-up: batch 1 ready in 40.2 s", "    [1/3] rate 2: 24/24 ok in 12.0 s"]
