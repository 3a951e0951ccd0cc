"""The image prefix of a VLM-shaped request: SigLIP tower, position interpolation, projection.

The position-interpolation claim was made about time to first token in a served VLM, where the
image goes through the vision tower (its position table resampled to the image's grid by one of
:mod:`workbook.interp`'s implementations), a projection to the language model's width, and is then
prefilled ahead of the prompt, LLaVA-style. This module is that front: a tower built by
:func:`workbook.models.siglip.build_tower` (seeded random weights unless a checkpoint is given), a
seeded two-layer projection (Linear, GELU, Linear), and one seeded image per size, so a request's
prefix costs what a real one would and nothing is read from disk while serving.
"""
from __future__ import annotations

import time

from workbook.errors import bad_param


class VisionPrefix:
    def __init__(self, tower: str, lm_width: int, *, dtype, device, depth: int = 0,
                 seed: int = 0):
        import torch

        from workbook.models.siglip import build_tower

        t0 = time.perf_counter()
        self.tower = build_tower(tower, depth=depth, seed=seed)
        self.tower.model.to(device=device, dtype=dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.proj = torch.nn.Sequential(
                torch.nn.Linear(self.tower.width, lm_width), torch.nn.GELU(),
                torch.nn.Linear(lm_width, lm_width)).to(device=device, dtype=dtype).eval()
        self.device, self.dtype, self.seed = device, dtype, seed
        self._images: dict[int, object] = {}
        self.build_s = time.perf_counter() - t0

    @property
    def patch(self) -> int:
        return self.tower.patch

    def tokens(self, size: int) -> int:
        """Prefix tokens for a ``size`` x ``size`` image: one per patch of its grid."""
        return (size // self.patch) ** 2

    def check(self, size: int, interp: str, name: str = "image_size") -> None:
        from workbook.interp import IMPLEMENTATIONS

        if not isinstance(size, int) or isinstance(size, bool) or size < self.patch:
            raise bad_param(name, size, f"a whole number of pixels, at least the patch size "
                            f"({self.patch})")
        if interp not in IMPLEMENTATIONS:
            raise bad_param("interp", interp, "one of " + ", ".join(IMPLEMENTATIONS))

    def _image(self, size: int):
        from workbook.models.siglip import images

        img = self._images.get(size)
        if img is None:  # cut to whole patches, as the patch convolution's stride would
            side = size // self.patch * self.patch
            img = images(1, side, seed=self.seed, device=self.device, dtype=self.dtype)
            self._images[size] = img
        return img

    def embeds(self, size: int, interp: str):
        """(patches, lm_width) embeddings to prepend: tower at ``size`` with ``interp``, then the
        projection."""
        import torch

        from workbook.models.siglip import use_interpolation

        use_interpolation(self.tower, interp)
        with torch.inference_mode():
            feats = self.tower.model.forward_features(self._image(size))
            return self.proj(feats)[0]

    def describe(self) -> dict:
        t = self.tower
        return {"tower": t.name, "patch": t.patch, "width": t.width, "depth": t.depth,
                "weights": t.weights, "params": t.params,
                "projection": f"Linear({t.width}, H), GELU, Linear(H, H), seeded "
                              f"(seed={self.seed + 1})"}
