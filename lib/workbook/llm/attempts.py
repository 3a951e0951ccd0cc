"""One attempt of the export search: a configuration tried in processes of its own, and how.

Whether a decoder exports and loads at (tp, batch, seq) is only known by trying, and a try may take
an hour, hang, crash, or be killed together with the search that started it. So a try runs as
commands (the validator's steps), each through :func:`workbook.proc.run` (own process group, the
timeout shared by all steps, the parent-death signal), and its outcome comes only from what the try
itself showed: every step exited 0 (valid), a step exited non-zero (failed), was killed by a signal
(crashed) or ran past the timeout (timeout). Its record goes to ``result.json`` in its folder before
the search saves it, so a search killed in between finds the outcome there on resume instead of
trying again.

Every process of a try carries a token in its environment. torchrun's ranks start sessions of their
own, out of reach of a group kill, so a :func:`workbook.proc.reaper` kills every process with the
token when the try ends or the search dies, however it dies; a resumed search kills leftovers by the
same token, in case the watchdog was killed too.

Validators: ``cmd`` (argv templates), two ``neuron`` ones (NxD Inference's compile, then a load and
one token in a new process; or ``optimum-cli export neuron``, then a load in a new process; which
one is :mod:`workbook.llm.neuron_export`'s choice) and ``torch-cuda`` / ``torch-cpu`` (``python -m workbook.llm.validate``: a
tensor-parallel load through torchrun plus one forward at (batch, seq) under a per-device memory
budget in GB).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

from workbook import proc
from workbook.errors import WorkbookError, bad_param
from workbook.provenance import now_iso
from workbook.record import write_json_atomic
from workbook.specs.export_search import INSTANCE_TYPES

TOKEN_ENV = "WORKBOOK_EXPORT_ATTEMPT"
LOG_NAME, RESULT_NAME = "attempt.log", "result.json"
LOG_TAIL_LINES = 40
_LIB_DIR = str(Path(__file__).resolve().parents[2])
RANKS_ON = {"cuda": "GPUs here for the cuda validator (one GPU per rank)",
            "cpu": "CPU cores this process may use, for the cpu validator (one process per rank)"}


class Validator:
    """How to try one configuration: ``command`` returns an argv, or a list of argvs run in sequence
    (steps, each its own process); the try is valid only if every step exits 0 within the timeout.
    ``describe()`` names the settings the results depend on: a state file made with other settings
    is not resumed."""

    name = "validator"

    def command(self, model: str, tp: int, batch: int, seq: int, workdir: Path) -> list:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def cleanup(self, workdir: Path) -> None:
        """Called after each try; the try's log (``workdir/attempt.log``) is always kept."""


class CommandValidator(Validator):
    """Steps from argv templates: each token is ``str.format``-ed with ``{model} {tp} {batch} {seq}
    {workdir} {python}``; literal braces are ``{{ }}``. A template given as one string is split with
    ``shlex``."""

    FIELDS = dict(model="m", tp=2, batch=1, seq=1024, workdir="w", python="p")

    def __init__(self, template, *more_steps, name: str = "cmd"):
        self.name = name
        self.steps = [shlex.split(t) if isinstance(t, str) else [str(a) for a in t]
                      for t in (template, *more_steps)]
        for step in self.steps:
            try:
                if not step:
                    raise ValueError
                [a.format(**self.FIELDS) for a in step]
            except (KeyError, IndexError, ValueError):
                raise bad_param("template", shlex.join(step), "a non-empty argv template whose "
                                "fields are among {model} {tp} {batch} {seq} {workdir} {python}; "
                                "literal braces as {{ }}") from None

    def command(self, model, tp, batch, seq, workdir):
        f = dict(model=model, tp=tp, batch=batch, seq=seq, workdir=str(workdir),
                 python=sys.executable)
        return [[a.format(**f) for a in step] for step in self.steps]

    def describe(self):
        return f"{self.name}: " + " && ".join(shlex.join(s) for s in self.steps)


