"""The ``workbook`` command: run notebooks, list runs, compare two runs.

Why it exists: plain papermill runs one notebook with no memory of earlier runs; this command merges
profile, file and ``-p`` parameters with type checks, reuses or resumes identical runs, and renders
the report, so the same experiment can be re-run on another machine with one line.

    workbook run NOTEBOOK [-p NAME VALUE ...] [-f FILE.yaml] [--profile NAME] [--force]
        (an identical finished run is reused; an identical unfinished one is resumed;
        --force does neither)
    workbook run-all [--profile NAME] [--force]
    workbook list [--notebook NAME] [--status ok|failed|interrupted|killed|running]
                  [--param NAME=VALUE ...] [-n N] [--sweep ID]
    workbook compare RUN_A RUN_B [--all] [--tolerance 0.05]
        (what changed beyond noise, as text and as outputs/compare/<A>__<B>.html with figures)
    workbook sweep NOTEBOOK -p NAME "[V1, V2]" ... [--profile P] [-f F] [--max-parallel N]
                   [--rev A --rev B] [--executor local|ray] [--address ADDR]
                                    (every combination, each an ordinary run; the same command
                                    continues a sweep; outputs/sweeps/<id>/report.html)
    workbook params NOTEBOOK        (the notebook's parameters with their help)
    workbook rm RUN [RUN ...]       (remove run folders under outputs/)
    workbook gc --failed [--interrupted] [--dry-run]
                                    (remove failed and/or interrupted runs, never ok ones)
    workbook report NOTEBOOK.ipynb  (report of a plain papermill / JupyterLab run, from its
                                    executed notebook)
    workbook serve [--port N] [model options]
                                    (an OpenAI-compatible server; `workbook serve --help`)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from workbook.errors import WorkbookError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="workbook",
                                 description="Run experiment notebooks into reports.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one notebook into outputs/<notebook>/<run-id>/")
    r.add_argument("notebook")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="override a parameter (YAML value: 2, 1e-3, true, [224, 384])")
    r.add_argument("-f", "--file",
                   help="YAML file of parameters (flat, or one section per notebook)")
    r.add_argument("--profile", help="params/<profile>.yaml section for this notebook (e.g. gpu)")
    r.add_argument("--force", action="store_true",
                   help="run even if an identical finished run exists, and measure everything "
                        "again rather than resume an unfinished one")
    r.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    a = sub.add_parser("run-all", help="run every notebook with its defaults (plus --profile)")
    a.add_argument("--profile")
    a.add_argument("--force", action="store_true")
    ls = sub.add_parser("list",
                        help="list runs with status, duration and headline figures, newest first")
    ls.add_argument("--notebook", metavar="NAME", help="only this notebook's runs")
    ls.add_argument("--status", choices=STATUSES, help="only runs with this status")
    ls.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="only runs whose recorded parameter NAME equals VALUE (YAML, as for -p); "
                         "repeatable")
    ls.add_argument("-n", "--last", type=_count, metavar="N",
                    help="only the newest N runs (after the filters)")
    ls.add_argument("--sweep", metavar="ID", help="only the runs of this sweep's points")
    sw = sub.add_parser("sweep", help="run a notebook over a grid: every -p with a list of values "
                                      "is an axis; each point is an ordinary run")
    sw.add_argument("notebook")
    sw.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUES"),
                    default=[], help='an axis: -p dtype "[float32, bfloat16]" (a list parameter '
                                     'takes a list of lists); a single value is fixed')
    sw.add_argument("-f", "--file", help="YAML file of parameters (as for run)")
    sw.add_argument("--profile", help="params/<profile>.yaml section (as for run)")
    sw.add_argument("--executor", default="local",
                    help="where points run: local (this machine, in parallel without "
                         "oversubscribing it) or ray (tasks on a Ray cluster; needs the ray "
                         "extra)")
    sw.add_argument("--address", default=None, metavar="ADDR",
                    help="with --executor ray: the cluster to join (host:port, or auto for the "
                         "one on this machine); default: a local cluster started for the sweep")
    sw.add_argument("--max-parallel", type=int, default=0, metavar="N",
                    help="points at once (default: one a GPU for GPU points, 1 for CPU points)")
    sw.add_argument("--timeout", type=float, default=None, help="seconds per point")
    sw.add_argument("--rev", action="append", default=[], metavar="REV",
                    help="a git revision to run every point at, in a worktree of its own "
                         "(repeat: --rev main --rev my-branch); revisions alternate A B, B A, ...")
    sw.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="with two --rev: run each point N times at each revision, taking turns, "
                         "so the A/B table has the repeats' range as its noise band")
    c = sub.add_parser("compare",
                       help="what changed beyond noise between two runs of one notebook; also "
                            "written as outputs/compare/<A>__<B>.html with A-vs-B figures")
    c.add_argument("run_a", help="a run id (or unique prefix), notebook/run-id, or a folder "
                                 "with a results.json")
    c.add_argument("run_b")
    c.add_argument("--all", action="store_true", dest="show_all",
                   help="every figure, not only those that changed beyond noise")
    c.add_argument("--tolerance", type=float, default=0.05,
                   help="a figure without a recorded p10-p90 band changed when it moved more than "
                        "this, relative to A (default 0.05: 5%%)")
    pp = sub.add_parser("params", help="show a notebook's parameters")
    pp.add_argument("notebook")
    pp.add_argument("--write-cell", action="store_true",
                    help="rewrite the notebook's parameters cell from its spec "
                         "(lib/workbook/specs/NOTEBOOK.py)")
    sub.add_parser("index", help="rewrite outputs/index.html")
    rm = sub.add_parser("rm", help="remove run folders (outputs/<notebook>/<run-id>), rewrite the "
                                   "index")
    rm.add_argument("runs", nargs="+", metavar="RUN",
                    help="a run id (or unique prefix) or notebook/run-id")
    gc = sub.add_parser("gc",
                        help="remove failed and/or interrupted runs; never ok runs, live runs or "
                                   "outputs/reference/")
    gc.add_argument("--failed", action="store_true", help="remove runs that failed")
    gc.add_argument("--interrupted", action="store_true",
                    help="remove runs that were interrupted, or killed (recorded as running, "
                         "process gone)")
    gc.add_argument("--dry-run", action="store_true",
                    help="say what would be removed, remove nothing")
    rp = sub.add_parser("report",
                        help="the report of a run made by plain papermill or in JupyterLab, from "
                             "its executed notebook, into the run's folder")
    rp.add_argument("executed", metavar="NOTEBOOK.ipynb",
                    help="the notebook papermill wrote (e.g. out.ipynb)")
    sub.add_parser("serve", add_help=False,
                   help="serve a Mistral over HTTP (OpenAI-compatible); see workbook serve --help")
    return ap


STATUSES = ("ok", "failed", "interrupted", "killed", "running")


def _count(text: str) -> int:
    """argparse type for -n/--last: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"-n/--last={text!r} is not allowed: a whole number of "
                                         "runs, at least 1")
    return n


