"""workbook.spec: each parameter declared once, read from papermill's text, checked in one sentence;
every notebook's parameters cell is its spec's cell_source()."""
import importlib
import json
import pkgutil

import pytest
import workbook.specs
from workbook import params, spec
from workbook.errors import ParameterError
from workbook.params import notebook_files
from workbook.spec import Param, Spec, Values


def _msg(p: Param, value) -> str:
    with pytest.raises(ParameterError) as e:
        p.check(value)
    return str(e.value)


@pytest.mark.parametrize("typ,text,value", [
    ("bool", "false", False), ("bool", "True", True), ("bool", True, True),
    ("list", "[1, 2]", [1, 2]), ("list", "1,2", [1, 2]), ("list", "a, b", ["a", "b"]),
    ("list", 5, [5]), ("list", (1, 2), [1, 2]),
    ("dict", "{a: 1}", {"a": 1}), ("dict", {"a": 1}, {"a": 1}),
    ("int", "3", 3), ("int", 3.0, 3), ("float", "1e-3", 1e-3), ("float", 2, 2.0),
    ("str", 3, "3"), ("str", None, ""),
])
def test_papermill_text_is_read_as_the_declared_type(typ, text, value):
    got = Param("x", typ, None, "").check(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("typ,text,allowed", [
    ("bool", "no", "true or false"), ("int", "3.5", "an integer"), ("int", True, "an integer"),
    ("int", "x", "an integer"), ("float", True, "a number"), ("float", "fast", "a number"),
    ("str", [1], "text"), ("dict", "[1]", "a mapping such as {a: 1}"),
])
def test_a_value_of_the_wrong_type_is_one_sentence(typ, text, allowed):
    msg = _msg(Param("x", typ, None, ""), text)
    assert msg == f"Parameter x={text!r} is not allowed: {allowed}."


def test_choices_and_ranges():
    backend = Param("backend", "str", "cpu", "", choices=("cpu", "cuda"))
    assert backend.check("cuda") == "cuda"
    assert _msg(backend, "tpu") == "Parameter backend='tpu' is not allowed: one of cpu, cuda."
    n = Param("n", "int", 1, "", low=1, high=4)
    assert n.check("4") == 4
    assert _msg(n, 5) == "Parameter n=5 is not allowed: an integer from 1 to 4."
    assert _msg(Param("n", "int", 1, "", low=1), 0) == (
        "Parameter n=0 is not allowed: an integer of at least 1.")
    assert _msg(Param("n", "int", 1, "", high=4), "5") == (
        "Parameter n='5' is not allowed: an integer of at most 4.")
    t = Param("t", "float", 1.0, "", above=0)
    assert t.check("0.5") == 0.5
    assert _msg(t, 0.0) == "Parameter t=0.0 is not allowed: a number greater than 0."
    assert _msg(Param("t", "float", 1.0, "", above=0, high=2), 3) == (
        "Parameter t=3 is not allowed: a number greater than 0 and at most 2.")


def test_list_items_and_nonempty():
    sizes = Param("sizes", "list", [1], "", item="int", low=1, nonempty=True)
    assert sizes.check("[1, 2]") == [1, 2] and sizes.check("3,4") == [3, 4]
    allowed = "a non-empty list of integers of at least 1"
    for bad in ([], "[1, 0]", "[1, a]", [1.5], [True]):
        assert _msg(sizes, bad) == f"Parameter sizes={bad!r} is not allowed: {allowed}."
    names = Param("impls", "list", ["a"], "", item="str", choices=("a", "b"))
    assert names.check("a,b") == ["a", "b"]
    assert _msg(names, "a,c") == "Parameter impls='a,c' is not allowed: a list of names from a, b."
    assert Param("xs", "list", [1.0], "", item="float").check("[1, 2.5]") == [1.0, 2.5]
    assert _msg(Param("s", "str", "x", "", nonempty=True), "") == (
        "Parameter s='' is not allowed: non-empty text.")
    assert _msg(Param("m", "str", "x", "", allowed="a model name"), [1]) == (
        "Parameter m=[1] is not allowed: a model name.")


def test_a_parameter_must_have_a_known_type():
    with pytest.raises(ValueError, match="type 'tuple'"):
        Param("x", "tuple", (), "")
    with pytest.raises(ValueError, match="declared twice"):
        Spec("nb", [Param("x", "int", 1, ""), Param("x", "int", 2, "")])


SPEC = Spec("nb", [Param("cores", "int", 1, "NeuronCores", low=1),
                   Param("seed", "int", 0, "seed", low=0),
                   Param("dtypes", "list", ["float32"], "dtypes", item="str", nonempty=True)])


def test_check_fills_defaults_and_refuses_an_unknown_name():
    assert SPEC.check({"cores": "2"}) == {"cores": 2, "seed": 0, "dtypes": ["float32"]}
    assert SPEC.check({"seed": 3}, partial=True) == {"seed": 3}
    with pytest.raises(ParameterError) as e:
        SPEC.check({"cors": 2})
    assert str(e.value) == ("Parameter cors=2 is not allowed: not a parameter of nb, whose "
                            "parameters are cores, seed, dtypes.")


def test_take_refuses_a_name_papermill_injected_that_is_not_declared():
    injected = "# Parameters\ncors = 2\nseed = 1\n"
    history = ["", "cores: int = 1  # NeuronCores", injected]
    ns = {"cores": 1, "seed": 1, "dtypes": ["float32"], "cors": 2, "In": history}
    with pytest.raises(ParameterError) as e:
        SPEC.take(ns, history)
    assert str(e.value) == ("Parameter cors=2 is not allowed: not a parameter of this notebook, "
                            "whose parameters are cores, dtypes, seed.")
    # the latest injected cell counts; JupyterLab and nbmake inject nothing; plain names are read
    ok = ["", "# Parameters\ncors = 2\n", "# Parameters\ncores = '2'\n", "x = 1"]
    assert SPEC.take({**ns, "cores": "2"}, ok) == {"cores": 2, "seed": 1, "dtypes": ["float32"]}
    assert SPEC.take({"seed": "5"}, ["", "cores: int = 1"]).seed == 5


def test_values_read_as_attributes():
    v = SPEC.defaults()
    assert isinstance(v, Values) and isinstance(v, dict)
    assert v.cores == 1 and v["dtypes"] == ["float32"]
    assert v.replace(cores=4).cores == 4 and v.cores == 1
    with pytest.raises(AttributeError, match="no parameter 'cors'"):
        v.cors


def _specs():
    for m in pkgutil.iter_modules(workbook.specs.__path__):
        yield importlib.import_module(f"workbook.specs.{m.name}").SPEC


@pytest.mark.parametrize("s", [SPEC, *_specs()], ids=lambda s: s.notebook)
def test_cell_source_reads_back_as_the_same_defaults(s):
    parsed = params.parse_parameters(s.cell_source())
    assert list(parsed) == list(s.params)
    for p in s:
        assert parsed[p.name] == params.Param(p.name, p.type, p.default, p.help), p.name
        assert p.check(p.default) == p.default, f"{p.name}'s default breaks its own rules"


def test_every_notebook_parameters_cell_is_its_spec():
    for nb in notebook_files():
        declared = spec.get(nb.stem)
        assert declared is not None, f"{nb.name} has no spec in lib/workbook/specs/{nb.stem}.py"
        cell = params.parameters_source(json.loads(nb.read_text()))
        assert cell == declared.cell_source(), (
            f"{nb.name}'s parameters cell differs from its spec; run `workbook params {nb.stem} "
            "--write-cell`")


def test_specs_import_nothing_heavy():
    """The runner and `workbook params` read every spec without starting torch."""
    from conftest import assert_imports_without

    specs = [f"workbook.specs.{p.stem}" for p in notebook_files()]
    assert_imports_without(specs, {"torch", "transformers"})


def test_a_dict_checks_its_keys_against_choices_and_its_values_by_item_type_and_bounds():
    p = Param("tol", "dict", {}, "", choices=("a", "b"), item="float", low=0, allowed="a to numbers")
    assert p.check("{a: 1, b: 2e-2}") == {"a": 1.0, "b": 0.02}  # YAML 1.1 reads 2e-2 as text
    for bad in ({"c": 1}, {"a": -1}, {"a": "x"}, {"a": True}):
        with pytest.raises(ParameterError, match=r"tol=.* is not allowed: a to numbers\."):
            p.check(bad)