class NeuronValidator(Validator):
    """Export with ``optimum-cli export neuron``, then load with NeuronModelForCausalLM in another
    process (``python -m workbook.llm.search load-neuron OUT``). With ``instance_type`` the export
    compiles for that target on a host without devices; pass ``load=False`` there: "valid" then
    means "compiles"."""

    name = "neuron"

    def __init__(self, instance_type: str | None = None, *, load: bool = True,
                 keep_exports: bool = False, optimum_cli: str = "optimum-cli",
                 python: str = sys.executable):
        if instance_type is not None and instance_type not in INSTANCE_TYPES:
            raise bad_param("instance_type", instance_type,
                            "None (the local device) or one of " + ", ".join(INSTANCE_TYPES))
        self.instance_type, self.load, self.keep_exports = instance_type, load, keep_exports
        self.optimum_cli, self.python = optimum_cli, python

    def command(self, model, tp, batch, seq, workdir):
        out = str(Path(workdir) / "export")
        export = [self.optimum_cli, "export", "neuron", "-m", str(model),
                  "--batch_size", str(batch), "--sequence_length", str(seq),
                  "--tensor_parallel_size", str(tp), "--task", "text-generation", out]
        if self.instance_type:
            export += ["--instance_type", self.instance_type]
        load = [self.python, "-m", "workbook.llm.search", "load-neuron", out]
        return [export] + ([load] if self.load else [])

    def cleanup(self, workdir):
        if not self.keep_exports:
            shutil.rmtree(Path(workdir) / "export", ignore_errors=True)

    def describe(self):
        target = f" for {self.instance_type}" if self.instance_type else ""
        load = (", then NeuronModelForCausalLM.from_pretrained in a new process" if self.load
                else " (compile only)")
        return f"neuron: optimum-cli export neuron --task text-generation{target}{load}"


class NxdiValidator(Validator):
    """NxD Inference: compile (tp, batch, seq) in one process, then load the compiled folder onto
    the NeuronCores and generate one token in another (``python -m workbook.llm.nxdi_try``)."""

    name = "neuron"  # what a try asks a scheduler for: NeuronCores

    def __init__(self, dtype: str = "bfloat16", *, keep_compiled: bool = False,
                 python: str = sys.executable):
        self.dtype, self.keep_compiled, self.python = dtype, keep_compiled, python

    def command(self, model, tp, batch, seq, workdir):
        args = ["--model", str(model), "--tp", str(tp), "--batch", str(batch), "--seq", str(seq),
                "--dtype", self.dtype, "--compiled", str(Path(workdir) / "compiled")]
        return [[self.python, "-m", "workbook.llm.nxdi_try", step, *args]
                for step in ("compile", "load")]

    def cleanup(self, workdir):
        if not self.keep_compiled:
            shutil.rmtree(Path(workdir) / "compiled", ignore_errors=True)

    def describe(self):
        return (f"neuron: NxD Inference NeuronMistralForCausalLM.compile, then load and one "
                f"token in a new process, {self.dtype}")


class TorchValidator(Validator):
    """The cuda and cpu validators: ``python -m workbook.llm.validate``, a tensor-parallel load
    through torchrun plus one forward at (batch, seq) with its KV cache, within ``budget_gb`` GB
    (10**9 bytes) per device."""

    def __init__(self, device: str, budget_gb: float, dtype: str, timeout_s: float,
                 python: str = sys.executable):
        self.name = f"torch-{device}"
        self.device, self.budget_gb, self.dtype = device, budget_gb, dtype
        self.timeout_s, self.python = timeout_s, python

    def command(self, model, tp, batch, seq, workdir):
        return [self.python, "-m", "workbook.llm.validate", "--model", str(model), "--tp", str(tp),
                "--batch", str(batch), "--seq", str(seq), "--device", self.device,
                "--budget-gb", str(self.budget_gb), "--dtype", self.dtype,
                "--timeout", str(self.timeout_s)]

    def describe(self):
        return (f"{self.name}: tensor-parallel load + one forward on {self.device}, "
                f"{self.budget_gb:g} GB per device, {self.dtype}")


def check_fits(cands: dict, target, name: str, value) -> None:
    """The cuda and cpu validators run one rank per GPU or CPU core: the largest tp must fit here.
    """
    if target.name in RANKS_ON and max(cands["tps"]) > target.devices:
        raise bad_param(name, value, f"at most the {target.devices} {RANKS_ON[target.name]}")