def main(argv: list[str] | None = None) -> int:
    """Run one command; a reader closing the pipe early (``workbook list | head -1``) is fine."""
    try:
        code = _main(argv)
        # a closed pipe shows here rather than at exit, where Python would print a traceback
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python ignores SIGPIPE and raises this instead; send what is left to /dev/null so the
        # flush at exit does not fail again, and exit as a command killed by SIGPIPE would (128 +
        # 13)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # its own options and --help
        from workbook.serve.cli import main as serve

        return serve(argv[1:])
    args = _parser().parse_args(argv)
    from workbook import params as P, runner

    try:
        if args.cmd == "run":
            from workbook.params import parse_cli_value

            cli = {k: parse_cli_value(v) for k, v in args.param}
            info = runner.run(args.notebook, cli=cli, param_file=args.file, profile=args.profile,
                              force=args.force, timeout=args.timeout)
            return info.exit_code
        if args.cmd == "run-all":
            infos = runner.run_all(profile=args.profile, force=args.force)
            bad = [i for i in infos if i.status != "ok"]
            print(f"run-all: {len(infos) - len(bad)} ok, {len(bad)} failed"
                  + (": " + ", ".join(i.notebook for i in bad) if bad else "")
                  + f"\n  {runner.write_index()}")
            return 1 if bad else 0
        if args.cmd == "list":
            runs = runner.list_runs()
            if args.sweep:
                from workbook.sweep.state import load

                ids = {p["run_id"] for p in load(args.sweep)["points"] if p.get("run_id")}
                runs = [r for r in runs if r.get("run_id") in ids]
            runs = _filter_runs(runs, args.notebook, args.status, args.param, args.last)
            _print_list(runs, filtered=bool(args.notebook or args.status or args.param
                                            or args.sweep))
            return 0
        if args.cmd == "sweep":
            from workbook.params import parse_cli_value
            from workbook.sweep.driver import run_sweep

            cli = {k: parse_cli_value(v) for k, v in args.param}
            data = run_sweep(args.notebook, cli, profile=args.profile, file=args.file,
                             max_parallel=args.max_parallel, timeout_s=args.timeout,
                             revs=args.rev, executor=args.executor, address=args.address,
                             repeat=args.repeat)
            return 0 if all(p["status"] == "ok" for p in data["points"]) else 1
        if args.cmd == "compare":
            from workbook import compare, compare_html
            from workbook.paths import shown

            c = compare.diff(_results_dir(args.run_a), _results_dir(args.run_b),
                             tolerance=args.tolerance)
            print(compare.text(c, show_all=args.show_all))
            print(f"\ncompare page: {shown(compare_html.write(c, show_all=args.show_all))}")
            return 0
        if args.cmd == "params":
            from workbook import spec

            path = P.notebook_path(args.notebook)
            declared = spec.get(path.stem)
            if args.write_cell:
                changed = spec.write_cell(path)
                print(f"{path.name}: parameters cell "
                      + ("rewritten from its spec" if changed else "already matches"))
                return 0
            for p in (declared or P.notebook_parameters(path).values()):
                print(f"{p.name}: {p.type} = {json.dumps(p.default)}    # {p.help}")
                if declared:
                    print(f"    allowed: {p.describe_allowed() or 'anything'}")
            return 0
        if args.cmd == "index":
            print(runner.write_index())
            return 0
        if args.cmd == "rm":
            from workbook import prune

            prune.remove(args.runs)
            return 0
        if args.cmd == "gc":
            from workbook import prune

            prune.gc(failed=args.failed, interrupted=args.interrupted, dry_run=args.dry_run)
            return 0
        if args.cmd == "report":
            from workbook import adhoc_report

            return adhoc_report.main(args.executed)
    except WorkbookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runner.Terminated:
        print("terminated (SIGTERM): the run is recorded as interrupted; run the same command to "
              "resume it", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted: the run is recorded as such; run the same command to resume it",
              file=sys.stderr)
        return 130
    return 0


