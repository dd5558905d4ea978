"""The reference backend object: the torch kernels of :mod:`salient.kernels.torch` behind the backend contract
(:mod:`salient.kernels.backend` states it), on any torch device."""

from __future__ import annotations

from typing import Any

import torch

from . import boxes as _boxes
from . import fills as _fills
from .rise_masks import rise_masks as _rise_masks
from .rise_masks import rise_weighted_sum as _rise_weighted_sum
from .rise_masks_3d import rise_masks_3d as _rise_masks_3d
from .rise_masks_3d import rise_weighted_sum_3d as _rise_weighted_sum_3d


class TorchKernels:
    """The reference backend: the kernels of :mod:`salient.kernels.torch`, on any torch device; the fused
    operations (``rise_blend``, ``curve_blend``) are compositions of them."""

    name = "torch"
    rise_masks = staticmethod(_rise_masks)
    rise_weighted_sum = staticmethod(_rise_weighted_sum)
    rise_masks_3d = staticmethod(_rise_masks_3d)
    rise_weighted_sum_3d = staticmethod(_rise_weighted_sum_3d)
    paste_boxes = staticmethod(_boxes.paste_boxes)
    fill_tensor = staticmethod(_fills.fill_tensor)
    blend_terms = staticmethod(_fills.blend_terms)
    blend_into = staticmethod(_fills.blend_into)
    blend_over = staticmethod(_fills.blend_over)
    is_channels_last = staticmethod(_fills.is_channels_last)

    @staticmethod
    def batch_dtype(dtype: torch.dtype) -> torch.dtype:
        return torch.float32

    def rise_blend(self, ctx: Any, seed: int, draw: int, n: int, cells: int, p: float, start: int, stop: int,
                   out: torch.Tensor, fill: str | float) -> None:
        if self.is_channels_last(out):  # the masks go straight into the batch, in its pixel order, then blend in place
            self.rise_masks(seed, draw, n, cells, p, ctx.size, ctx.device, start, stop, out.permute(0, 2, 3, 1))
            self.blend_over(out, *ctx.blend_terms(fill, out))
        else:
            keep = self.rise_masks(seed, draw, n, cells, p, ctx.size, ctx.device, start, stop)
            self.blend_into(out, ctx.x, ctx.fill(fill), keep)

    def rise_blend_3d(self, ctx: Any, seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, start: int,
                      stop: int, out: torch.Tensor, fill: str | float) -> None:
        keep = self.rise_masks_3d(seed, draw, n, cells, cells_t, p, ctx.shape, ctx.device, start, stop)
        self.blend_into(out, ctx.x, ctx.fill(fill), keep)

    def curve_blend(self, out: torch.Tensor, top: torch.Tensor, base: torch.Tensor, rank: torch.Tensor,
                    counts: torch.Tensor) -> None:
        keep_top = (rank[None] < counts.to(rank.device)[:, None, None]).float()
        self.blend_into(out, top, base, keep_top)  # keep = 1 shows "top": blend_into keeps its x where keep = 1

    def __repr__(self) -> str:
        return f"<{self.name} kernels>"


TORCH = TorchKernels()
