"""The backend interface: one small contract that the CPU, CUDA and Neuron code paths all keep.

An experiment asks a backend to *prepare* a model for a fixed input shape (eager, compiled, traced — with
the artifact cached on disk), then runs the prepared callable, times it with the backend's clock and
reads its memory. Everything the report must say about the path that really ran (mode, dtype, compile
or load time, cache hit or miss, stand-ins) is carried in :class:`Prepared` and :meth:`Backend.describe`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from workbook.errors import ParameterError


class BackendUnavailable(ParameterError):
    """An explicitly requested backend cannot run here; the message says what is missing and how to install it."""


@dataclass
class Prepared:
    """A model made ready for one input shape. ``fn(x)`` takes a batch from :meth:`Backend.to_input`."""

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

    def summary(self) -> dict:
        return {"backend": self.backend, "mode": self.mode, "dtype": self.dtype, "batch": self.batch,
                "cores": self.cores, "compile_s": self.compile_s, "load_s": self.load_s, "cache": self.cache}


class Backend(ABC):
    name: str = ""
    modes: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    clock: str = "cpu"  # the measure.time_fn device: "cuda" uses CUDA events

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(usable here, why or why not — for a missing SDK: what is missing and how to install it)."""

    @abstractmethod
    def core_count(self) -> int:
        """How many units ``cores`` may use: CPU threads, GPUs, NeuronCores."""

    @abstractmethod
    def describe(self) -> dict:
        """What the report states about this backend's hardware and software."""

    def check(self, *, mode: str, dtype: str, cores: int) -> None:
        """Raise a ParameterError for a mode, dtype or core count this backend cannot run here."""
        from workbook.errors import bad_param

        if mode not in self.modes:
            raise bad_param("mode", mode, f"one of {', '.join(self.modes)} on the {self.name} backend")
        if dtype not in self.dtypes:
            raise bad_param("dtype", dtype, f"one of {', '.join(self.dtypes)} on the {self.name} backend")
        have = self.core_count()
        if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= have:
            raise bad_param("cores", cores, f"1 to {have}: this machine has {have} {self.unit} for the "
                                            f"{self.name} backend")

    unit: str = "cores"

    @abstractmethod
    def prepare(self, model, example, *, mode: str, dtype: str, cores: int, options: dict, cache) -> Prepared:
        """Make ``model`` ready for inputs shaped like ``example`` (a CPU float32 batch). ``cache`` is an
        :class:`workbook.artifacts.Entry` (or None) where compiled artifacts are stored and found."""

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
