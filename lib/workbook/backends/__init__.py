"""Backends: where a model runs (cpu, cuda, neuron) behind one small interface (see base.py).

``auto`` picks neuron if the SDK and NeuronCores are there, else cuda if torch sees a GPU, else the CPU,
and says why. A backend asked for by name that cannot run here is an error naming what is missing and
how to install it — never a silent fallback.
"""
from __future__ import annotations

from workbook.backends.base import Backend, BackendUnavailable, Prepared
from workbook.errors import bad_param

NAMES = ("auto", "cpu", "cuda", "neuron")


def get(name: str) -> Backend:
    if name == "cpu":
        from workbook.backends.cpu import CPUBackend

        return CPUBackend()
    if name == "cuda":
        from workbook.backends.cuda import CUDABackend

        return CUDABackend()
    if name == "neuron":
        from workbook.backends.neuron import NeuronBackend

        return NeuronBackend()
    raise bad_param("backend", name, "one of " + ", ".join(NAMES))


def resolve(requested: str) -> tuple[Backend, str]:
    """The backend to use and why; raises BackendUnavailable for an explicit request that cannot run here."""
    if requested not in NAMES:
        raise bad_param("backend", requested, "one of " + ", ".join(NAMES))
    if requested != "auto":
        b = get(requested)
        ok, why = b.available()
        if not ok:
            raise BackendUnavailable(f"Parameter backend={requested!r} is not allowed on this machine: {why}.")
        return b, f"requested ({why})"
    skipped = []
    for name in ("neuron", "cuda"):
        b = get(name)
        ok, why = b.available()
        if ok:
            return b, f"auto: {why}" + (f"; skipped {'; '.join(skipped)}" if skipped else "")
        skipped.append(f"{name}: {why}")
    return get("cpu"), "auto: the CPU, since " + "; ".join(skipped)


__all__ = ["Backend", "BackendUnavailable", "Prepared", "NAMES", "get", "resolve"]
