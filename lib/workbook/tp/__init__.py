"""Tensor parallelism run from lib: a torchrun launcher (:mod:`workbook.tp.launch`) and its worker.

A notebook kernel cannot be a torchrun worker, so :func:`launch` starts ``torch.distributed.run`` as a
subprocess and hands back the JSON the ranks wrote. Import is cheap: torch is imported by the worker only.
"""
from workbook.tp.launch import launch, logits_diff, spec_defaults

__all__ = ["launch", "logits_diff", "spec_defaults"]
