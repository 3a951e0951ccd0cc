"""Targets: where an experiment runs (cpu, cuda or neuron), resolved in one place for all of them.

``auto`` picks Neuron where the experiment's Neuron path can run here, else CUDA where torch sees
a GPU, else the CPU, and the :class:`Target` says why, how many devices there are and what to
install for a missing one. A target asked for by name that cannot run here is a one-sentence
ParameterError naming what is missing, never a silent fallback. What "the Neuron path can run"
means differs per experiment (torch-neuronx and NeuronCores for a vision tower, an LLM library for
Mistral, optimum-cli for an export), so the experiment passes that probe in; the order and the
sentences are the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from workbook.errors import bad_param
from workbook.proc import usable_cpus

NAMES = ("auto", "cpu", "cuda", "neuron")
CUDA_HINT = ("install a CUDA build of torch (make setup TORCH_PINS=...) on a machine with an "
             "NVIDIA GPU, or pick cpu")
UNITS = {"cpu": "CPU cores", "cuda": "GPUs", "neuron": "NeuronCores"}

Probe = Callable[[], "tuple[bool, str]"]  # () -> (usable here, why or why not / what to install)


@dataclass(frozen=True)
class Target:
    name: str  # cpu, cuda or neuron
    reason: str  # why this one: "requested", or auto's reasoning
    devices: int  # usable CPU cores, visible GPUs or NeuronCores
    device_name: str  # the hardware, in words
    memory_per_device: int | None = None  # bytes (a GPU's total; the CPU's RAM; None where unknown)

    @property
    def unit(self) -> str:
        return UNITS[self.name]

    def torch(self):
        """The torch device for work that runs in this process (Neuron work runs on CPU tensors)."""
        import torch

        return torch.device("cuda" if self.name == "cuda" else "cpu")

    def describe(self) -> dict:
        return {"target": self.name, "why": self.reason, "devices": f"{self.devices} {self.unit}",
                "hardware": self.device_name}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cuda_probe() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, f"torch sees {torch.cuda.device_count()} CUDA GPU(s)"
    return False, ("torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False, "
                   f"torch {torch.__version__}); {CUDA_HINT}")


def _target(name: str, reason: str) -> Target:
    if name == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        return Target("cuda", reason, torch.cuda.device_count(), props.name, props.total_memory)
    if name == "cpu":
        import psutil

        return Target("cpu", reason, usable_cpus(), cpu_name(), psutil.virtual_memory().total)
    from workbook.backends.neuron_sysfs import visible_cores

    return Target("neuron", reason, visible_cores(), "AWS NeuronCores")


def resolve(requested: str, *, param: str = "backend", choices: tuple[str, ...] = NAMES,
            neuron: Probe | None = None) -> Target:
    """The target for ``requested`` (one of ``choices``). ``neuron`` says whether this
    experiment's Neuron path can run here; without it, Neuron is not a choice."""
    if requested not in choices:
        raise bad_param(param, requested, "one of " + ", ".join(choices))
    probes = {"cuda": cuda_probe, "cpu": lambda: (True, "the CPU")}
    if neuron is not None and "neuron" in choices:
        probes["neuron"] = neuron
    if requested not in probes and requested != "auto":  # neuron, with no probe to say it can run
        allowed = [c for c in choices if c in probes or c == "auto"]
        raise bad_param(param, requested, "one of " + ", ".join(allowed))
    if requested != "auto":
        ok, why = probes[requested]()
        if not ok:
            others = [c for c in choices if c not in ("auto", requested)
                      and probes.get(c, lambda: (0, ""))()[0]]
            raise bad_param(param, requested,
                            (" or ".join(others) + " here" if others else "another target")
                            + f", since {requested} cannot run: {why}")
        return _target(requested, "requested" + (f" ({why})" if requested != "cpu" else ""))
    skipped = []
    for name in ("neuron", "cuda"):
        if name not in probes or name not in choices:
            continue
        ok, why = probes[name]()
        if ok:
            also = f"; skipped {'; '.join(skipped)}" if skipped else ""
            return _target(name, f"auto: {why}" + also)
        skipped.append(f"{name}: {why}")
    since = "; ".join(skipped) or "nothing else was asked for"
    return _target("cpu", "auto: the CPU, since " + since)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
