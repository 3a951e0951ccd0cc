"""An experiment's parameters, declared once: name, type, default, allowed values and help.

Each experiment declares a :class:`Spec` in ``workbook/specs/<notebook>.py`` (a module that
imports nothing heavy, so the CLI can read it). Everything else comes from that one declaration:
the notebook's ``parameters`` cell (:meth:`Spec.cell_source`; a test keeps the two equal),
``workbook params``, the runner's checks before a kernel starts, and the notebook's first cell,
which calls :meth:`Spec.take` and hands the checked :class:`Values` to the experiment. Rules that
relate two parameters, or depend on the model or the machine, stay in the experiment's
``configure``; a rule about one value lives here.
"""
from __future__ import annotations

from dataclasses import dataclass

from workbook.errors import bad_param

TYPES = ("str", "int", "float", "bool", "list", "dict")
SEED_MAX = 2 ** 32 - 1  # numpy's and torch's generators both take it; numpy refuses larger


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # one of TYPES, as the parameters cell annotates it
    default: object
    help: str
    choices: tuple = ()  # allowed values (of each item, for a list; the keys, for a dict)
    low: float | None = None  # smallest allowed number (of each item / value, for a list / dict)
    high: float | None = None
    above: float | None = None  # a number must be greater than this
    item: str = ""  # a list's item type or a dict's value type: int, float or str (empty: anything)
    nonempty: bool = False  # a list or text that may not be empty
    allowed: str = ""  # what is allowed, in words, where the generated sentence would be vague

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: type {self.type!r} is not one of {TYPES}")

    def describe_allowed(self) -> str:
        if self.allowed:
            return self.allowed
        if self.type == "bool":
            return "true or false"
        what = {"int": "an integer", "float": "a number", "dict": "a mapping such as {a: 1}",
                "str": "non-empty text" if self.nonempty else "text"}.get(self.type, "")
        if self.type == "list":
            what = "a non-empty list" if self.nonempty else "a list"
            if self.item:
                what += " of " + {"int": "integers", "float": "numbers", "str": "names"}[self.item]
        if self.choices:
            names = ", ".join(str(c) for c in self.choices)
            return (what + " from " if self.type == "list" else "one of ") + names
        return what + _bounds(self)

    def check(self, value):
        """``value`` converted to this parameter's type and checked, or a one-sentence
        ParameterError."""
        v = _convert(self, value)
        if self.nonempty and self.type in ("str", "list", "dict") and not v:
            raise bad_param(self.name, value, self.describe_allowed())
        if self.item and self.type in ("list", "dict"):
            each = Param(self.name, self.item, None, "")
            try:  # the sentence names the whole value, not the item
                v = ([_convert(each, x) for x in v] if self.type == "list"
                     else {k: _convert(each, x) for k, x in v.items()})
            except ValueError:
                raise bad_param(self.name, value, self.describe_allowed()) from None
        names = list(v) if self.type in ("list", "dict") else [v]  # what choices apply to
        numbers = list(v.values()) if self.type == "dict" else names
        if self.choices and any(x not in self.choices for x in names):
            raise bad_param(self.name, value, self.describe_allowed())
        for x in numbers:
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                if ((self.low is not None and x < self.low)
                        or (self.high is not None and x > self.high)
                        or (self.above is not None and x <= self.above)):
                    raise bad_param(self.name, value, self.describe_allowed())
        return v

    def line(self) -> str:
        """The parameters-cell line: ``name: type = literal  # help``."""
        return f"{self.name}: {self.type} = {_literal(self.default)}  # {self.help}"


