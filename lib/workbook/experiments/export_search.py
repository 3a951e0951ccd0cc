"""The export_search experiment: the (tp, batch size, sequence length) at which a decoder exports.

The search itself is :mod:`workbook.llm.search` (the resumable state file), with its candidates and
rules in :mod:`workbook.llm.search_plan` and its tries in :mod:`workbook.llm.attempts`; this module
fits it to the notebook: it resolves the validator for this machine, applies the rules between the
parameters, the model and the machine before anything is tried, records what the search found, and
shapes it for the report. The notebook calls only this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbook import checks, console, targets
from workbook.errors import ParameterError, bad_param
from workbook.llm import attempts, neuron_export, search
from workbook.llm import search_plan as sp
from workbook.paths import outputs_dir, shown
from workbook.spec import Values
from workbook.specs.export_search import VALIDATORS

STATUS_CODE = {"valid": 4, "valid-by-rule": 3, "pending": 2, "skipped-by-rule": 1, "failed": 0,
               "timeout": 0, "crashed": 0}


@dataclass
class Config:
    p: Values  # the checked parameters
    target: targets.Target  # the validator: neuron, cuda or cpu, and why
    model: str  # the model folder or hub id (the tiny Mistral for an empty model)
    cands: dict  # tps, batches, seqs, each largest first
    heads: int
    max_positions: int
    state_dir: Path
    notes: list[str] = field(default_factory=list)
    neuron_path: str = ""  # nxdi or optimum, with the neuron validator
    neuron_family: str | None = None  # the instance family the neuron validator compiles for
    family_source: str = ""

    @property
    def validator(self) -> str:
        return self.target.name


def configure(P: Values) -> Config:
    """The validator for this machine and the candidates for this model, checked against each other;
    one sentence on error. Nothing is tried here."""
    from workbook.models import mistral

    if P.executor == "ray":
        from workbook.sweep import ray_exec

        ray_exec.require()  # not installed: the one sentence, before anything starts
    elif P.address or P.max_parallel:
        name = "address" if P.address else "max_parallel"
        raise bad_param(name, P[name], "left at its default unless executor is ray")
    model, note = P.model, ""
    if not model or model in mistral.SHAPES:
        model, note = mistral.workbook_model(model)
    config = mistral.load_config(model)  # not a causal LM, or missing: one sentence
    neuron = neuron_export.probe(P.neuron_path, config.model_type, P.instance_type)
    if P.validator == "neuron":  # asked for: a path that cannot run is its own sentence
        chosen = neuron_export.choose(P.neuron_path, config.model_type, P.instance_type)
        neuron = neuron_export.chosen_probe(chosen)
    target = targets.resolve(P.validator, param="validator", choices=VALIDATORS, neuron=neuron)
    state = checks.directory("state_dir", P.state_dir)
    heads, positions = config.num_attention_heads, config.max_position_embeddings
    try:
        cands = sp.candidates(P.total_cores, P.cores_per_device, heads, positions,
                                  P.batch_sizes, P.min_seq)
    except ParameterError as e:  # the model's figures are not parameters: name the one to change
        if e.name == "max_positions":
            raise bad_param("min_seq", P.min_seq, f"a power of two below the model's {positions} "
                            "positions") from None
        if e.name == "num_heads":
            why = ("a count that allows a tensor-parallel size (at least 2, a multiple of "
                   f"cores_per_device={P.cores_per_device}) dividing the model's {heads} attention "
                   "heads")
            raise bad_param("total_cores", P.total_cores, why) from None
        raise
    if P.executor == "local":  # on a cluster, each try is checked against the nodes it may use
        attempts.check_fits(cands, target, "total_cores", P.total_cores)
    cfg = Config(p=P, target=target, model=model, cands=cands, heads=heads, max_positions=positions,
                 state_dir=state or outputs_dir() / "export_search" / "state")
    if target.name == "neuron":
        cfg.neuron_path, why = neuron.chosen
        cfg.neuron_family, cfg.family_source = neuron_export.family(P.instance_type)
        fam = cfg.neuron_family or "an unknown instance family"
        cfg.notes.append(f"neuron path: {cfg.neuron_path} on {fam} ({cfg.family_source}); {why}")
        if cfg.neuron_path == "optimum":
            cfg.notes.append(neuron_export.cache_lookup(model))
    # a state file of another validator, or of other settings, is refused here, not when it opens
    search.read_state(search.state_path(cfg.state_dir, cfg.model), validator(cfg))
    if note:
        cfg.notes.append(note)
    if target.name == "cpu":
        cfg.notes.append("cpu validator: every attempt is a gloo tensor-parallel load on CPU cores "
                         "plus one forward; the memory rule is the weights + KV cache estimate "
                         "against memory_budget_gb per rank.")
    return cfg


def validator(cfg: Config) -> attempts.Validator:
    """The validator object the search runs each try with."""
    if cfg.validator == "neuron" and cfg.neuron_path == "nxdi":
        return attempts.NxdiValidator(cfg.p.dtype)
    if cfg.validator == "neuron":
        return attempts.NeuronValidator(cfg.p.instance_type or None)
    return attempts.TorchValidator(cfg.validator, cfg.p.memory_budget_gb, cfg.p.dtype,
                                   cfg.p.timeout_s)


def state_file(cfg: Config) -> Path:
    return search.state_path(cfg.state_dir, cfg.model)


def start_record(cfg: Config, rec) -> None:
    rec.set(validator=cfg.validator, validator_reason=cfg.target.reason, model=shown(cfg.model),
            state_file=shown(state_file(cfg)))
    if cfg.validator == "neuron":
        rec.set(neuron_path=cfg.neuron_path, instance_family=cfg.neuron_family,
                instance_family_source=cfg.family_source)
    for n in cfg.notes:
        rec.note(n)


def setup_text(cfg: Config) -> str:
    """The set-up in words: the notes, then which validator and why."""
    return "\n".join(cfg.notes + [f"validator: {cfg.validator} ({cfg.target.reason})"])


def describe(cfg: Config) -> list[dict]:
    """The candidate sizes this run searches."""
    c = cfg.cands
    return [{"tensor_parallel_sizes": ", ".join(map(str, c["tps"])),
             "batch_sizes": ", ".join(map(str, c["batches"])),
             "sequence_lengths": ", ".join(map(str, c["seqs"])),
             "combinations": len(c["tps"]) * len(c["batches"]) * len(c["seqs"]),
             "heads": cfg.heads, "max_positions": cfg.max_positions}]


def run(cfg: Config, rec, log=print) -> dict:
    """Run (or resume) the search, then record the counts by status, every configuration, the
    optimal ones and the headline; returns the final state."""
    dispatch = None
    if cfg.p.executor == "ray":
        from workbook.llm.search_ray import RayDispatch

        dispatch = RayDispatch(cfg.p.address or None, cfg.p.max_parallel, log=log)
        try:
            dispatch.check(validator(cfg).name, cfg.cands["tps"])
        except Exception:
            dispatch.close()
            raise
    try:
        # each try's result is the search's progress: live in the cell and under the runner's
        # line in the terminal, then in the run's log (the report has every try in its table)
        state = search.search(cfg.model, validator(cfg), cfg.cands, cfg.state_dir,
                              cfg.p.timeout_s, log=log, dispatch=dispatch,
                              tried=lambda line: console.relay(f"[search] {line}"))
    finally:
        if dispatch is not None:
            dispatch.close()
    for r in sp.counts(state):
        rec.add("counts", r)
    rows = sp.summary(state)
    for r in rows:
        rec.add("configurations", r)
    rec.keys("configurations", ["tp", "batch", "seq"])
    best = sp.optimal(state)
    for r in best:
        rec.add("optimal", r)
    rec.headline(valid=sum(r["status"] in sp.VALID for r in rows),
                 tested=len(state["attempts"]), search_seconds=state.get("seconds_total"),
                 optimal=", ".join(f"tp{r['tp']}/b{r['batch']}/s{r['seq']}" for r in best))
    return state


# what the notebook shows, straight from the search
counts, summary, optimal = sp.counts, sp.summary, sp.optimal


def counts_sentence(state: dict) -> str:
    """The counts by status as the one line the report reads above the maps."""
    rows = sp.counts(state)
    total = sum(r["configurations"] for r in rows)
    parts = [f"{r['configurations']} {r['status'].replace('-', ' ')}" for r in rows]
    return f"{total} configurations: " + " · ".join(parts) + f"; {len(state['attempts'])} tested."


def time_spent(state: dict) -> str:
    return (f"time spent searching (all runs of this state file): "
            f"{state.get('seconds_total', 0):.1f} s")


def failures(state: dict) -> list[dict]:
    """Tested configurations that did not work, with the last lines of their log."""
    return [{"tp": a["tp"], "batch": a["batch"], "seq": a["seq"], "status": a["status"],
             "log_tail": "\n".join(a.get("log_tail", [])[-6:])}
            for a in state["attempts"] if a["status"] not in sp.VALID]


def heatmap_data(state: dict, tp: int) -> dict:
    g = sp.grid(state, tp)
    z = [[STATUS_CODE[s] for s in row] for row in g["status"]]
    return {"z": z, "x": [str(s) for s in g["seqs"]], "y": [str(b) for b in g["batches"]],
            "text": g["status"]}


def heatmaps(state: dict) -> list:
    """One figure per tensor-parallel size: batch size against sequence length, coloured by status.
    """
    from workbook import plots

    figs = []
    for tp in state["candidates"]["tps"]:
        h = heatmap_data(state, tp)
        fig = plots.heatmap(h["z"], x=h["x"], y=h["y"], title=f"tp={tp}", zmin=0, zmax=4,
                            colorscale="RdYlGn")
        fig.update_traces(text=h["text"], texttemplate="%{text}")
        fig.update_layout(xaxis_title="sequence length", yaxis_title="batch size")
        figs.append(fig)
    return figs
