"""The vision backend interface: what the CPU, CUDA and Neuron paths do to prepare and run a model.

An experiment asks a backend to *prepare* a model for a fixed input shape (eager, compiled, traced,
with the artifact cached on disk), then runs the prepared callable, times it with the backend's
clock and reads its memory. Which backend runs, and whether it can run here, is decided before, by
:func:`workbook.targets.resolve`; the parameters arrive checked. What the report must say about
the path that really ran (compile or load time, cache hit or miss, stand-ins) travels in
:class:`Prepared` and :meth:`Backend.describe`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from workbook.errors import ParameterError


class BackendUnavailable(ParameterError):
    """A backend's software is missing here; the message says what and how to install it."""


@dataclass
class Prepared:
    """A model made ready for one input shape. ``fn(x)`` takes a batch from
    :meth:`Backend.to_input`."""

    fn: Callable
    backend: str
    mode: str
    dtype: str
    batch: int
    cores: int
    compile_s: float | None = None  # compile/trace time when it happened in this run
    load_s: float | None = None  # time to load a cached artifact
    cache: str = "none"  # "hit" (loaded), "miss" (compiled and stored) or "none" (nothing to cache)
    artifact: str | None = None
    notes: list[str] = field(default_factory=list)


class Backend(ABC):
    name: str = ""
    modes: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    unit: str = "cores"  # what the cores parameter counts here
    clock: str = "cpu"  # the measure.time_fn device: "cuda" uses CUDA events

    @abstractmethod
    def describe(self) -> dict:
        """What the report states about this backend's hardware and software."""

    def auto_mode(self) -> tuple[str, str | None]:
        """The mode a run asking for ``auto`` gets here, and why where the choice depends on the
        machine (None: always this one)."""
        return "eager", None

    def rules(self, *, steps, cores: int, options: dict) -> list[str]:
        """This backend's own rules on a run's (mode, dtype, batch) steps, cores and compiler
        options: a ParameterError for what it cannot run, else the notes a reader needs."""
        return []

    @abstractmethod
    def prepare(self, model, example, *, mode: str, dtype: str, cores: int, options: dict,
                cache) -> Prepared:
        """Make ``model`` ready for inputs shaped like ``example`` (a CPU float32 batch).
        ``cache`` is a :class:`workbook.artifacts.Entry` (or None) where compiled artifacts are
        stored and found."""

    @abstractmethod
    def to_input(self, x, dtype: str):
        """A CPU float32 batch moved and cast to what the prepared callable takes."""

    def to_output(self, y):
        """The callable's output as a CPU float32 tensor, for accuracy checks."""
        return y.detach().float().cpu()

    def synchronize(self) -> None:
        pass

    def reset_peak_memory(self) -> None:
        pass

    def memory(self) -> dict:
        """Memory figures after a run (units in the keys)."""
        return {}
