"""A sweep's points: the product of the axes given on the command line, each checked like a run.

A ``-p NAME VALUE`` whose value is a list is an axis: one point per value. A parameter that is
itself a list (``resolutions``, ``sizes``) is swept by a list of lists
(``-p sizes "[[1, 2], [4]]"``); a plain list is its one fixed value. Every point is merged with
the profile and the parameter file and checked as ``workbook run`` would check it, so a bad value
stops the sweep, in one sentence, before any point runs. A point's run key
(:func:`workbook.runner.prepare`) names the run folder an identical run reuses: that is how a
sweep finds what its points already did.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from workbook.errors import WorkbookError, bad_param


@dataclass
class Point:
    index: int
    params: dict  # the swept values of this point
    key: str  # its run key
    values: dict  # every parameter of its run, merged
    gpus: int  # GPUs one run of it takes (0: none)
    neuron_cores: int = 0  # NeuronCores one run of it takes
    rev: str | None = None  # the git revision it runs at (None: this tree)
    sha: str | None = None
    repeat: int = 0  # which run of this point at this revision (0: the first)

    @property
    def label(self) -> str:
        return ", ".join([f"{k}={json.dumps(v)}" for k, v in self.params.items()]
                         + ([f"rev={self.rev}"] if self.rev else [])
                         + ([f"repeat {self.repeat + 1}"] if self.repeat else []))


def split_axes(notebook: str, cli: dict, allow_empty: bool = False) -> tuple[dict, dict]:
    """``-p`` values -> (axes: name -> values to sweep, fixed: name -> value); no axis is
    allowed where revisions are swept (``allow_empty``)."""
    from workbook import params as P

    defaults = P.notebook_parameters(P.notebook_path(notebook))
    axes, fixed = {}, {}
    for name, value in cli.items():
        if name not in defaults:
            raise bad_param(name, value, f"{notebook} has no such parameter; its parameters are "
                            + ", ".join(defaults))
        listed = defaults[name].type == "list"
        if isinstance(value, list) and (not listed or any(isinstance(v, list) for v in value)):
            if not value:
                raise bad_param(name, value, "a non-empty list of values to sweep")
            axes[name] = value
        else:
            fixed[name] = value
    if not axes and not allow_empty:
        raise WorkbookError("Nothing to sweep: give at least one parameter a list of values, "
                            "e.g. -p dtype \"[float32, bfloat16]\" (a list parameter takes a list "
                            "of lists).")
    return axes, fixed


def gpus_for(values: dict, visible: int) -> int:
    """GPUs a run with these parameters takes: one a rank or core when its target is cuda (or
    auto, where this machine has GPUs), else none."""
    target = next((values[k] for k in ("backend", "device", "validator") if k in values), None)
    if target == "cuda" or (target == "auto" and visible > 0):
        return max(int(values.get("tp_degree") or values.get("cores") or 1), 1)
    return 0


def neuron_cores_for(values: dict) -> int:
    """NeuronCores a run with these parameters takes: its cores (or ranks) when its target is
    neuron, else none."""
    target = next((values[k] for k in ("backend", "device", "validator") if k in values), None)
    if target == "neuron":
        return max(int(values.get("tp_degree") or values.get("cores") or 1), 1)
    return 0


def points(notebook: str, axes: dict, fixed: dict, *, profile=None, file=None,
           visible_gpus: int = 0) -> list[Point]:
    """Every combination of the axes, checked; identical runs (same key) appear once."""
    from workbook import runner

    out, seen = [], set()
    lib_fp = runner.lib_fingerprint()
    for combo in itertools.product(*axes.values()):
        swept = dict(zip(axes, combo))
        _, _, values, _, _, _, key = runner.prepare(notebook, cli={**fixed, **swept},
                                                    param_file=file, profile=profile,
                                                    lib_fp=lib_fp)
        if key in seen:
            continue
        seen.add(key)
        out.append(Point(len(out), swept, key, values, gpus_for(values, visible_gpus),
                         neuron_cores_for(values)))
    return out


def with_revisions(grid: list[Point], revs: list[tuple[str, str]], repeat: int = 1) -> list[Point]:
    """Each grid point at each revision ``repeat`` times, the revisions' order alternating turn by
    turn (A B, B A, A B, ...); a point's key is its revision's commit, its parameters' key here
    and, past the first, its repeat."""
    from workbook.sweep.revisions import order

    turns = [(g, r) for g in grid for r in range(repeat)]
    return [Point(i, g.params, f"{sha[:12]}:{g.key}" + (f"#{r}" if r else ""), g.values, g.gpus,
                  g.neuron_cores, rev, sha, r)
            for i, ((g, r), (rev, sha)) in enumerate(order(turns, revs))]


def sweep_id(notebook: str, axes: dict, fixed: dict, profile, file, revs=(), repeat=1) -> str:
    """The same command gives the same id (and folder), so running it again continues."""
    blob = json.dumps({"nb": notebook, "axes": axes, "fixed": fixed, "profile": profile,
                       "file": file, **({"revs": [sha for _, sha in revs]} if revs else {}),
                       **({"repeat": repeat} if repeat > 1 else {})},
                      sort_keys=True, default=str)
    return f"{notebook}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
