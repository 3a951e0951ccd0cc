"""The export search's command line: ``python -m workbook.llm.search run|load-neuron``.

A search can take hours on a Neuron instance, where a notebook kernel is not always at hand, so the
same search runs from a shell with the same validators as the notebook (cmd, neuron, cuda, cpu).
Being an entry point, it checks its own arguments once, each in one sentence, before any try
starts.
"""
from __future__ import annotations

import argparse
import sys

from workbook.errors import WorkbookError, bad_param
from workbook.llm import attempts, search, search_plan
from workbook.specs.export_search import DTYPES, INSTANCE_TYPES, NEURON_PATHS

VALIDATORS = ("cmd", "neuron", "cuda", "cpu")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbook.llm.search",
                                description=search.__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="search (or resume searching) the valid export configurations")
    r.add_argument("--model", required=True, help="hub id or local folder")
    r.add_argument("--validator", choices=VALIDATORS, default="neuron")
    r.add_argument("--template", action="append", default=[],
                   help="cmd validator: argv template of one step (repeat for more steps); fields "
                        "{model} {tp} {batch} {seq} {workdir} {python}")
    r.add_argument("--neuron-path", choices=NEURON_PATHS, default="auto",
                   help="neuron validator: nxdi (NxD Inference), optimum (optimum-cli export) or "
                        "auto (workbook.llm.neuron_export)")
    r.add_argument("--instance-type", choices=INSTANCE_TYPES,
                   help="neuron validator (optimum): compile for this target")
    r.add_argument("--no-load", action="store_true", help="neuron validator: compile only")
    r.add_argument("--keep-exports", action="store_true", help="neuron validator: keep the exports")
    r.add_argument("--budget-gb", type=float,
                   help="cuda and cpu validators: GB (10**9 bytes) per device for weights + KV "
                        "cache")
    r.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="cuda and cpu validators and NxD Inference: weights and cache dtype")
    r.add_argument("--state-dir", required=True)
    r.add_argument("--total-cores", type=int, required=True)
    r.add_argument("--cores-per-device", type=int, required=True)
    r.add_argument("--heads", type=int, required=True, help="num_attention_heads")
    r.add_argument("--max-positions", type=int, required=True, help="max_position_embeddings")
    r.add_argument("--batch-sizes", default=",".join(map(str, search_plan.DEFAULT_BATCHES)))
    r.add_argument("--min-seq", type=int, default=1024)
    r.add_argument("--timeout", type=float, required=True, help="seconds for one try")
    ld = sub.add_parser("load-neuron", help="load an exported model with NeuronModelForCausalLM")
    ld.add_argument("path")
    return p


def _validator(args, cands: dict) -> attempts.Validator:
    if args.validator == "cmd":
        if not args.template:
            raise bad_param("--template", None, "at least one argv template with the cmd validator")
        return attempts.CommandValidator(*args.template)
    from workbook import targets

    if args.validator == "neuron":
        from workbook.llm import neuron_export
        from workbook.models import mistral

        model_type = mistral.load_config(args.model).model_type
        path, why = neuron_export.choose(args.neuron_path, model_type, args.instance_type or "")
        print(f"neuron path: {path} ({why})", flush=True)
        if path == "nxdi":
            return attempts.NxdiValidator(args.dtype, keep_compiled=args.keep_exports)
        print(neuron_export.cache_lookup(args.model), flush=True)
        return attempts.NeuronValidator(args.instance_type, load=not args.no_load,
                                        keep_exports=args.keep_exports)
    target = targets.resolve(args.validator, param="--validator", choices=(args.validator,))
    if args.budget_gb is None or not args.budget_gb > 0:
        raise bad_param("--budget-gb", args.budget_gb, "a positive number of GB per device with "
                        f"the {args.validator} validator")
    attempts.check_fits(cands, target, "--total-cores", args.total_cores)
    return attempts.TorchValidator(args.validator, args.budget_gb, args.dtype, args.timeout)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "load-neuron":
            attempts.load_neuron(args.path)
            return 0
        if not args.timeout > 0:
            raise bad_param("--timeout", args.timeout, "a positive number of seconds for one try")
        try:
            batches = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
        except ValueError:
            raise bad_param("--batch-sizes", args.batch_sizes,
                            "comma-separated positive integers") from None
        cands = search_plan.candidates(args.total_cores, args.cores_per_device, args.heads,
                                  args.max_positions, batches, args.min_seq)
        state = search.search(args.model, _validator(args, cands), cands, args.state_dir,
                              args.timeout, log=lambda m: print(m, flush=True))
    except WorkbookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("statuses: " + ", ".join(f"{r['status']} {r['configurations']}"
                                   for r in search_plan.counts(state)))
    for r in search_plan.optimal(state):
        print(f"optimal: tp={r['tp']} batch={r['batch']} seq={r['seq']}")
    return 0
