"""Search for the export configurations of a decoder model that work: tensor-parallel size x batch x sequence.

Why this module exists: whether a decoder exports and loads at a given (tp, batch size, sequence length) is
only known by trying, and on Neuron one try (``optimum-cli export neuron``, then a load onto the cores) takes
minutes to an hour, may hang, may crash, and may be killed together with the search that started it. A
search over tens of such tries must therefore:

- run every try in its own process group with a timeout, and record a crash or a hang as a result (with the
  tail of its log) and go on: one bad configuration never stops the search;
- write its state file after every try, atomically (temp file in the same folder, fsync, ``os.replace``),
  so a search killed at any moment resumes where it stopped and never runs a finished try again;
- try the candidates from the largest down and skip what two rules already decide (below), because memory
  grows with batch size and sequence length;
- keep the rules pure: :func:`candidates` and :func:`plan` are functions of their inputs, tested against
  hand-worked examples, and :func:`search` only executes what :func:`plan` leaves "pending".

Candidates: tensor-parallel sizes that are at least 2, multiples of the cores per device, **not above** the
total cores (the seed said "less than"; a tp equal to every core of the instance is a valid deployment, e.g.
tp 32 on a trn1.32xlarge, so it is a candidate) and divide the attention heads; batch sizes from a list;
sequence lengths that are powers of two from ``min_seq`` up to, strictly below, ``max_position_embeddings``.
All three are tried in decreasing order (tp, then batch, then sequence).

Rules (``RULES_VERSION``), applied by :func:`plan` to candidates that have no result of their own:

1. *valid-by-rule*: if (tp, b, s') is valid, every shorter s < s' at the same (tp, b) is valid; the reason
   names the nearest tested config that implies it. A longer, untested sequence stays pending: nothing
   implies it (with decreasing order this only happens on resume with changed candidates).
2. *skipped-by-rule*: if tp has a largest valid batch size B, batch sizes above B are not tried at that tp.
   Batches are tried in decreasing order, so during a fresh run a larger batch always has results already;
   the rule matters for results loaded on resume, and is harmless otherwise.

A try that has a result is never run again. To retry one (say after raising the timeout), delete its entry
from ``attempts`` in the state file. If the search process itself is killed during a try, the try is run
again on resume; after ``max_interruptions`` such kills of the same try it is recorded as "crashed", so
that a configuration that takes the whole search down cannot make resuming loop forever.

Process hygiene (Linux): each step starts a new session (process group) that is killed as a whole after the
step, on timeout and on Ctrl-C; the step's direct child also gets ``PR_SET_PDEATHSIG`` so it dies with a
killed search; and every process of a try carries a token in its environment by which leftovers of a
killed search are found in ``/proc`` and stopped on resume (a Neuron compile holding cores would otherwise
make every later try fail).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from workbook import checks
from workbook.errors import WorkbookError, bad_param
from workbook.provenance import now_iso
from workbook.record import write_json_atomic

try:  # POSIX only: one search per state file
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

RULES_VERSION = 1
DEFAULT_BATCHES = (1, 4, 8, 16, 32, 64, 128)
TESTED = ("valid", "failed", "timeout", "crashed")
STATUSES = TESTED + ("valid-by-rule", "skipped-by-rule", "pending")
VALID = ("valid", "valid-by-rule")
LOG_TAIL_LINES = 40
LOG_LINE_CHARS = 500
TOKEN_ENV = "WORKBOOK_EXPORT_ATTEMPT"
INSTANCE_TYPES = ("trn1", "inf2", "trn2")
_LIB_DIR = str(Path(__file__).resolve().parents[2])


# ---------------------------------------------------------------- candidates and rules (pure)

def candidates(total_cores: int, cores_per_device: int, num_heads: int, max_positions: int,
               batch_sizes=DEFAULT_BATCHES, min_seq: int = 1024) -> dict:
    """The configurations to search, each list in decreasing order: ``{"tps", "batches", "seqs"}``."""
    checks.integer("total_cores", total_cores, 2,
                   allowed="an integer of at least 2 (tensor parallelism needs two cores)")
    checks.integer("cores_per_device", cores_per_device, 1,
                   allowed="a positive integer (NeuronCores per device, 2 on trn1/inf2)")
    checks.integer("num_heads", num_heads, 1, allowed="a positive integer (the model's num_attention_heads)")
    checks.integer("min_seq", min_seq, 1, allowed="a positive power of two")
    if min_seq & (min_seq - 1):
        raise bad_param("min_seq", min_seq, "a positive power of two")
    checks.integer("max_positions", max_positions, min_seq + 1,
                   allowed=f"an integer above min_seq={min_seq} (the model's max_position_embeddings; sequence "
                   "lengths are the powers of two from min_seq up to, not including, it)")
    batches = list(batch_sizes) if not isinstance(batch_sizes, (str, bytes)) else None
    if not batches or len(set(batches)) != len(batches) or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise bad_param("batch_sizes", batch_sizes, "a non-empty list of distinct positive integers")
    sizes = [t for t in range(cores_per_device, total_cores + 1, cores_per_device) if t >= 2]
    if not sizes:
        raise bad_param("cores_per_device", cores_per_device, f"at most total_cores={total_cores}")
    tps = [t for t in sizes if num_heads % t == 0]
    if not tps:
        raise bad_param("num_heads", num_heads, f"divisible by at least one tensor-parallel size allowed by "
                        f"total_cores={total_cores} and cores_per_device={cores_per_device}: {sizes}")
    seqs, s = [], min_seq
    while s < max_positions:
        seqs.append(s)
        s *= 2
    return {"tps": sorted(tps, reverse=True), "batches": sorted(batches, reverse=True),
            "seqs": sorted(seqs, reverse=True)}


def _normalize_cands(cands) -> dict:
    try:
        out = {k: sorted((int(x) for x in cands[k]), reverse=True) for k in ("tps", "batches", "seqs")}
    except (KeyError, TypeError, ValueError):
        raise bad_param("cands", cands, "the dict that candidates() returns (tps, batches, seqs)") from None
    if not all(out.values()):
        raise bad_param("cands", cands, "non-empty lists of tps, batches and seqs")
    return out


def _results_by_key(results) -> dict:
    """``{(tp, batch, seq): status}`` from attempt records or from such a mapping (statuses or records)."""
    if isinstance(results, dict):
        return {tuple(k): (v if isinstance(v, str) else v["status"]) for k, v in results.items()}
    return {(r["tp"], r["batch"], r["seq"]): r["status"] for r in results}


def plan(cands: dict, results) -> list[tuple]:
    """``(tp, batch, seq, status, reason)`` for every candidate, in the order they are tried.

    ``status`` is the tested result where there is one, else "valid-by-rule" / "skipped-by-rule" (rules 1
    and 2 of the module docstring, ``reason`` says why), else "pending". ``results``: attempt records (dicts
    with tp, batch, seq, status) or a mapping ``{(tp, batch, seq): status}``.
    """
    done = _results_by_key(results)
    rows = []
    for tp in cands["tps"]:
        top = max((b for (t, b, _), st in done.items() if t == tp and st == "valid"), default=None)
        for b in cands["batches"]:
            valid_seqs = sorted(s for (t, bb, s), st in done.items() if (t, bb) == (tp, b) and st == "valid")
            for s in cands["seqs"]:
                if (tp, b, s) in done:
                    rows.append((tp, b, s, done[(tp, b, s)], "tested"))
                    continue
                longer = [v for v in valid_seqs if v > s]
                if longer:
                    rows.append((tp, b, s, "valid-by-rule", f"implied by ({tp}, {b}, {longer[0]}) valid: a shorter "
                                 "sequence at the same tp and batch size needs less memory"))
                elif top is not None and b > top:
                    rows.append((tp, b, s, "skipped-by-rule", f"tp {tp}: the largest valid batch size is {top}; "
                                 "larger batch sizes are not tried"))
                else:
                    rows.append((tp, b, s, "pending", ""))
    return rows


# ---------------------------------------------------------------- validators: what one try runs

class Validator:
    """Says how to try one configuration: ``command`` returns an argv, or a list of argvs run in sequence
    (steps, each its own process); the try is valid only if every step exits 0 within the timeout."""

    name = "validator"

    def command(self, model: str, tp: int, batch: int, seq: int, workdir: Path) -> list:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def cleanup(self, workdir: Path) -> None:
        """Called after each try; the try's log (``workdir/attempt.log``) is always kept."""