def load_neuron(path: str) -> None:
    """The load step of :class:`NeuronValidator`: load an exported model onto the NeuronCores."""
    try:
        from optimum.neuron import NeuronModelForCausalLM
    except ImportError as e:
        raise WorkbookError(f"load-neuron needs optimum-neuron, which is not importable here "
                            f"({e}). Install it on a Neuron instance (pip install optimum-neuron, "
                            "with the Neuron SDK from AWS's pip repository).") from None
    t0 = time.perf_counter()
    NeuronModelForCausalLM.from_pretrained(path)
    print(f"loaded {path} in {time.perf_counter() - t0:.1f} s")


def _steps(validator: Validator, model, tp, batch, seq, workdir) -> list[list[str]]:
    cmd = validator.command(model, tp, batch, seq, workdir)
    steps = [cmd] if cmd and isinstance(cmd[0], str) else cmd
    if not steps or any(not s or not all(isinstance(a, str) for a in s) for s in steps):
        raise WorkbookError(f"Validator {validator.name!r} returned {cmd!r}; expected an argv (a "
                            "list of strings) or a list of them.")
    return [list(s) for s in steps]


def _say(log_path: Path, text: str) -> None:
    with open(log_path, "a") as f:
        f.write(text + "\n")


def log_tail(path: Path) -> list[str]:
    return proc.tail(path, n=LOG_TAIL_LINES)


def kill_leftovers(token: str) -> list[int]:
    """SIGKILL every process of the try marked by ``token``; returns their pids."""
    return proc.kill_env(TOKEN_ENV, token)


def run_attempt(validator: Validator, model: str, tp: int, batch: int, seq: int, workdir: Path,
                timeout_s: float, token: str | None = None) -> dict:
    """Run one try (all its steps, ``timeout_s`` for them together) and return its record."""
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    token = token or uuid.uuid4().hex
    path = [_LIB_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(path)}
    steps = _steps(validator, model, tp, batch, seq, workdir)
    log_path = workdir / LOG_NAME
    started, t0 = now_iso(), time.monotonic()
    status, detail, code = "valid", f"all {len(steps)} step(s) exited 0", 0
    with proc.reaper(TOKEN_ENV, token):
        for i, argv in enumerate(steps, 1):
            _say(log_path, f"$ {shlex.join(argv)}")
            try:
                r = proc.run(argv, log=log_path, cwd=workdir, env=env,
                             timeout_s=t0 + timeout_s - time.monotonic())
            except OSError as e:
                status, code, detail = "failed", None, f"step {i} could not start: {e}"
                break
            if r.timed_out:
                status, code = "timeout", None
                detail = (f"step {i} ran past timeout_s={timeout_s:g} s and was killed with its "
                          "process group")
                break
            code = r.returncode
            if code:
                status = "crashed" if code < 0 else "failed"
                detail = (f"step {i} was killed by signal {signal.Signals(-code).name}" if code < 0
                          else f"step {i} exited with code {code}")
                break
        _say(log_path, f"[{status}: {detail}]")
        kill_leftovers(token)
    validator.cleanup(workdir)
    rec = {"tp": tp, "batch": batch, "seq": seq, "status": status, "detail": detail,
           "exit_code": code, "seconds": round(time.monotonic() - t0, 3), "timeout_s": timeout_s,
           "started": started, "finished": now_iso(), "steps": [shlex.join(a) for a in steps],
           "log": str(log_path), "log_tail": log_tail(log_path)}
    write_json_atomic(workdir / RESULT_NAME, {"token": token, "attempt": rec})
    return rec


def finished_record(workdir: Path, token: str) -> dict | None:
    """The record a try wrote before the search that ran it was killed (None if it did not finish).
    """
    try:
        saved = json.loads((Path(workdir) / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return saved.get("attempt") if saved.get("token") == token else None


def oom_kills() -> int | None:
    """Processes the out-of-memory killer has killed so far in this container's memory cgroup (v2 or
    v1), else on this machine; None where the kernel does not say. A rise during a try whose search
    was killed is the try's own doing: it is recorded as crashed instead of tried again."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control",
                 "/proc/vmstat"):
        try:
            for line in Path(path).read_text().splitlines():
                key, _, n = line.partition(" ")
                if key == "oom_kill":
                    return int(n)
        except (OSError, ValueError):
            continue
    return None
