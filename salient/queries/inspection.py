"""Queries of visual inspection: an autoencoder's reconstruction error (the ``recon`` method) and an
embedding network's vector (the Siamese re-check, :mod:`salient.inspect`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Query


@dataclass(frozen=True)
class ReconQuery(Query):
    """One input, the item itself, through an autoencoder (a model whose output is its input's shape).
    Result: float32 (H, W), ``kind="abs"``: Σ_c |x_c − r_c| (x the item's input, r its reconstruction,
    both in the model's input space); ``kind="ssim"``: 1 − SSIM(x, r) per pixel (skimage's
    ``structural_similarity``, 7 x 7 windows, averaged over channels, data range = max − min of x)."""

    kind: str = "abs"
    score_kind: ClassVar[str | None] = "logit"  # the raw output: the reconstruction itself

    def n_inputs(self) -> int:
        return 1

    def build(self, ctx, start, stop, out):
        out[0].copy_(ctx.x)

    def reduce_init(self, ctx):
        return {"x": ctx.x}

    def reduce(self, state, aux, scores):
        recon = scores[0].float()
        if self.kind == "ssim":
            state["recon"] = recon.cpu()
        else:
            state["map"] = (state["x"].float() - recon).abs().sum(dim=0).cpu()
        return state

    def finish(self, state, ctx):
        if self.kind != "ssim":
            return state["map"].numpy().astype(np.float32)
        from skimage.metrics import structural_similarity

        x = state["x"].detach().cpu().double().numpy()
        r = state["recon"].double().numpy()
        span = max(float(x.max() - x.min()), 1e-6)
        _, full = structural_similarity(x, r, channel_axis=0, data_range=span, full=True)
        return (1.0 - np.asarray(full).mean(axis=0)).astype(np.float32)


@dataclass(frozen=True)
class CropQuery(Query):
    """Crops of the item at ``boxes`` (y0, y1, x0, x1), each resized to ``size`` (bilinear, antialiased) and
    passed through an embedding network (``output=embedding``): result float32 (n_boxes, D), its raw output."""

    boxes: tuple[tuple[int, int, int, int], ...] = ()
    size: tuple[int, int] = (32, 32)
    score_kind: ClassVar[str | None] = "logit"

    def n_inputs(self) -> int:
        return len(self.boxes)

    def input_shape(self, ctx):
        return (int(ctx.x.shape[0]), *self.size)

    def build(self, ctx, start, stop, out):
        import torch.nn.functional as F

        for i, (y0, y1, x0, x1) in enumerate(self.boxes[start:stop]):
            crop = ctx.x[None, :, y0:y1, x0:x1]
            out[i].copy_(F.interpolate(crop, size=self.size, mode="bilinear", align_corners=False, antialias=True)[0])

    def reduce(self, state, aux, scores):
        state.append(scores.float().cpu())
        return state
