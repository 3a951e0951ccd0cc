"""The shared first-cell value checks (``workbook.checks``): a bad value is one sentence."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from workbook import checks
from workbook.errors import ParameterError


def _msg(fn, *args) -> str:
    with pytest.raises(ParameterError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg, msg
    return msg


def test_integer_bounds_and_types():
    assert checks.integer("n", 3, 1, 5) == 3
    msg = "Parameter n={} is not allowed: an integer {}."
    assert _msg(checks.integer, "n", 0, 1) == msg.format(0, "of at least 1")
    assert _msg(checks.integer, "n", 6, 1, 5) == msg.format(6, "from 1 to 5")
    assert _msg(checks.integer, "n", 9, None, 5) == msg.format(9, "of at most 5")
    assert "n=True" in _msg(checks.integer, "n", True, 0)  # a bool is not a count
    assert "n=2.0" in _msg(checks.integer, "n", 2.0, 0)
    assert "n='4'" in _msg(checks.integer, "n", "4", 0)


def test_directory(tmp_path):
    assert checks.directory("state_dir", "") is None
    new = tmp_path / "new" / "deeper"
    assert checks.directory("state_dir", str(new)) == new
    f = tmp_path / "a-file"
    f.write_text("x")
    assert "(it is a file)" in _msg(checks.directory, "state_dir", str(f))
    assert f"({str(f)!r} is a file)" in _msg(checks.directory, "state_dir", str(f / "below"))
    assert "a folder path" in _msg(checks.directory, "state_dir", 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_directory_refuses_a_folder_it_cannot_write(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "is not writable" in _msg(checks.directory, "artifact_dir", str(locked / "cache"))
    finally:
        locked.chmod(0o700)


def test_directory_refuses_what_the_os_says_it_cannot_write(tmp_path, monkeypatch):
    """The same refusal as any user (root passes the permission test above): ``os.access`` says no,
    as it does for root on a read-only mount. Only the nearest existing folder is asked."""
    asked = []
    monkeypatch.setattr(checks.os, "access", lambda path, mode: asked.append(Path(path)) or False)
    msg = _msg(checks.directory, "artifact_dir", str(tmp_path / "cache" / "deeper"))
    assert msg == (f"Parameter artifact_dir={str(tmp_path / 'cache' / 'deeper')!r} is not allowed: "
                   f"a folder this user can write ({str(tmp_path)!r} is not writable).")
    assert asked == [tmp_path]


def test_injected_names_reads_the_latest_cell_papermill_injected():
    history = ["", "# Parameters\ncors = 2\n", "# Parameters\ncores = 2\nseed: int = 3\n", "x = 1"]
    assert checks.injected_names(history) == ["cores", "seed"]
    # JupyterLab and nbmake inject nothing; outside IPython there is no history at all
    assert checks.injected_names(["", "cores: int = 1", "cors = 5"]) is None
    assert checks.injected_names(["# Parameters\nnot python ("]) is None
    assert checks.injected_names() is None
