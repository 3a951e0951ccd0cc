"""The revision axis: each git revision in a worktree of its own, its points run with its own lib.

``--rev A --rev B`` checks each commit out once (``git worktree add --detach``) under the sweep's
folder; a point of revision R runs ``workbook run`` with ``WORKBOOK_ROOT`` and ``PYTHONPATH`` at R's
worktree (its notebooks, its lib, in the kernel too), the driver's ``outputs/``, and
``WORKBOOK_GIT_COMMIT`` set to R's commit, so the run records which code produced it. Older
revisions need none of the sweep's code: a point's run is found afterwards by its commit and
parameters in run.json. Revisions take turns in alternating order (A B, then B A, ...) so drift in
the machine falls on both sides; ``--repeat N`` runs each point N times at each revision (measured
again, never reused), so the delta table has the repeats' range as its noise band.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from workbook.errors import bad_param
from workbook.paths import outputs_dir, repo_root


def resolve(revs: list[str]) -> list[tuple[str, str]]:
    """(as given, full commit) for each revision; one sentence for one git does not know."""
    out = []
    for rev in revs:
        r = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           cwd=repo_root(), capture_output=True, text=True)
        if r.returncode != 0:
            raise bad_param("rev", rev, "a commit, branch or tag of this repository")
        out.append((rev, r.stdout.strip()))
    if len({sha for _, sha in out}) != len(out):
        raise bad_param("rev", revs, "different commits")
    return out


def worktree(sweep_dir: Path, sha: str) -> Path:
    """The revision's worktree (made once; reused by the same sweep later)."""
    path = sweep_dir / f"rev-{sha[:10]}"
    if not (path / "lib").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha],
                       cwd=repo_root(), capture_output=True, text=True, check=True)
    return path


def env_for(tree: Path, sha: str) -> dict:
    return {"WORKBOOK_ROOT": str(tree), "PYTHONPATH": str(tree / "lib"),
            "WORKBOOK_OUTPUTS": str(outputs_dir()), "WORKBOOK_GIT_COMMIT": sha[:12]}


def order(grid: list, revs: list[tuple[str, str]]) -> list[tuple]:
    """Every grid point (or turn) with every revision, the revisions' order alternating turn by
    turn."""
    return [(point, r) for i, point in enumerate(grid)
            for r in (revs if i % 2 == 0 else revs[::-1])]


def find_run(notebook: str, sha: str, params: dict, taken=frozenset()) -> Path | None:
    """The newest run of ``notebook`` at commit ``sha`` whose parameters include ``params``, other
    than the runs in ``taken`` (other repeats' runs)."""
    from workbook.runner import read_run

    base = outputs_dir() / notebook
    if not base.is_dir():
        return None
    for d in sorted(base.iterdir(), reverse=True):
        run = read_run(d) if d.name not in taken else None
        if not run:
            continue
        commit = str(((run.get("provenance") or {}).get("git") or {}).get("commit") or "")
        recorded = run.get("params") or {}
        if len(commit) >= 7 and sha.startswith(commit) and all(
                json.dumps(recorded.get(k), sort_keys=True) == json.dumps(v, sort_keys=True)
                for k, v in params.items()):
            return d
    return None
