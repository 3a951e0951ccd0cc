"""TEST STAND-IN for torch_neuronx: checks the documented call signatures and the artifact flow; it
runs on the CPU and is not Neuron.

Used only by the tests (``tests/standins`` is put on ``sys.path`` and ``PYTHONPATH``). It keeps the
documented contract of the real package (the AWS Neuron documentation of torch_neuronx) and is
stricter where the real one is lenient, so that misuse fails in a test:

- ``trace(func, example_inputs, *_, input_output_aliases={}, compiler_workdir=None,
  compiler_args=None, partitioner_config=None, inline_weights_to_neff=True, cpu_backend=False)``:
  everything after ``example_inputs`` is keyword-only. The real one only warns about extra
  positional arguments ("likely to become an error"); the stand-in raises TypeError. It writes
  marker files, not a NEFF, in ``compiler_workdir`` and returns ``torch.jit.trace(func,
  example_inputs)`` — a CPU ScriptModule (with check_trace off: the tests compare outputs
  themselves).
- ``DataParallel(model, device_ids=None, dim=0, set_dynamic_batching=True)``: the model must be a
  ScriptModule; device ids (ints or ``"nc:#"``) are zero-based within the visible cores
  (``NEURON_RT_VISIBLE_CORES``, else the fake sysfs tree in ``WORKBOOK_NEURON_SYSFS``); the batch
  is split along ``dim``, each chunk run on the CPU and the outputs concatenated.
- ``move_trace_to_device(trace, device_id)``: checks its arguments and does nothing.

Nothing here reads the real ``/sys`` or ``/dev``. Every call is appended to ``CALLS`` (in the
process that made it).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

STANDIN = True
__version__ = "0.0.0+standin"
CALLS: list[dict] = []

_NOT_NEURON = ("TEST STAND-IN for torch_neuronx: this is not a NEFF and nothing here ran on "
               "Neuron.\n")


def _check_example(example_inputs) -> None:
    if isinstance(example_inputs, torch.Tensor):
        return
    if isinstance(example_inputs, tuple) and example_inputs and all(isinstance(t, torch.Tensor)
                                                                    for t in example_inputs):
        return
    raise TypeError("torch_neuronx.trace: example_inputs must be a Tensor or a tuple of Tensors, "
                    "got "
                    f"{type(example_inputs).__name__}")


def _check_compiler_args(compiler_args) -> list[str]:
    if compiler_args is None:
        return []
    if isinstance(compiler_args, str):
        return compiler_args.split()
    if isinstance(compiler_args, list) and all(isinstance(a, str) for a in compiler_args):
        return list(compiler_args)
    raise TypeError("torch_neuronx.trace: compiler_args must be None, a str or a list of str, "
                    f"got {compiler_args!r}")


def trace(func, example_inputs, *_, input_output_aliases={},  # noqa: B006
          compiler_workdir=None, compiler_args=None, partitioner_config=None,
          inline_weights_to_neff=True, cpu_backend=False):
    """The documented signature; returns ``torch.jit.trace(func, example_inputs)`` (CPU, not
    Neuron)."""
    if _:
        raise TypeError(f"torch_neuronx.trace takes 2 positional arguments (func, example_inputs); "
                        f"{len(_)} more were given: pass the rest by keyword")
    if not callable(func):
        raise TypeError("torch_neuronx.trace: func must be an nn.Module or a callable, got "
                        f"{type(func).__name__}")
    _check_example(example_inputs)
    if not isinstance(input_output_aliases, dict):
        raise TypeError("torch_neuronx.trace: input_output_aliases must be a dict")
    if compiler_workdir is not None and not isinstance(compiler_workdir, str):
        raise TypeError("torch_neuronx.trace: compiler_workdir must be a str, got "
                        f"{type(compiler_workdir).__name__}")
    args = _check_compiler_args(compiler_args)
    if partitioner_config is not None:
        raise NotImplementedError("the torch_neuronx stand-in does not model partitioner_config")
    for name, v in (("inline_weights_to_neff", inline_weights_to_neff),
                    ("cpu_backend", cpu_backend)):
        if not isinstance(v, bool):
            raise TypeError(f"torch_neuronx.trace: {name} must be a bool, got {v!r}")
    if cpu_backend and not any(a.startswith("--target") for a in args):
        raise ValueError("torch_neuronx.trace: cpu_backend=True needs a --target in compiler_args "
                         "(trn1, inf2, trn2)")
    call = {"fn": "trace", "compiler_workdir": compiler_workdir, "compiler_args": args,
            "inline_weights_to_neff": inline_weights_to_neff, "cpu_backend": cpu_backend,
            # which cores a real trace would load onto: the runtime reads these when it starts
            "env": {k: os.environ.get(k)
                    for k in ("NEURON_RT_VISIBLE_CORES", "NEURON_RT_NUM_CORES")},
            "example_shapes": [list(t.shape) for t in (example_inputs
                                                       if isinstance(example_inputs, tuple)
                                                       else (example_inputs,))]}
    # check_trace off: the tests compare the outputs themselves
    traced = torch.jit.trace(func, example_inputs, check_trace=False)
    if compiler_workdir is not None:
        wd = Path(compiler_workdir)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "standin.neff").write_text(_NOT_NEURON)
        (wd / "log-neuron-cc.txt").write_text(_NOT_NEURON + json.dumps(call, indent=1) + "\n")
    CALLS.append(call)
    return traced


def _parse_visible(value: str) -> list[int]:
    out: list[int] = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"stand-in: cannot read NEURON_RT_VISIBLE_CORES={value!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def visible_core_count() -> int:
    """NeuronCores this process may use: NEURON_RT_VISIBLE_CORES, else the fake sysfs tree (never
    /sys)."""
    vis = os.environ.get("NEURON_RT_VISIBLE_CORES")
    if vis:
        return len(_parse_visible(vis))
    root = os.environ.get("WORKBOOK_NEURON_SYSFS")
    if not root:
        raise ValueError("stand-in: no visible NeuronCores (set NEURON_RT_VISIBLE_CORES or "
                         "WORKBOOK_NEURON_SYSFS "
                         "to a fake sysfs tree; the stand-in never reads the real /sys)")
    return sum(1 for d in Path(root).glob("neuron*") if re.fullmatch(r"neuron\d+", d.name)
               for c in d.glob("neuron_core*") if re.fullmatch(r"neuron_core\d+", c.name))


def _device_index(d) -> int:
    if isinstance(d, bool):
        raise TypeError(f"DataParallel: device id {d!r} must be an int or 'nc:#'")
    if isinstance(d, int):
        return d
    if isinstance(d, str) and (m := re.fullmatch(r"nc:(\d+)", d)):
        return int(m.group(1))
    raise TypeError(f"DataParallel: device id {d!r} must be an int or 'nc:#'")


def _gather(outs: list, dim: int):
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs, dim=dim)
    if isinstance(first, (tuple, list)):
        return type(first)(_gather([o[i] for o in outs], dim) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _gather([o[k] for o in outs], dim) for k in first}
    raise TypeError(f"DataParallel stand-in: cannot gather outputs of type {type(first).__name__}")


class DataParallel:
    """Splits the batch along ``dim`` over ``device_ids``; here every chunk runs on the CPU in
    turn."""

    def __init__(self, model, device_ids=None, dim=0, set_dynamic_batching=True):
        if not isinstance(model, torch.jit.ScriptModule):
            raise TypeError("DataParallel: model must be a torch.jit.ScriptModule from "
                            "torch_neuronx.trace "
                            f"(or torch.jit.load), got {type(model).__name__}")
        n_visible = visible_core_count()
        ids = (list(range(n_visible)) if device_ids is None
               else [_device_index(d) for d in device_ids])
        if not ids:
            raise ValueError("DataParallel: device_ids is empty")
        for i in ids:
            if not 0 <= i < n_visible:
                raise ValueError(f"DataParallel: device id {i} is out of range: {n_visible} "
                                 "NeuronCores are visible "
                                 "(ids are zero-based within NEURON_RT_VISIBLE_CORES)")
        if len(set(ids)) != len(ids):
            raise ValueError(f"DataParallel: device_ids repeat a core: {device_ids!r}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"DataParallel: dim must be an int, got {dim!r}")
        if not isinstance(set_dynamic_batching, bool):
            raise TypeError("DataParallel: set_dynamic_batching must be a bool")
        self.module = model
        self.device_ids = ids
        self.dim = dim
        self.dynamic_batching = set_dynamic_batching
        self.num_workers = 2 * len(ids)
        self.split_size = None
        CALLS.append({"fn": "DataParallel", "device_ids": ids, "dim": dim,
                      "set_dynamic_batching": set_dynamic_batching})

    def disable_dynamic_batching(self) -> None:
        self.dynamic_batching = False

    def __call__(self, *inputs):
        tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
        if not tensors:
            raise TypeError("DataParallel stand-in: no tensor input to split")
        n = tensors[0].shape[self.dim]
        cores = len(self.device_ids)
        if not self.dynamic_batching and n % cores:
            raise ValueError("DataParallel: with dynamic batching off, "
                             f"input.shape[{self.dim}]={n} must split evenly "
                             f"over {cores} NeuronCores")
        size = self.split_size or max(1, n // cores)
        pieces = [x.split(size, dim=self.dim) if isinstance(x, torch.Tensor) else None
                  for x in inputs]
        k = len(next(p for p in pieces if p is not None))
        outs = [self.module(*[p[j] if p is not None else x for p, x in zip(pieces, inputs)])
                for j in range(k)]
        return _gather(outs, self.dim)


def move_trace_to_device(trace, device_id):
    """Documented for traces made with inline_weights_to_neff=False; the stand-in only checks its
    arguments."""
    if not isinstance(trace, torch.jit.ScriptModule):
        raise TypeError("move_trace_to_device: trace must be a torch.jit.ScriptModule")
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise TypeError("move_trace_to_device: device_id must be a non-negative int, got "
                        f"{device_id!r}")
    CALLS.append({"fn": "move_trace_to_device", "device_id": device_id})


# -------------------------------------------------------------------------------------------------
# TorchNeuron (Neuron SDK 2.33+, Trn2/Trn3): torch-neuronx as a native PyTorch device, used through
# torch.compile(model, backend="neuron", fullgraph=True); static shapes only (dynamic=True is
# rejected). A test makes this stand-in TorchNeuron with as_torchneuron(monkeypatch).

class NeuronDeviceModule:
    """TEST STAND-IN for TorchNeuron's ``torch.neuron`` device module (what ``torch.neuron`` has
    once torch_neuronx is loaded): NeuronCores come from the visible cores, nothing else."""

    STANDIN = True

    def is_available(self) -> bool:
        return visible_core_count() > 0

    def device_count(self) -> int:
        return visible_core_count()


def neuron_backend(gm, example_inputs, **_):
    """TEST STAND-IN for TorchNeuron's dynamo backend ``"neuron"``: refuses symbolic (dynamic)
    shapes as the real one refuses dynamic=True, records the graph, and runs it on the CPU."""
    for n in gm.graph.nodes:
        v = n.meta.get("example_value") if n.op == "placeholder" else None
        if isinstance(v, torch.SymInt) or (isinstance(v, torch.Tensor) and not all(
                isinstance(d, int) for d in v.shape)):
            raise RuntimeError("TorchNeuron stand-in: dynamic shapes are not supported; "
                               "compile with dynamic=False")
    shapes = [list(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
    CALLS.append({"fn": "torch.compile(backend='neuron')", "input_shapes": shapes,
                  "graph_nodes": len(gm.graph.nodes)})
    return gm.forward


def as_torchneuron(monkeypatch) -> None:
    """This stand-in as TorchNeuron for one test: ``torch.neuron`` present, the dynamo backend
    ``"neuron"`` registered (once per process), and the XLA ``trace``/``DataParallel`` gone."""
    import sys

    import torch._dynamo

    if "neuron" not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(compiler_fn=neuron_backend, name="neuron")
    monkeypatch.setattr(torch, "neuron", NeuronDeviceModule(), raising=False)
    me = sys.modules[__name__]
    for name in ("trace", "DataParallel", "move_trace_to_device"):
        monkeypatch.delattr(me, name)
