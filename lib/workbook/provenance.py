"""Provenance: what code, which packages and which hardware produced a run.

A result is only worth sharing if a reader can tell where it came from, so every run records the git
commit (and whether the tree was dirty), package versions, Python, torch/CUDA/Triton/Neuron
versions, and the hardware: CPU model and cores, RAM, GPU names and memory, Neuron devices.
Collected by the runner into ``run.json`` and by the recorder into ``results.json``.
"""
from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from workbook.paths import repo_root
from workbook.proc import usable_cpus

PACKAGES = (
    "workbook", "torch", "torchvision", "triton", "open_clip_torch", "timm", "transformers",
    "numpy", "papermill", "nbconvert", "nbclient", "ipykernel", "plotly", "torch-neuronx",
    "transformers-neuronx", "neuronx-cc", "neuronx-distributed-inference", "optimum-neuron",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _run(cmd: list[str], cwd=None, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    """The commit the code came from. ``WORKBOOK_GIT_COMMIT`` wins when set: a copy of the tree
    shipped to another machine may carry no ``.git``, or a stale one that names an older commit."""
    env = os.environ.get("WORKBOOK_GIT_COMMIT")
    if env:
        return {"commit": env,
                "dirty": os.environ.get("WORKBOOK_GIT_DIRTY", "").lower() in ("1", "true"),
                "branch": None, "source": "WORKBOOK_GIT_COMMIT"}
    root = repo_root()
    commit = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None, "source": None}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return {
        "commit": commit,
        "dirty": bool(status),
        "branch": _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=root),
    }


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _meminfo_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def cpu_info() -> dict:
    from workbook.targets import cpu_name

    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    return {
        "model": cpu_name(),
        "arch": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_physical": physical,
        "cores_usable": usable_cpus(),
    }


def gpu_info() -> list[dict]:
    """GPUs from nvidia-smi (no CUDA context is made); torch's view where nvidia-smi is absent."""
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,uuid",
                    "--format=csv,noheader,nounits"])
        if out:
            gpus = []
            for line in out.splitlines():
                name, mem, driver, *uuid = (s.strip() for s in line.split(","))
                gpus.append({"name": name, "memory_gb": round(float(mem) / 1024, 1),
                             "driver": driver, "uuid": uuid[0] if uuid else None})
            return gpus
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            return [{"name": torch.cuda.get_device_name(i),
                     "memory_gb": round(p.total_memory / 2**30, 1), "driver": None,
                     "uuid": f"GPU-{p.uuid}" if getattr(p, "uuid", None) else None}
                    for i, p in enumerate(props)]
    return []


def neuron_info() -> dict:
    """Neuron devices (``/dev/neuron*``), whether the real SDK imports (PyPI ships placeholders)
    and, on a Neuron machine, the instance family (Inf2/Trn1 or Trn2/Trn3 decide which Neuron path
    a notebook takes) with where it was read."""
    devices = sorted(glob.glob("/dev/neuron[0-9]*"))
    sdk = None
    try:
        import torch_neuronx  # noqa: F401

        sdk = getattr(torch_neuronx, "__version__", "installed")
    except ImportError as e:
        missing_itself = getattr(e, "name", None) == "torch_neuronx"
        sdk = None if missing_itself else f"unusable ({(str(e).splitlines() or [''])[0][:80]})"
    except Exception as e:  # noqa: BLE001 - any failure means the SDK is not usable here
        sdk = f"unusable ({type(e).__name__})"
    info = {"devices": len(devices), "torch_neuronx": sdk}
    from workbook.backends.neuron_sysfs import sysfs_root

    if devices or sysfs_root().is_dir():  # a Neuron machine: which family decides the paths
        from workbook.backends import neuron_family

        info["instance_family"], info["instance_family_source"] = neuron_family.detect()
    return info


def torch_info() -> dict:
    try:
        import torch
    except ImportError:
        return {"version": None}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info = {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
            "threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional
        info["triton"] = None
    return info


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def hardware() -> dict:
    return {"cpu": cpu_info(), "ram_gb": _meminfo_gb(), "gpus": gpu_info(), "neuron": neuron_info(),
            "hostname": platform.node(), "boot_id": _boot_id()}


def machine_id(hw: dict) -> str | None:
    """Which physical machine a run measured on, so that times from two machines are never put side
    by side.

    The GPUs' UUIDs where there are GPUs (lent GPU machines all call themselves the same hostname),
    else the hostname with the boot id; None when neither is known (an old record): then no machine
    counts as the same.
    """
    uuids = [g.get("uuid") for g in hw.get("gpus") or []]
    if uuids and all(uuids):
        return "gpu:" + ",".join(uuids)
    if hw.get("hostname") and hw.get("boot_id"):
        return f"host:{hw['hostname']}:{hw['boot_id']}"
    return None


def collect() -> dict:
    """Everything above, as one JSON-able dict."""
    return {
        "collected_at": now_iso(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": git_info(),
        "packages": package_versions(),
        "torch": torch_info(),
        "hardware": hardware(),
    }


def hardware_label(hw: dict) -> str:
    """A short label for the hardware: the GPU name if any, the Neuron instance family and its
    devices on a Neuron machine, else the CPU model and its cores."""
    nrn = hw.get("neuron") or {}
    if nrn.get("devices"):
        fam = nrn.get("instance_family")
        return f"{fam or 'Neuron'} ({nrn['devices']} Neuron devices)"
    if hw.get("gpus"):
        g = hw["gpus"]
        return f"{len(g)}× {g[0]['name']}" if len(g) > 1 else g[0]["name"]
    cpu = hw.get("cpu", {})
    cores = cpu.get("cores_usable")
    return f"{cpu.get('model', 'CPU')}" + (f" ({cores} cores)" if cores else "")
