"""The neuron backend's ``compile`` mode: TorchNeuron, ``torch.compile(backend="neuron")``.

From Neuron SDK 2.33 (beta) torch-neuronx on Trn2/Trn3 is TorchNeuron, a native PyTorch device
``neuron``; from 2.34 the XLA path behind ``torch_neuronx.trace`` no longer serves inference there.
This module is that path for a vision tower:

- **One static graph.** ``fullgraph=True`` (a graph break is an error, not a silent split) and
  ``dynamic=False`` (the backend rejects dynamic shapes; every new input shape compiles again). The
  SigLIP towers' forward is one static graph (tests/test_models_siglip.py proves it on the CPU).
- **No silent eager fallback.** TorchNeuron raises when a graph fails to compile unless
  ``TORCH_NEURONX_DISABLE_FALLBACK_EXECUTION=0``; a run that finds it set to 0 says so in a note.
- **The first call compiles** (minutes for a ViT); its time is the compile time. The NEFF cache is
  TorchNeuron's own, ``TORCH_NEURONX_NEFF_CACHE_DIR``, pointed at the run's artifact folder unless
  the user set it, so a later run with the same shapes loads instead of compiling.
- **One NeuronCore** (pinned through ``NEURON_RT_VISIBLE_CORES`` by the caller): the multi-core
  path is the trace mode's DataParallel.
- CPU tensors in, CPU tensors out, as the trace mode's callable: the call's time includes the
  copies, and returns when the result is on the host.
"""
from __future__ import annotations

import os
import time

CACHE_ENV = "TORCH_NEURONX_NEFF_CACHE_DIR"
FALLBACK_ENV = "TORCH_NEURONX_DISABLE_FALLBACK_EXECUTION"
NOT_TORCHNEURON = ("mode compile needs TorchNeuron (torch-neuronx 2.13.3 or 2.14.3 and later, "
                   "Neuron SDK 2.33+, on a Trn2 or Trn3), which adds the torch device 'neuron'")


def torchneuron() -> bool:
    """Is the imported torch_neuronx TorchNeuron: has PyTorch a ``neuron`` device module?"""
    import torch

    return getattr(torch, "neuron", None) is not None


def prepare(model, example, *, dtype, cache_dir, standin: bool, notes: list[str]):
    """``(callable, compile_s)``: ``model`` compiled for ``example``'s shape, its first call made."""
    import torch

    if os.environ.get(FALLBACK_ENV, "").strip() in ("0", "false", "False"):
        notes.append(f"{FALLBACK_ENV}=0: a graph TorchNeuron cannot compile runs eagerly instead "
                     "of failing, so these figures may not be a compiled model's")
    if cache_dir is not None and not os.environ.get(CACHE_ENV):
        os.environ[CACHE_ENV] = str(cache_dir)
        notes.append(f"TorchNeuron's NEFF cache ({CACHE_ENV}) is the artifact folder: a later run "
                     "of these shapes loads instead of compiling")
    dev = "cpu" if standin else "neuron"  # the TEST STAND-IN runs on the CPU
    cast = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    net = model.to(dev, cast).eval()
    compiled = torch.compile(net, backend="neuron", fullgraph=True, dynamic=False)

    def fn(x):
        with torch.inference_mode():
            return compiled(x.to(dev)).to("cpu")

    t0 = time.perf_counter()
    fn(example.to(cast))
    compile_s = time.perf_counter() - t0
    notes.append(f"torch.compile(backend='neuron', fullgraph=True, dynamic=False): the first call, "
                 f"which compiles (or loads from the NEFF cache), took {compile_s:.1f} s for batch "
                 f"{example.shape[0]}")
    return fn, compile_s
