"""Value checks beyond one parameter's declared rules: integers with bounds that depend on another
value, folders, and the names plain papermill injected into a notebook.

Why it exists: a parameter's own rules live in its spec (:mod:`workbook.spec`); what is left is
checked here in the same one-sentence form (:func:`~workbook.errors.bad_param`): a folder the run
must be able to write, an argument of an entry point called from a shell, a bound that depends on
another value. :func:`injected_names` reads which names plain papermill injected, since it only
warns about a misspelt ``-p cors 2`` and runs everything with the default: :meth:`Spec.take
<workbook.spec.Spec.take>` refuses such a name.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

from workbook.errors import bad_param


def integer(name: str, value, low: int | None = None, high: int | None = None,
            allowed: str | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (bools refused: ``True`` is not a count)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if allowed is None:
            bounds = (f" from {low} to {high}" if low is not None and high is not None
                      else f" of at least {low}" if low is not None
                      else f" of at most {high}" if high is not None else "")
            allowed = "an integer" + bounds
        raise bad_param(name, value, allowed)
    return value


def directory(name: str, value: str) -> Path | None:
    """A folder the run may create and write: empty gives None; an existing file (or a file where a
    parent folder would go), or a folder this user cannot write into, is refused."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, Path)):
        raise bad_param(name, value, "a folder path (text), or empty for the default")
    p = Path(value)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                where = "it" if part == p else f"{str(part)!r}"
                raise bad_param(name, value,
                                f"a folder, or empty for the default ({where} is a file)")
            if not os.access(part, os.W_OK | os.X_OK):
                raise bad_param(name, value,
                                f"a folder this user can write ({str(part)!r} is not writable)")
            break
    return p


# the comment papermill's Python translator puts atop the cell it injects
INJECTED_HEADER = "# Parameters"


def injected_names(history=None) -> list[str] | None:
    """The names assigned in the latest cell that plain papermill injected, read from IPython's
    input history (``In``; ``history`` stands in for it in tests), since papermill leaves no other
    trace in the kernel. None outside IPython and where no cell was injected (JupyterLab,
    nbmake)."""
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return None
        shell = get_ipython()
        if shell is None:
            return None
        history = shell.user_ns.get("In") or []
    cell = next((c for c in reversed(history)
                 if isinstance(c, str) and c.lstrip().startswith(INJECTED_HEADER)), None)
    if cell is None:
        return None
    try:
        tree = ast.parse(cell)
    except SyntaxError:
        return None  # not a cell papermill wrote
    return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)]
