"""Device detection: which torch device a notebook runs on, and why.

``auto`` picks CUDA when torch sees a GPU and the CPU otherwise, and says why; an explicitly requested
device that is not there is an error, never a silent fallback.
"""
from __future__ import annotations

from dataclasses import dataclass

from workbook.errors import bad_param

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu" or "cuda"
    reason: str
    name: str  # human name of the hardware that runs the work

    def torch(self):
        import torch

        return torch.device(self.device)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(requested: str, param: str = "device") -> DeviceChoice:
    """Resolve ``auto``/``cpu``/``cuda`` to a device, raising ParameterError for impossible requests."""
    import torch

    if requested not in DEVICES:
        raise bad_param(param, requested, "one of " + ", ".join(DEVICES))
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise bad_param(
            param, requested,
            "torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False, "
            f"torch {torch.__version__}); use device='cpu' or device='auto'")
    if requested == "auto":
        if has_cuda:
            return DeviceChoice("cuda", "auto: torch sees a CUDA GPU", torch.cuda.get_device_name(0))
        return DeviceChoice("cpu", "auto: torch sees no CUDA GPU, so the CPU", cpu_name())
    if requested == "cuda":
        return DeviceChoice("cuda", "requested", torch.cuda.get_device_name(0))
    return DeviceChoice("cpu", "requested", cpu_name())


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