def _bounds(p: Param) -> str:
    if p.above is not None:
        high = f" and at most {_num(p.high)}" if p.high is not None else ""
        return f" greater than {_num(p.above)}" + high
    if p.low is not None and p.high is not None:
        return f" from {_num(p.low)} to {_num(p.high)}"
    if p.low is not None:
        return f" of at least {_num(p.low)}"
    if p.high is not None:
        return f" of at most {_num(p.high)}"
    return ""


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _literal(v) -> str:
    """A Python literal that papermill and JupyterLab read back as the same value."""
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _convert(p: Param, value):
    """Plain papermill passes ``-p x false``, ``-p xs "[1, 2]"`` and ``-p d "{a: 1}"`` as text:
    read it."""
    t, given = p.type, value  # the sentence names the value as given
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif t == "int":
        if isinstance(value, str):
            value = _yaml(value) if value.strip() else value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif t == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t == "str":
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif t == "list":
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            parsed = _yaml(value) if value.strip().startswith("[") else None
            if isinstance(parsed, list):
                return parsed
            return [_yaml(x.strip()) for x in value.split(",") if x.strip()]
        if value is not None and not isinstance(value, dict):
            return [value]
    elif t == "dict":
        if isinstance(value, str):
            value = _yaml(value)
        if isinstance(value, dict):
            return dict(value)
    raise bad_param(p.name, given, p.describe_allowed())


class Values(dict):
    """Checked parameter values: a dict (what ``record.start`` stores) read as attributes
    (``P.cores``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}") from None

    def replace(self, **changes) -> Values:
        return Values({**self, **changes})


class Spec:
    """The parameters of one notebook, in the order its parameters cell lists them."""

    def __init__(self, notebook: str, params: list[Param]):
        self.notebook = notebook
        self.params = {p.name: p for p in params}
        if len(self.params) != len(params):
            raise ValueError(f"{notebook}: a parameter is declared twice")

    def __iter__(self):
        return iter(self.params.values())

    def defaults(self) -> Values:
        return Values({p.name: p.default for p in self})

    def cell_source(self) -> str:
        return "\n".join(p.line() for p in self)

    def check(self, values: dict, *, partial: bool = False) -> Values:
        """Every value converted and checked; an unknown name refused. ``partial``: only the given
        names."""
        for k in values:
            if k not in self.params:
                raise bad_param(k, values[k], f"not a parameter of {self.notebook}, whose "
                                              "parameters are " + ", ".join(self.params))
        names = list(values) if partial else list(self.params)
        merged = {**({} if partial else self.defaults()), **values}
        return Values({k: self.params[k].check(merged[k]) for k in names})

    def take(self, namespace: dict, history=None) -> Values:
        """The notebook's parameters as its cells left them (``globals()``), checked. A name plain
        papermill injected that the notebook does not declare (a misspelt ``-p``) is refused too:
        papermill itself only warns and runs everything with the default."""
        from workbook.checks import injected_names

        for name in injected_names(history) or []:
            if name not in self.params:
                raise bad_param(name, namespace.get(name), "not a parameter of this notebook, "
                                "whose parameters are " + ", ".join(sorted(self.params)))
        return self.check({k: namespace[k] for k in self.params if k in namespace})


def write_cell(notebook_path) -> bool:
    """Rewrite a notebook's ``parameters`` cell from its spec; True when the cell changed."""
    import json
    from pathlib import Path

    path = Path(notebook_path)
    spec = get(path.stem)
    if spec is None:
        from workbook.errors import WorkbookError

        raise WorkbookError(f"{path.stem} has no spec: declare one in "
                            f"lib/workbook/specs/{path.stem}.py.")
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = spec.cell_source().split("\n")
    new = [ln + "\n" for ln in lines[:-1]] + lines[-1:]
    if cell["source"] == new:
        return False
    cell["source"] = new
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=True) + "\n")
    return True


def get(notebook: str) -> Spec | None:
    """The declared spec of a notebook (``workbook.specs.<notebook>.SPEC``), or None for one
    without."""
    import importlib

    try:
        mod = importlib.import_module(f"workbook.specs.{notebook}")
    except ModuleNotFoundError as e:
        if e.name in (f"workbook.specs.{notebook}", "workbook.specs"):
            return None
        raise
    return mod.SPEC
