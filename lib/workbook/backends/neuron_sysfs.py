"""NeuronCores and their memory, read from sysfs: no Neuron tool has to be running.

Cores are the ``neuron<D>/neuron_core<C>`` folders under ``/sys/devices/virtual/neuron_device``
(device-major order = the runtime's global core index); per-core device memory is in
``.../stats/memory_usage/device_mem/<category>/{total,peak}`` (bytes). ``WORKBOOK_NEURON_SYSFS``
points the reads elsewhere, which is how the tests use a fake tree. ``NEURON_RT_VISIBLE_CORES``
syntax is parsed here too.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from workbook.errors import bad_param

SYSFS_ENV = "WORKBOOK_NEURON_SYSFS"
DEFAULT_SYSFS = "/sys/devices/virtual/neuron_device"
VISIBLE_ENV = "NEURON_RT_VISIBLE_CORES"
MB = 2**20


def sysfs_root() -> Path:
    """The neuron_device sysfs folder (``WORKBOOK_NEURON_SYSFS`` overrides the real one)."""
    return Path(os.environ.get(SYSFS_ENV, DEFAULT_SYSFS))


def _numbered(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    pat = re.compile(rf"{re.escape(prefix)}(\d+)")
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), p) for p in children if (m := pat.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def discover_cores(root: Path | str | None = None) -> list[tuple[int, int]]:
    """Every ``(device, core)`` with a ``neuron<D>/neuron_core<C>`` folder, in the runtime's order
    (device-major), so list position = global NeuronCore index."""
    root = Path(root) if root is not None else sysfs_root()
    return [(d, c) for d, dp in _numbered(root, "neuron") for c, _ in _numbered(dp, "neuron_core")]


def visible_cores() -> int:
    """NeuronCores this process may use: those ``NEURON_RT_VISIBLE_CORES`` names where it is set,
    else every core in sysfs."""
    vis = os.environ.get(VISIBLE_ENV)
    if vis is not None and vis.strip():
        return len(parse_visible_cores(vis))
    return len(discover_cores())


def parse_visible_cores(value: str) -> list[int]:
    """The global core indices in a ``NEURON_RT_VISIBLE_CORES`` value: ``"3"``, ``"4-5"``
    (inclusive) or a comma list of those (``"0,2-3"``); a ParameterError for anything else."""
    out: list[int] = []
    text = str(value).strip()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise bad_param(VISIBLE_ENV, value, 'a core index ("3"), an inclusive range ("4-5") or '
                            'a comma list of those ("0,2-3")')
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def _read_bytes(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_core_memory(root: Path | str, device: int, core: int) -> dict:
    """Device memory of one NeuronCore from sysfs: ``{"core": "nd<D>:nc<C>", "<cat>_mb": current,
    "<cat>_peak_mb": peak, ..., "total_mb": sum of the current values}`` for every category folder
    under ``neuron<D>/neuron_core<C>/stats/memory_usage/device_mem``. A missing or unreadable
    file is left out."""
    core_dir = Path(root) / f"neuron{device}" / f"neuron_core{core}"
    base = core_dir / "stats" / "memory_usage" / "device_mem"
    out: dict = {"core": f"nd{device}:nc{core}"}
    total = None
    cats = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    for cat in cats:
        cur = _read_bytes(cat / "total")
        peak = _read_bytes(cat / "peak")
        if cur is not None:
            out[f"{cat.name}_mb"] = cur / MB
            total = (total or 0) + cur
        if peak is not None:
            out[f"{cat.name}_peak_mb"] = peak / MB
    if total is not None:
        out["total_mb"] = total / MB
    return out
