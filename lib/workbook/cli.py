"""The ``workbook`` command: run notebooks, list runs, compare two runs.

Why it exists: plain papermill runs one notebook with no memory of earlier runs; this command merges profile,
file and ``-p`` parameters with type checks, reuses or resumes identical runs, and renders the report, so the
same experiment can be re-run on another machine with one line.

    workbook run NOTEBOOK [-p NAME VALUE ...] [-f FILE.yaml] [--profile NAME] [--force]
        (an identical finished run is reused; an identical unfinished one is resumed; --force does neither)
    workbook run-all [--profile NAME] [--force]
    workbook list
    workbook compare RUN_A RUN_B
    workbook params NOTEBOOK        (the notebook's parameters with their help)
"""
from __future__ import annotations

import argparse
import json
import sys

from workbook.errors import WorkbookError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="workbook", description="Run experiment notebooks into reports.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one notebook into outputs/<notebook>/<run-id>/")
    r.add_argument("notebook")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="override a parameter (YAML value: 2, 1e-3, true, [224, 384])")
    r.add_argument("-f", "--file", help="YAML file of parameters (flat, or one section per notebook)")
    r.add_argument("--profile", help="params/<profile>.yaml section for this notebook (e.g. gpu)")
    r.add_argument("--force", action="store_true",
                   help="run even if an identical finished run exists, and measure everything again rather than "
                        "resume an unfinished one")
    r.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    a = sub.add_parser("run-all", help="run every notebook with its defaults (plus --profile)")
    a.add_argument("--profile")
    a.add_argument("--force", action="store_true")
    sub.add_parser("list", help="list runs with status, duration and headline figures")
    c = sub.add_parser("compare", help="two runs' results side by side")
    c.add_argument("run_a")
    c.add_argument("run_b")
    pp = sub.add_parser("params", help="show a notebook's parameters")
    pp.add_argument("notebook")
    sub.add_parser("index", help="rewrite outputs/index.html")
    return ap


def main(argv: list[str] | None = None) -> int:
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
            _print_list(runner.list_runs())
            return 0
        if args.cmd == "compare":
            from workbook.compare import compare

            print(compare(runner.find_run(args.run_a), runner.find_run(args.run_b)))
            return 0
        if args.cmd == "params":
            for p in P.notebook_parameters(P.notebook_path(args.notebook)).values():
                print(f"{p.name}: {p.type} = {json.dumps(p.default)}    # {p.help}")
            return 0
        if args.cmd == "index":
            print(runner.write_index())
            return 0
    except WorkbookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runner.Terminated:
        print("terminated (SIGTERM): the run is recorded as interrupted; run the same command to resume it",
              file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted: the run is recorded as such; run the same command to resume it", file=sys.stderr)
        return 130
    return 0


def _print_list(runs: list[dict]) -> None:
    from workbook.units import headline_items

    if not runs:
        print("no runs yet (workbook run NOTEBOOK)")
        return
    for r in runs:
        dur = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else "-"
        head = ", ".join(f"{k}: {v}" for k, v in headline_items(r.get("headline", {}))[:4])
        print(f"{r['notebook']:16} {r['run_id']:28} {r.get('status', '?'):11} {dur:>8}  {head}")
        if r.get("error"):
            print(f"{'':46}{r['error'][:100]}")


if __name__ == "__main__":
    sys.exit(main())