def _results_dir(ref: str):
    """A run folder (runner.find_run), or any folder with a results.json (a committed reference)."""
    from pathlib import Path

    from workbook import runner

    p = Path(ref)
    if (p / "results.json").is_file() and not (p / "run.json").exists():
        return p.resolve()
    return runner.find_run(ref)


def _filter_runs(runs: list[dict], notebook: str | None, status: str | None, params: list[str],
                 last: int | None) -> list[dict]:
    """The runs (newest first) that match every filter given, cut to the newest ``last``."""
    from workbook.params import list_notebooks, parse_cli_value

    if notebook is not None:
        known = sorted(set(list_notebooks()) | {r["notebook"] for r in runs})
        if notebook not in known:
            raise WorkbookError(f"--notebook={notebook!r} is not allowed: one of "
                                f"{', '.join(known) or '(none)'}.")
        runs = [r for r in runs if r["notebook"] == notebook]
    if status is not None:
        runs = [r for r in runs if r.get("status") == status]
    for item in params:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise WorkbookError(f"--param={item!r} is not allowed: NAME=VALUE, e.g. --param n=3 or "
                                f"--param 'sizes=[224, 384]'.")
        name, value = name.strip(), parse_cli_value(text)
        runs = [r for r in runs if name in r.get("params", {}) and _same(r["params"][name], value)]
    return runs[:last] if last else runs


def _same(recorded, wanted) -> bool:
    """A recorded parameter equals a --param value (YAML; 3 matches 3.0, true does not match 1)."""
    if isinstance(recorded, bool) or isinstance(wanted, bool):
        return recorded is wanted
    if isinstance(recorded, (list, tuple)) and isinstance(wanted, (list, tuple)):
        return len(recorded) == len(wanted) and all(_same(a, b) for a, b in zip(recorded, wanted))
    return recorded == wanted


def _print_list(runs: list[dict], filtered: bool = False) -> None:
    from workbook import liveness
    from workbook.units import headline_items

    if not runs:
        print("no runs match those filters" if filtered else "no runs yet (workbook run NOTEBOOK)")
        return
    for r in runs:
        dur = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else "-"
        head = ", ".join(f"{k}: {v}" for k, v in headline_items(r.get("headline", {}))[:4])
        print(f"{r['notebook']:16} {r['run_id']:28} {r.get('status', '?'):11} {dur:>8}  {head}")
        note = r.get("error") or liveness.elsewhere(r)
        if note:
            print(f"{'':46}{note[:100]}")


if __name__ == "__main__":
    sys.exit(main())