class CommandValidator(Validator):
    """A generic validator from argv templates (one per step): each token is ``str.format``-ed with
    ``{model} {tp} {batch} {seq} {workdir} {python}``; write literal braces as ``{{ }}``. A template given
    as one string is split with ``shlex``."""

    FIELDS = dict(model="m", tp=2, batch=1, seq=1024, workdir="w", python="p")

    def __init__(self, template, *more_steps, name: str = "cmd"):
        self.name = name
        self.steps = [shlex.split(t) if isinstance(t, str) else [str(a) for a in t] for t in (template, *more_steps)]
        for step in self.steps:
            try:
                if not step:
                    raise ValueError
                [a.format(**self.FIELDS) for a in step]
            except (KeyError, IndexError, ValueError):
                raise bad_param("template", shlex.join(step), "a non-empty argv template whose fields are among "
                                "{model} {tp} {batch} {seq} {workdir} {python}; literal braces as {{ }}") from None

    def command(self, model, tp, batch, seq, workdir):
        f = dict(model=model, tp=tp, batch=batch, seq=seq, workdir=str(workdir), python=sys.executable)
        return [[a.format(**f) for a in step] for step in self.steps]

    def describe(self):
        return f"{self.name}: " + " && ".join(shlex.join(s) for s in self.steps)


