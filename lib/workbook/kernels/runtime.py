"""Where the kernels can run, and the interpreter workarounds they share.

The Triton interpreter (``TRITON_INTERPRET=1``, numpy on the CPU) lets the CPU tests check real
numerics, but it has traps: ``tl.dot`` on bf16 operands multiplies bit patterns, fp32 to bf16 casts
truncate, libdevice ``tanh`` is missing and ``@triton.autotune`` with several configs needs a GPU.
Kernels read :data:`INTERPRET` as a constexpr to upcast dot operands and round bf16 by hand, and
take their autotune configs from :func:`configs`, which gives the interpreter a single one.
"""
from __future__ import annotations

import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:  # triton is an optional extra ('.[triton]'); the error below says how to get it
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAVE_TRITON = False


def unavailable_reason(device: str) -> str | None:
    """Why the kernels cannot run on ``device`` here, or None when they can."""
    if not HAVE_TRITON:
        return "triton is not installed (pip install -e '.[triton]')"
    if device == "cpu" and not INTERPRET:
        return ("the kernels run on a CPU only under the Triton interpreter, and "
                "TRITON_INTERPRET=1 was not set before workbook.kernels was imported")
    if device == "cuda" and INTERPRET:
        return "TRITON_INTERPRET=1 is set, so kernels would run in the interpreter, not on the GPU"
    return None


def configs(gpu: list, interpreter):
    """Autotune configs: the GPU list, or the single interpreter config (autotune needs a GPU
    driver)."""
    return [interpreter] if INTERPRET else gpu


def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (a small fixed number under the interpreter)."""
    import torch

    if INTERPRET or torch.device(device).type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count
