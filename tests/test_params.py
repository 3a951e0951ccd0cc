"""Parameter parsing, merging and type checks (no notebook execution)."""
import pytest
from workbook import params as P
from workbook.errors import ParameterError, WorkbookError


def test_parse_parameters_reads_types_defaults_and_help():
    src = "a: int = 3  # count of things\nb: list = [1, 2]  # sizes\nc: str = 'x'\n"
    ps = P.parse_parameters(src)
    assert ps["a"] == P.Param("a", "int", 3, "count of things")
    assert ps["b"].default == [1, 2] and ps["b"].help == "sizes"
    assert ps["c"].help == ""


def test_merge_order_defaults_profile_file_cli(wb_root, tmp_path):
    defaults = P.notebook_parameters(P.notebook_path("smoke"))
    f = tmp_path / "p.yaml"
    f.write_text("n: 9\nsizes: [4]\n")
    vals, src = P.merge("smoke", defaults, profile="gpu", file=str(f), cli={"n": 11})
    assert vals == {"n": 11, "fail": False, "sizes": [4], "label": "gpu", "pause": 0.0}
    assert src == {"n": "-p", "fail": "default", "sizes": "file p.yaml", "label": "profile gpu",
                   "pause": "default"}


def test_file_may_be_sectioned_by_notebook(wb_root, tmp_path):
    defaults = P.notebook_parameters(P.notebook_path("smoke"))
    f = tmp_path / "p.yaml"
    f.write_text("smoke:\n  n: 2\nother:\n  zzz: 1\n")
    vals, _ = P.merge("smoke", defaults, file=str(f))
    assert vals["n"] == 2


def test_unknown_parameter_is_one_clear_sentence(wb_root):
    defaults = P.notebook_parameters(P.notebook_path("smoke"))
    with pytest.raises(ParameterError, match=r"Parameter nn=1 is not allowed: smoke has no such "
                                             r"parameter.*n, fail"):
        P.merge("smoke", defaults, cli={"nn": 1})


@pytest.mark.parametrize("typ,value,expected", [
    ("int", "4", 4), ("int", 4.0, 4), ("float", "1e-3", 1e-3), ("bool", "true", True),
    ("list", "224,384", [224, 384]), ("list", "[224, 384]", [224, 384]), ("list", 5, [5]),
    ("str", 3, "3"),
])
def test_coerce(typ, value, expected):
    assert P.coerce(P.Param("x", typ, None, ""), value) == expected


@pytest.mark.parametrize("typ,value",
                         [("int", "four"), ("int", 2.5), ("bool", "yes"), ("float", "fast")])
def test_coerce_rejects(typ, value):
    with pytest.raises(ParameterError, match="Parameter x="):
        P.coerce(P.Param("x", typ, None, ""), value)


def test_unknown_profile_and_notebook(wb_root):
    with pytest.raises(WorkbookError, match="no profile 'tpu'.*known profiles: gpu"):
        P.profile_section("tpu", "smoke")
    with pytest.raises(WorkbookError, match="no notebook 'nope'; known notebooks: smoke"):
        P.notebook_path("nope")


def test_cli_values_are_yaml():
    assert P.parse_cli_value("[1, 8]") == [1, 8]
    assert P.parse_cli_value("cuda") == "cuda"
    assert P.parse_cli_value("2") == 2


def test_papermill_outputs_beside_the_notebooks_are_not_notebooks(tmp_path, monkeypatch):
    """`papermill X.ipynb out.ipynb` run from notebooks/ leaves out.ipynb there; `make` must not run it."""
    monkeypatch.setattr(P, "notebooks_dir", lambda: tmp_path)
    for name in ("pos_interp", "outliers", "out", "out-gpu", "out1", "out_a", "out-pytest-17531"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert P.list_notebooks() == ["outliers", "pos_interp"]
