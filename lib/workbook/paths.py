"""Where things live, resolved from the repository root, never from the current directory.

papermill starts the kernel in the caller's directory while JupyterLab and nbmake start it in the
notebook's folder: every path the workbook uses goes through here so all three agree.
"""
from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The repository root: ``WORKBOOK_ROOT`` if set, else the folder above ``lib/`` (editable)."""
    env = os.environ.get("WORKBOOK_ROOT")
    if env:
        return Path(env).resolve()
    root = _PKG.parent.parent
    if (root / "notebooks").is_dir():
        return root
    return Path.cwd().resolve()


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def params_dir() -> Path:
    return repo_root() / "params"


def outputs_dir() -> Path:
    """Run folders go here; ``WORKBOOK_OUTPUTS`` overrides (tests use a temporary folder)."""
    env = os.environ.get("WORKBOOK_OUTPUTS")
    return Path(env).resolve() if env else repo_root() / "outputs"


def lib_dir() -> Path:
    return _PKG


def shown(path) -> str:
    """A path as results and reports show it: relative to the repository root when inside it
    (results are shared between machines, so they carry no machine paths where avoidable)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(repo_root()))
    except ValueError:
        return str(p)