class NeuronValidator(Validator):
    """Export with ``optimum-cli export neuron`` (one process), then load with NeuronModelForCausalLM
    (another process: ``python -m workbook.llm.search load-neuron OUT``). With ``instance_type`` the
    export compiles for that target on a host without devices; pass ``load=False`` there, and "valid" then
    means "compiles"."""

    name = "neuron"

    def __init__(self, instance_type: str | None = None, *, load: bool = True, keep_exports: bool = False,
                 optimum_cli: str = "optimum-cli", python: str = sys.executable):
        if instance_type is not None and instance_type not in INSTANCE_TYPES:
            raise bad_param("instance_type", instance_type, f"None (the local device) or one of {', '.join(INSTANCE_TYPES)}")
        self.instance_type, self.load, self.keep_exports = instance_type, load, keep_exports
        self.optimum_cli, self.python = optimum_cli, python

    def command(self, model, tp, batch, seq, workdir):
        out = str(Path(workdir) / "export")
        export = [self.optimum_cli, "export", "neuron", "-m", str(model), "--batch_size", str(batch),
                  "--sequence_length", str(seq), "--tensor_parallel_size", str(tp), "--task", "text-generation", out]
        if self.instance_type:
            export += ["--instance_type", self.instance_type]
        return [export] + ([[self.python, "-m", "workbook.llm.search", "load-neuron", out]] if self.load else [])

    def cleanup(self, workdir):
        if not self.keep_exports:
            shutil.rmtree(Path(workdir) / "export", ignore_errors=True)

    def describe(self):
        target = f" for {self.instance_type}" if self.instance_type else ""
        load = ", then NeuronModelForCausalLM.from_pretrained in a new process" if self.load else " (compile only)"
        return f"neuron: optimum-cli export neuron --task text-generation{target}{load}"


class TorchValidator(Validator):
    """Hook for the cuda/cpu validator (tensor-parallel load through torchrun plus one forward at (batch, seq)),
    written elsewhere: ``build(model, tp, batch, seq, workdir)`` returns its argv (or argvs); the search runs
    them like any other try, in their own process group with the timeout."""

    def __init__(self, build: Callable[..., list], name: str = "torch", description: str = ""):
        self.build, self.name, self.description = build, name, description

    def command(self, model, tp, batch, seq, workdir):
        return self.build(model, tp, batch, seq, workdir)

    def describe(self):
        return f"{self.name}: {self.description}" if self.description else self.name


