"""Errors that users see.

A bad parameter must read as one clear sentence (parameter, value given, what is allowed), not as a
traceback.  IPython calls ``_render_traceback_`` when an exception defines it, so in a notebook cell
(JupyterLab, papermill, nbmake) the error shows as that sentence alone; papermill still records the
failure and exits non-zero.
"""
from __future__ import annotations


class WorkbookError(Exception):
    """An error whose message is meant for the user, shown without a traceback in notebooks."""

    def _render_traceback_(self) -> list[str]:  # IPython hook
        return [f"\x1b[1;31m{type(self).__name__}\x1b[0m: {self}"]


class ParameterError(WorkbookError, ValueError):
    """A parameter value that is not allowed. Build it with :func:`bad_param` for a uniform
    sentence; ``name`` is then the parameter it names, so a caller can restate a library's check in
    its own parameters' terms."""

    name: str | None = None


def cell_error(name: str, value, execution_count) -> str:
    """A run's error as the runner, ``workbook report`` and the adhoc record all state it: the
    exception and the cell as the notebook labels it (``In [N]``)."""
    return f"{name}: {value} (In [{execution_count}])"


def bad_param(name: str, value, allowed: str) -> ParameterError:
    """``name=value`` is not allowed; ``allowed`` says what is (e.g. "one of cpu, cuda, auto")."""
    e = ParameterError(f"Parameter {name}={value!r} is not allowed: {allowed}.")
    e.name = name
    return e
