"""The GPU's clock, power and energy while a benchmark runs, read through NVML (``nvidia-ml-py``).

Why this exists: an H100/H200 running a dense bf16 training step sits at its board power limit
(700 W on an H200 SXM), and the driver then lowers the SM clock until the power fits. Two models
that do the same GEMMs therefore do not run them at the same speed: the one with fewer light,
memory-bound gaps runs at a lower clock. A speed comparison that does not say at what clock, at
what power and for how much energy each side ran hides the reason for its ratio.
:class:`Telemetry` samples the SM clock, the power draw, the GPU temperature and the clock event
reasons (NVML's name for what holds the clock down) on a background thread, and reads the board's
energy counter at both ends of the window, so energy per step is measured, not integrated from
samples. The temperature is there because, at a fixed power cap, a hotter chip leaks more power and
so gets a lower clock for the same work: two variants timed one after the other under the cap may
not have run at the same temperature, and the rows say so.

A :class:`Telemetry` may be entered several times: the variants of an interleaved benchmark take
turns on the GPU, and each variant's samples, seconds and energy add up over its own windows only.

Where NVML cannot be used (no NVIDIA driver, no ``nvidia-ml-py``, a GPU without the counters) the
summary is ``None`` and :attr:`Telemetry.unavailable` says why in one sentence, for the report's
"not measured" list.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

# NVML clock event reason bits -> names used in reports (nvmlClocksEventReason*; the older
# "throttle" names have the same values)
REASONS = {
    0x1: "idle",
    0x2: "applications clocks setting",
    0x4: "sw power cap",
    0x8: "hw slowdown",
    0x10: "sync boost",
    0x20: "sw thermal slowdown",
    0x40: "hw thermal slowdown",
    0x80: "hw power brake",
    0x100: "display clock setting",
}
POWER_CAP = 0x4


def reason_names(mask: int) -> list[str]:
    """The names of the reasons set in an NVML clock-event-reason bit mask (unknown bits in hex)."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    rest = mask & ~sum(REASONS)
    if rest:
        names.append(hex(rest))
    return names


@dataclass
class Sample:
    sm_mhz: float
    power_w: float
    reasons: int
    temp_c: float | None = None  # None where the GPU does not report its temperature