def load_neuron(path: str) -> None:
    """The load step of :class:`NeuronValidator`: load an exported model onto the NeuronCores."""
    try:
        from optimum.neuron import NeuronModelForCausalLM
    except ImportError as e:
        raise WorkbookError(f"load-neuron needs optimum-neuron, which is not importable here ({e}). Install it "
                            "on a Neuron instance (pip install optimum-neuron, with the Neuron SDK from AWS's pip "
                            "repository).") from None
    t0 = time.perf_counter()
    NeuronModelForCausalLM.from_pretrained(path)
    print(f"loaded {path} in {time.perf_counter() - t0:.1f} s")


# ---------------------------------------------------------------- one try, in its own processes

def _steps(validator: Validator, model, tp, batch, seq, workdir) -> list[list[str]]:
    cmd = validator.command(model, tp, batch, seq, workdir)
    steps = [cmd] if cmd and isinstance(cmd[0], str) else cmd
    if not steps or any(not s or not all(isinstance(a, str) for a in s) for s in steps):
        raise WorkbookError(f"Validator {validator.name!r} returned {cmd!r}; expected an argv (a list of strings) "
                            "or a list of them.")
    return [list(s) for s in steps]


def _die_with_parent():
    """preexec_fn: the step's direct child gets SIGKILL when the search dies (Linux prctl PR_SET_PDEATHSIG)."""
    parent = os.getpid()
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:  # pragma: no cover
        libc = None

    def pre():
        if libc is not None:
            libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the search died before prctl took effect
            os._exit(1)
    return pre


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_leftovers(token: str) -> list[int]:
    """SIGKILL every process carrying ``TOKEN_ENV=token`` in its environment (Linux ``/proc``); returns pids."""
    needle, killed = f"{TOKEN_ENV}={token}".encode(), []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(int(d.name))
        except (OSError, ValueError):
            continue
    return killed


def _run_step(argv, log, cwd, timeout: float, env) -> int:
    if timeout <= 0:
        raise subprocess.TimeoutExpired(argv, 0)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent())
    try:
        return proc.wait(timeout=timeout)
    finally:  # timeout, Ctrl-C, or a normal end that left children behind: the whole group goes
        _kill_group(proc)


def log_tail(path: Path, n: int = LOG_TAIL_LINES) -> list[str]:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln[:LOG_LINE_CHARS] for ln in lines[-n:]]


