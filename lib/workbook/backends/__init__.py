"""Vision backends: where a model is prepared and run (cpu, cuda, neuron) behind one small interface
(see base.py).

Which one runs, and why, is decided by :func:`workbook.targets.resolve` (with the Neuron probe of
:mod:`workbook.backends.neuron`); :func:`get` builds the backend it named.
"""
from __future__ import annotations

from workbook.backends.base import Backend, BackendUnavailable, Prepared
from workbook.errors import bad_param
from workbook.specs.siglip_neuron import BACKENDS

NAMES = tuple(b for b in BACKENDS if b != "auto")


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


__all__ = ["Backend", "BackendUnavailable", "Prepared", "NAMES", "get"]
