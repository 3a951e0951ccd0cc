"""Model builders for experiments: real architectures from their configs, seeded when no weights
are at hand.

Submodules import torch/timm/open_clip; this package re-exports them, so import it only where a
model is built.
"""
from workbook.models.siglip import (
    Tower,
    build_tower,
    images,
    load_pos_table,
    patch_size,
    pos_table,
    resolve_model,
    use_interpolation,
)

__all__ = ["Tower", "build_tower", "images", "load_pos_table", "patch_size", "pos_table",
           "resolve_model", "use_interpolation"]
