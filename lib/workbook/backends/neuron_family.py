"""Which Neuron instance family this is (inf2, trn1, trn2, trn3): it decides which Neuron path runs.

From Neuron SDK 2.34, Trn2 and Trn3 serve inference through TorchNeuron (``torch.compile(backend=
"neuron")``) and vLLM-Neuron, while Inf2 and Trn1 keep the XLA path (``torch_neuronx.trace``) and NxD
Inference. The family is read, in order, from:

- the Neuron driver's sysfs, ``neuron<D>/info/architecture/{instance_type,device_name}`` (the
  documented tree up to driver 2.30; driver 2.31 moved several nodes, so a newer driver may not
  have them here), e.g. ``Trn2`` or ``Trainium2``;
- ``neuron-ls``, whose header names the instance type (``instance-type: trn2.48xlarge``).

Neither found: the family is unknown, and the caller says so rather than guess.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

from workbook.backends.neuron_sysfs import _numbered, sysfs_root

FAMILIES = ("inf2", "trn1", "trn2", "trn3")
TORCHNEURON_FAMILIES = ("trn2", "trn3")  # where TorchNeuron runs, and XLA inference ended in 2.34
_DEVICE_NAMES = {"inferentia2": "inf2", "trainium": "trn1", "trainium1": "trn1",
                 "trainium2": "trn2", "trainium3": "trn3"}


def family_of(text: str) -> str | None:
    """``trn2.48xlarge``, ``Trn2`` or ``Trainium2`` -> ``trn2``; None for anything else."""
    t = text.strip().lower()
    m = re.match(r"(inf2|trn1|trn2|trn3)(?:n|u)?(?:[.\-]|$)", t)
    if m:
        return m.group(1)
    return _DEVICE_NAMES.get(t)


def detect(root: Path | str | None = None, neuron_ls: str | None = "neuron-ls",
           timeout_s: float = 20) -> tuple[str | None, str]:
    """``(family, where it was read)``, or ``(None, why it is unknown)``."""
    root = Path(root) if root is not None else sysfs_root()
    for _, dev in _numbered(root, "neuron"):
        for name in ("instance_type", "device_name"):
            f = dev / "info" / "architecture" / name
            try:
                value = f.read_text().strip()
            except OSError:
                continue
            fam = family_of(value)
            if fam:
                return fam, f"sysfs {dev.name}/info/architecture/{name} = {value}"
    exe = shutil.which(neuron_ls) if neuron_ls else None
    if exe:
        out = _neuron_ls(exe, timeout_s)
        if isinstance(out, BaseException):
            return None, f"neuron-ls failed ({type(out).__name__}) and sysfs names no architecture"
        m = re.search(r"instance-type:\s*(\S+)", out)
        if m and family_of(m.group(1)):
            return family_of(m.group(1)), f"neuron-ls: instance-type {m.group(1)}"
    return None, ("neither the Neuron driver's sysfs (info/architecture) nor neuron-ls names the "
                  "instance type")


@functools.lru_cache(maxsize=None)
def _neuron_ls(exe: str, timeout_s: float):
    """neuron-ls's output, or the error it gave: run once a process (the instance stays the same,
    and every check of a run asks)."""
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=timeout_s).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return e