def run_attempt(validator: Validator, model: str, tp: int, batch: int, seq: int, workdir: Path,
                timeout_s: float, token: str | None = None) -> dict:
    """Run one try (all its steps, ``timeout_s`` for them together) and return its record."""
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    token = token or uuid.uuid4().hex
    env = {**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([_LIB_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    steps = _steps(validator, model, tp, batch, seq, workdir)
    log_path = workdir / "attempt.log"
    started, t0 = now_iso(), time.monotonic()
    status, detail, code = "valid", f"all {len(steps)} step(s) exited 0", 0
    with open(log_path, "ab", buffering=0) as log:
        for i, argv in enumerate(steps, 1):
            log.write(f"$ {shlex.join(argv)}\n".encode())
            try:
                code = _run_step(argv, log, workdir, t0 + timeout_s - time.monotonic(), env)
            except subprocess.TimeoutExpired:
                status, code = "timeout", None
                detail = f"step {i} ran past timeout_s={timeout_s:g} s and was killed with its process group"
                break
            except OSError as e:
                status, code, detail = "failed", None, f"step {i} could not start: {e}"
                break
            if code:
                status = "crashed" if code < 0 else "failed"
                detail = (f"step {i} was killed by signal {signal.Signals(-code).name}" if code < 0
                          else f"step {i} exited with code {code}")
                break
        log.write(f"[{status}: {detail}]\n".encode())
    kill_leftovers(token)
    validator.cleanup(workdir)
    return {"tp": tp, "batch": batch, "seq": seq, "status": status, "detail": detail, "exit_code": code,
            "seconds": round(time.monotonic() - t0, 3), "timeout_s": timeout_s, "started": started,
            "finished": now_iso(), "steps": [shlex.join(a) for a in steps], "log": str(log_path),
            "log_tail": log_tail(log_path)}


# ---------------------------------------------------------------- the state file

def model_name(model: str) -> str:
    """File-safe name: hub id "org/name" -> "org--name"; a local path -> its folder's name."""
    m = str(model).strip().rstrip("/\\")
    if not m:
        raise bad_param("model", model, "a hub id (org/name) or a local folder")
    p = Path(m).expanduser()
    if p.exists() or m.startswith(("/", ".", "~")) or m.count("/") > 1 or "\\" in m:
        name = p.resolve().name if p.exists() else p.name
    else:
        name = m.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "model"


def state_path(out_dir, model: str) -> Path:
    return Path(out_dir) / f"{model_name(model)}.json"


@contextlib.contextmanager
def _exclusive(path: Path):
    """One search per state file; the lock goes away with the process, however it ends."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkbookError(f"Another search is running on {path}; wait for it to end or stop it first.") from None
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # from a search killed mid-write
            stale.unlink(missing_ok=True)
        yield


def read_state(path: Path, validator: Validator) -> dict | None:
    """The state file at ``path`` (None if there is none), refused when its results were made another way.

    A resumed search trusts every result in the file, so the file must come from the same validator with the same
    settings (``describe()``: e.g. the cuda/cpu validators' memory budget and dtype); otherwise a configuration
    found valid under a larger budget would be kept as valid under a smaller one.
    """
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkbookError(f"The state file {path} is not valid JSON ({e}); this search writes it atomically, "
                            "so something else wrote it. Move it away to start over.") from None
    if state.get("validator_name") != validator.name:
        raise bad_param("state_dir", str(path.parent), f"a folder without results of another validator: {path.name} "
                        f"holds results of validator {state.get('validator_name')!r}, not {validator.name!r}; use "
                        "another state folder for this validator")
    old, new = state.get("validator"), validator.describe()
    if old is not None and old != new and state.get("attempts"):
        raise bad_param("state_dir", str(path.parent), f"a folder without results made with other settings: "
                        f"{path.name} holds results of {old!r}, not {new!r}; use another state folder (or move the "
                        "file away) to search with these settings")
    return state


def _open_state(path: Path, model: str, validator: Validator, cands: dict, timeout_s: float, log) -> dict:
    state = read_state(path, validator)
    if state is not None:
        if state.get("candidates") != cands:
            log(f"candidates changed since the last session; the {len(state['attempts'])} results are kept")
        log(f"resuming {path}: {len(state['attempts'])} tries already done")
    else:
        state = {"model": model, "model_name": model_name(model), "validator_name": validator.name,
                 "attempts": [], "running": None, "interruptions": [], "sessions": [], "seconds_total": 0.0}
    for key, empty in (("attempts", []), ("running", None), ("interruptions", []), ("sessions", [])):
        state.setdefault(key, empty)
    state.update(validator=validator.describe(), rules_version=RULES_VERSION, candidates=cands, timeout_s=timeout_s,
                 complete=False)
    state["sessions"].append({"started": now_iso(), "pid": os.getpid()})
    return state


def _recover_interrupted(state: dict, workroot: Path, max_interruptions: int, log) -> None:
    """A try that was running when the search was killed: stop its leftovers; it is tried again, unless the
    search has now been killed ``max_interruptions`` times during it, then it is recorded as crashed."""
    run = state.get("running")
    if not run:
        return
    key = (run["tp"], run["batch"], run["seq"])
    killed = kill_leftovers(run["token"])
    state["interruptions"].append({"tp": key[0], "batch": key[1], "seq": key[2], "started": run["started"],
                                   "noticed": now_iso(), "leftover_processes_killed": len(killed)})
    state["running"] = None
    n = sum((i["tp"], i["batch"], i["seq"]) == key for i in state["interruptions"])
    done = any((a["tp"], a["batch"], a["seq"]) == key for a in state["attempts"])
    if n >= max_interruptions and not done:
        why = (f"the search itself was killed {n} times during this try; recorded as crashed so that resuming "
               "does not loop (delete this entry from the state file to try again)")
        log_path = workroot / _workdir_name(*key) / "attempt.log"
        state["attempts"].append({"tp": key[0], "batch": key[1], "seq": key[2], "status": "crashed", "detail": why,
                                  "exit_code": None, "seconds": None, "started": run["started"], "finished": now_iso(),
                                  "log": str(log_path), "log_tail": log_tail(log_path) + [why]})
    log(f"the last session was killed during tp={key[0]} batch={key[1]} seq={key[2]} "
        f"(leftover processes stopped: {len(killed)}); " + ("recorded as crashed" if n >= max_interruptions and not done
                                                            else "it will be tried again"))


def _workdir_name(tp, batch, seq) -> str:
    return f"tp{tp}-b{batch}-s{seq}"


def _plan_rows(state) -> list[dict]:
    return [dict(zip(("tp", "batch", "seq", "status", "reason"), r)) for r in plan(state["candidates"], state["attempts"])]


# ---------------------------------------------------------------- the search

def search(model: str, validator: Validator, cands: dict, out_dir, timeout_s: float, progress=None, log=print,
           *, max_interruptions: int = 2) -> dict:
    """Try every pending candidate, largest first, re-planning after each result; return the final state.

    The state is ``<out_dir>/<model_name>.json``, rewritten after every try; each try's folder (log, export)
    is ``<out_dir>/<model_name>.attempts/tp<T>-b<B>-s<S>``. ``progress``: None, True (a tqdm bar) or a
    callable ``progress(record, plan_rows)`` called after each try.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise bad_param("timeout_s", timeout_s, "a positive number of seconds for one try (all its steps)")
    checks.integer("max_interruptions", max_interruptions, 1, allowed="a positive integer")
    cands = _normalize_cands(cands)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(out_dir, model)
    workroot = out_dir / f"{model_name(model)}.attempts"
    with _exclusive(path):
        state = _open_state(path, model, validator, cands, timeout_s, log)
        t0, before = time.monotonic(), float(state.get("seconds_total") or 0.0)

        def save():
            state["seconds_total"] = round(before + time.monotonic() - t0, 3)
            state["plan"] = _plan_rows(state)
            state["updated"] = now_iso()
            write_json_atomic(path, state)

        _recover_interrupted(state, workroot, max_interruptions, log)
        save()
        bar = None
        if progress is True:
            from workbook.console import progress

            rows = state["plan"]
            bar = progress(total=len(rows), initial=sum(r["status"] != "pending" for r in rows), desc="export search",
                       unit="config")
        try:
            while True:
                pending = [r for r in plan(cands, state["attempts"]) if r[3] == "pending"]
                if not pending:
                    break
                tp, b, s = pending[0][:3]
                token = uuid.uuid4().hex
                state["running"] = {"tp": tp, "batch": b, "seq": s, "started": now_iso(), "token": token,
                                    "pid": os.getpid()}
                save()
                try:
                    rec = run_attempt(validator, model, tp, b, s, workroot / _workdir_name(tp, b, s), timeout_s, token)
                finally:  # on Ctrl-C the try's processes are gone already: not an interruption to count
                    state["running"] = None
                state["attempts"].append(rec)
                save()
                left = sum(r["status"] == "pending" for r in state["plan"])
                log(f"tp={tp} batch={b} seq={s}: {rec['status']} in {rec['seconds']:.1f} s ({rec['detail']}); "
                    f"{left} pending")
                if bar is not None:
                    bar.update(len(state["plan"]) - left - bar.n)
                elif callable(progress):
                    progress(rec, state["plan"])
        except BaseException:
            save()
            raise
        finally:
            if bar is not None:
                bar.close()
        state["complete"] = True
        save()
    return state


# ---------------------------------------------------------------- reading results

def summary(state: dict) -> list[dict]:
    """One row per candidate: tp, batch, seq, status, reason, seconds (None unless tested)."""
    secs = {(a["tp"], a["batch"], a["seq"]): a.get("seconds") for a in state["attempts"]}
    return [{**r, "seconds": secs.get((r["tp"], r["batch"], r["seq"]))} for r in _plan_rows(state)]


def optimal(state: dict) -> list[dict]:
    """The maximal valid configurations: for each tp, the valid (batch, seq) pairs (tested or by rule) that no
    other valid pair at that tp matches or beats in both batch size and sequence length (the Pareto front).
    Different tps are not compared: more cores buy latency, fewer cost less; that trade-off is the reader's."""
    rows = [r for r in _plan_rows(state) if r["status"] in VALID]
    front = [r for r in rows if not any(o["tp"] == r["tp"] and o["batch"] >= r["batch"] and o["seq"] >= r["seq"]
                                        and (o["batch"], o["seq"]) != (r["batch"], r["seq"]) for o in rows)]
    return [{k: r[k] for k in ("tp", "batch", "seq", "status")} for r in front]


def grid(state: dict, tp: int) -> dict:
    """Statuses at one tp for a heatmap: ``status[i][j]`` is for ``batches[i]`` and ``seqs[j]``, both increasing."""
    cands = state["candidates"]
    if tp not in cands["tps"]:
        raise bad_param("tp", tp, f"one of the searched tensor-parallel sizes {cands['tps']}")
    st = {(r["batch"], r["seq"]): r["status"] for r in _plan_rows(state) if r["tp"] == tp}
    batches, seqs = sorted(cands["batches"]), sorted(cands["seqs"])
    return {"tp": tp, "batches": batches, "seqs": seqs, "status": [[st[(b, s)] for s in seqs] for b in batches]}


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbook.llm.search", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="search (or resume searching) the valid export configurations of a model")
    r.add_argument("--model", required=True, help="hub id or local folder")
    r.add_argument("--validator", choices=("cmd", "neuron"), default="neuron")
    r.add_argument("--template", action="append", default=[],
                   help="cmd validator: argv template of one step (repeat for more steps); fields "
                        "{model} {tp} {batch} {seq} {workdir} {python}")
    r.add_argument("--instance-type", choices=INSTANCE_TYPES, help="neuron validator: compile for this target")
    r.add_argument("--no-load", action="store_true", help="neuron validator: compile only")
    r.add_argument("--keep-exports", action="store_true", help="neuron validator: keep exported models")
    r.add_argument("--state-dir", required=True)
    r.add_argument("--total-cores", type=int, required=True)
    r.add_argument("--cores-per-device", type=int, required=True)
    r.add_argument("--heads", type=int, required=True, help="num_attention_heads")
    r.add_argument("--max-positions", type=int, required=True, help="max_position_embeddings")
    r.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCHES)))
    r.add_argument("--min-seq", type=int, default=1024)
    r.add_argument("--timeout", type=float, required=True, help="seconds for one try")
    r.add_argument("--max-interruptions", type=int, default=2)
    ld = sub.add_parser("load-neuron", help="load an exported model with NeuronModelForCausalLM")
    ld.add_argument("path")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "load-neuron":
            load_neuron(args.path)
            return 0
        if args.validator == "cmd":
            if not args.template:
                raise bad_param("--template", None, "at least one argv template with the cmd validator")
            validator = CommandValidator(*args.template)
        else:
            validator = NeuronValidator(args.instance_type, load=not args.no_load, keep_exports=args.keep_exports)
        try:
            batches = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
        except ValueError:
            raise bad_param("--batch-sizes", args.batch_sizes, "comma-separated positive integers") from None
        cands = candidates(args.total_cores, args.cores_per_device, args.heads, args.max_positions, batches, args.min_seq)
        state = search(args.model, validator, cands, args.state_dir, args.timeout,
                       max_interruptions=args.max_interruptions, log=lambda m: print(m, flush=True))
    except WorkbookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {}
    for r in summary(state):
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in optimal(state):
        print(f"optimal: tp={r['tp']} batch={r['batch']} seq={r['seq']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