@dataclass
class Telemetry:
    """Context manager around a measured window on CUDA device ``index``.

    ``with Telemetry(0) as tm: ...`` (once, or once a turn) then ``tm.summary(steps)``, steps
    counted over every window. ``period_s`` is the sampling period (NVML updates power about every
    20-100 ms, so faster sampling adds nothing). ``nvml`` is the module to use; tests pass a
    stand-in, everything else the real ``pynvml``.
    """

    index: int = 0
    period_s: float = 0.02
    nvml: object = None
    samples: list[Sample] = field(default_factory=list)
    unavailable: str | None = None
    energy_mj: float | None = None
    seconds: float | None = None
    limit_w: float | None = None

    def __post_init__(self):
        self._stop = None  # a new event each window
        self._thread = None
        self._handle = None
        self._e0 = self._t0 = None
        # every window read the energy counter at both ends, and it advanced
        self._energy_whole = True
        if self.nvml is None:
            try:
                import pynvml
            except ImportError:
                self.unavailable = "the nvidia-ml-py package (pynvml) is not installed"
                return
            self.nvml = pynvml
        self._open()

    def _open(self) -> bool:
        try:
            self.nvml.nvmlInit()
            self._handle = self.nvml.nvmlDeviceGetHandleByIndex(self._nvml_index())
            return True
        except self.nvml.NVMLError as e:
            self._handle = None
            self.unavailable = f"NVML could not be opened ({e})"
            return False

    def _nvml_index(self) -> int:
        """NVML numbers GPUs in PCI order; CUDA_VISIBLE_DEVICES renumbers them for CUDA: map."""
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if visible and all(v.strip().isdigit() for v in visible) and self.index < len(visible):
            return int(visible[self.index])
        return self.index

    def _read(self) -> Sample:
        n, h = self.nvml, self._handle
        try:
            reasons = n.nvmlDeviceGetCurrentClocksEventReasons(h)
        except (AttributeError, n.NVMLError):
            reasons = n.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        try:
            temp = float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
        except (AttributeError, n.NVMLError):
            temp = None
        return Sample(float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                      n.nvmlDeviceGetPowerUsage(h) / 1000.0, int(reasons), temp)

    def _loop(self):
        while True:  # one sample at least, however short the window
            try:
                self.samples.append(self._read())
            except self.nvml.NVMLError as e:
                self.unavailable = f"NVML stopped answering during the run ({e})"
                return
            if self._stop.wait(self.period_s):
                return

    def __enter__(self):
        if self.unavailable is not None:
            return self
        if self._handle is None and not self._open():  # a later window: the last one shut NVML down
            return self
        n = self.nvml
        if self.limit_w is None:
            try:
                self.limit_w = n.nvmlDeviceGetEnforcedPowerLimit(self._handle) / 1000.0
            except n.NVMLError:
                self.limit_w = None
        try:
            self._e0 = n.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except n.NVMLError:
            self._e0 = None  # older GPUs: energy comes from the power samples instead
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="workbook-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            return False
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.seconds = (self.seconds or 0.0) + time.monotonic() - self._t0
        energy = None
        if self._e0 is not None:
            try:
                end = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                energy = float(end - self._e0)
            except self.nvml.NVMLError:
                pass
        if energy is None or energy <= 0:
            # no counter, or one that did not advance: the driver updates it less often than this
            # window lasted (a few ms of a tiny model), and a zero would read as a measured 0 J
            self._energy_whole = False
        else:
            self.energy_mj = (self.energy_mj or 0.0) + energy
        try:
            self.nvml.nvmlShutdown()  # nvmlInit counts references; each window releases its own
        except self.nvml.NVMLError:
            pass
        self._handle = None  # the next window opens NVML again
        return False

    def summary(self, steps: int = 1) -> dict | None:
        """Figures for a result row: mean/min SM clock, mean/max power, energy per step, the share
        of samples at the power cap, every clock event reason seen and, where the GPU reports it,
        the first, mean and highest GPU temperature. ``None`` (see :attr:`unavailable`) without
        NVML."""
        if self.seconds is None or self.unavailable:
            # no NVML, no window closed, or NVML failed part-way (samples would not cover it)
            return None
        s = self.samples
        if not s:
            self.unavailable = f"no NVML sample in a window of {self.seconds * 1e3:.0f} ms"
            return None
        # the counter was read around every window; else energy from the power samples
        counted = self.energy_mj is not None and self._energy_whole
        mean_w = sum(x.power_w for x in s) / len(s)
        energy_j = self.energy_mj / 1000.0 if counted else mean_w * self.seconds
        seen = 0
        for x in s:
            seen |= x.reasons
        out = {"sm_clock_mhz": sum(x.sm_mhz for x in s) / len(s),
               "sm_clock_min_mhz": min(x.sm_mhz for x in s),
               "power_w": sum(x.power_w for x in s) / len(s),
               "power_max_w": max(x.power_w for x in s),
               "energy_j_per_step": energy_j / max(1, steps),
               "energy_source": "NVML energy counter" if counted else "power samples x time",
               "power_capped_share": sum(1 for x in s if x.reasons & POWER_CAP) / len(s),
               "clock_reasons": ", ".join(reason_names(seen)) or "none",
               "telemetry_samples": len(s)}
        if self.limit_w is not None:
            out["power_limit_w"] = self.limit_w
        temps = [x.temp_c for x in s if x.temp_c is not None]
        if temps:
            out.update(gpu_temp_start_c=temps[0], gpu_temp_c=sum(temps) / len(temps),
                       gpu_temp_max_c=max(temps))
        return out
