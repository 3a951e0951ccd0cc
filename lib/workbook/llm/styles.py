"""Plain-tensor parallel styles for ``parallelize_module``: the fast path for a compiled step.

torch's ``ColwiseParallel``/``RowwiseParallel`` turn each weight into a DTensor, whose dispatch
costs host time on every call, which a decode step of a few small matrix products cannot hide.
These styles follow ``ParallelStyle``'s contract (``_apply(module, mesh)``, the documented
extension point of ``parallelize_module``) the way gpt-fast shards a model: each rank keeps its
slice of the weight as an ordinary ``Parameter``, and a row-parallel layer sums its partial outputs
with a functional all-reduce (``torch.distributed._functional_collectives``), which torch.compile
traces into the graph and CUDA graphs capture. Megatron's rule holds: a column-parallel layer needs
a replicated input and gives a sharded output, a row-parallel layer takes that sharded input and
gives the replicated sum. The measurements behind this choice: outputs/reference/nvidia-h200.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor.parallel import ParallelStyle


def _rank_slice(t: torch.Tensor, dim: int, mesh) -> torch.Tensor:
    rank, world = mesh.get_local_rank(), mesh.size()
    if t.shape[dim] % world:
        raise ValueError(f"cannot split dimension {dim} of size {t.shape[dim]} evenly over {world} "
                         "ranks")
    return t.chunk(world, dim)[rank].clone()


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _check_linear(module, style):
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{style} shards nn.Linear only, not {type(module).__name__}")


class LocalColwiseParallel(ParallelStyle):
    """Keep this rank's rows of the weight (and bias): a replicated input gives this rank's
    output features."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        _check_linear(module, type(self).__name__)
        with torch.no_grad():
            module.weight = _frozen(_rank_slice(module.weight, 0, device_mesh))
            if module.bias is not None:
                module.bias = _frozen(_rank_slice(module.bias, 0, device_mesh))
        module.out_features = module.weight.shape[0]
        return module


def _all_reduce_output(mesh):
    import torch.distributed._functional_collectives as funcol

    def hook(_module, _inputs, output):
        return funcol.all_reduce(output, "sum", mesh)

    return hook


class LocalRowwiseParallel(ParallelStyle):
    """Keep this rank's columns of the weight; the partial outputs are summed over the ranks after
    the layer.

    A bias is added once, after the sum (it is kept on rank 0 only, so the sum counts it once)."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        _check_linear(module, type(self).__name__)
        with torch.no_grad():
            module.weight = _frozen(_rank_slice(module.weight, 1, device_mesh))
            if module.bias is not None and device_mesh.get_local_rank() != 0:
                module.bias = _frozen(torch.zeros_like(module.bias))
        module.in_features = module.weight.shape[1]
        module.register_forward_hook(_all_reduce_output(device_mesh))
        return module
