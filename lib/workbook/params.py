"""Notebook parameters: read the defaults, merge the overrides, check names and types.

A notebook's ``parameters`` cell holds plain annotated assignments (``name: type = value # help``),
which papermill and JupyterLab understand as they are. The runner merges, in increasing priority:
notebook defaults < profile section (``params/<profile>.yaml``, one section per notebook) <
parameter file < ``-p NAME VALUE``. Names and types are checked here; the meaning of values is
checked by the notebook's first cell, so plain papermill gets the same checks.
"""
from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import yaml

from workbook.errors import WorkbookError, bad_param
from workbook.paths import notebooks_dir, params_dir


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # the annotation as written: int, float, str, bool, list
    default: object
    help: str


def notebook_path(name: str) -> Path:
    """``pos_interp``, ``pos_interp.ipynb`` or a path to a notebook -> the notebook's path."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p.resolve()
    cand = notebooks_dir() / (p.stem + ".ipynb")
    if cand.exists():
        return cand
    known = ", ".join(list_notebooks()) or "(none)"
    raise WorkbookError(f"There is no notebook {name!r}; known notebooks: {known}.")


def is_executed_copy(path: Path) -> bool:
    """``out.ipynb``, ``out-gpu.ipynb``, ``out1.ipynb``: what plain papermill wrote when run from
    notebooks/ (git ignores the same names), never a notebook of the project."""
    return re.fullmatch(r"out([-_0-9].*)?", Path(path).stem) is not None


def notebook_files() -> list[Path]:
    """The project's notebooks, without papermill's executed copies lying beside them."""
    return sorted(p for p in notebooks_dir().glob("*.ipynb") if not is_executed_copy(p))


def list_notebooks() -> list[str]:
    return [p.stem for p in notebook_files()]


def parameters_source(nb: dict) -> str:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell["source"]
            return "".join(src) if isinstance(src, list) else src
    raise WorkbookError("The notebook has no cell tagged 'parameters'.")


def parse_parameters(source: str) -> dict[str, Param]:
    """Parse ``name: type = literal  # help`` lines (what papermill's --help-notebook reads)."""
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.value is not None):
            name = node.target.id
            out[name] = Param(name, ast.unparse(node.annotation), ast.literal_eval(node.value),
                              comments.get(node.lineno, ""))
    return out


def notebook_parameters(path: Path) -> dict[str, Param]:
    return parse_parameters(parameters_source(json.loads(Path(path).read_text())))


def parse_cli_value(text: str):
    """``-p`` values are YAML scalars or lists: ``2``, ``1e-3``, ``true``, ``[224, 384]``,
    ``cuda``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(p: Param, value):
    """``value`` as the parameter's declared type, or a ParameterError saying what is allowed: the
    conversion a declared spec makes (:mod:`workbook.spec`), for a notebook without one."""
    from workbook import spec

    if p.type not in spec.TYPES:  # an annotation the workbook does not know: passed as given
        return value
    return spec.Param(p.name, p.type, None, "").check(value)


def load_yaml(path: Path, what: str) -> dict:
    if not path.exists():
        raise WorkbookError(f"The {what} {str(path)!r} does not exist.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise WorkbookError(f"The {what} {str(path)!r} must hold a mapping of parameter names to "
                            "values.")
    return data


def profile_section(profile: str, notebook: str) -> dict:
    """The ``notebook`` section of ``params/<profile>.yaml`` ({} when the profile has none)."""
    path = params_dir() / f"{profile}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in params_dir().glob("*.yaml"))) or "(none)"
        raise WorkbookError(f"There is no profile {profile!r} (no params/{profile}.yaml); known "
                            f"profiles: {known}.")
    data = load_yaml(path, "profile")
    return dict(data.get(notebook) or {})


def file_section(path: str, notebook: str) -> dict:
    """A parameter file is flat, or sectioned by notebook name like a profile."""
    data = load_yaml(Path(path), "parameter file")
    if isinstance(data.get(notebook), dict):
        return dict(data[notebook])
    return data


def merge(notebook: str, defaults: dict[str, Param], *, profile: str | None = None,
          file: str | None = None, cli: dict | None = None) -> tuple[dict, dict]:
    """Merged, checked parameters and, for each, where its value came from. A notebook with a
    declared spec (:mod:`workbook.spec`) has each value checked against its allowed values here,
    before any kernel starts; another notebook gets the type checks its parameters cell's
    annotations allow."""
    from workbook import spec as spec_mod

    spec = spec_mod.get(notebook)
    values = {k: p.default for k, p in defaults.items()}
    source = {k: "default" for k in defaults}
    layers = []
    if profile:
        layers.append((f"profile {profile}", profile_section(profile, notebook)))
    if file:
        layers.append((f"file {Path(file).name}", file_section(file, notebook)))
    if cli:
        layers.append(("-p", cli))
    for label, layer in layers:
        for k, v in layer.items():
            if k not in defaults:
                raise bad_param(k, v, f"{notebook} has no such parameter (from {label}); "
                                      f"its parameters are {', '.join(defaults)}")
            checked = spec is not None and k in spec.params
            values[k] = spec.params[k].check(v) if checked else coerce(defaults[k], v)
            source[k] = label
    return values, source
