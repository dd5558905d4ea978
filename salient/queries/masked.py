"""Black-box queries of masked inputs: the unmasked image, RISE masks (2-D and space-time), boxes (occlusion,
DiDA, BOREx)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Query


@dataclass(frozen=True)
class ScoreQuery(Query):
    """The unmasked image: result is the score vector of all classes, float32 (K,)."""

    def n_inputs(self) -> int:
        return 1

    def build(self, ctx, start, stop, out):
        out[0].copy_(ctx.x)

    def reduce(self, state, aux, scores):
        state.append(scores[0].float().cpu())
        return state

    def finish(self, state, ctx):
        return state[0].numpy().astype(np.float32)


@dataclass(frozen=True)
class RiseQuery(Query):
    """Masks ``start:stop`` (default all ``n``) of the ``n`` RISE masks of draw ``draw``: result is
    (Σ_i f_t(X_i) · M_i as float32 (T, H, W), Σ_i f_t(X_i) as (T,)) with X_i = I ⊙ M_i + fill ⊙ (1 - M_i).
    The sum is made from the masks' separable factors (the backend's ``rise_weighted_sum``), block by block in
    index order, so it does not depend on the worker's batch size."""

    seed: int = 0
    draw: int = 0
    n: int = 500
    cells: int = 7
    p: float = 0.5
    fill: str | float = "zero"
    start: int = 0
    stop: int | None = None

    def _range(self) -> tuple[int, int]:
        return self.start, self.n if self.stop is None else self.stop

    def n_inputs(self) -> int:
        lo, hi = self._range()
        return hi - lo

    def build(self, ctx, start, stop, out):
        lo = self._range()[0]
        ctx.kernels.rise_blend(ctx, self.seed, self.draw, self.n, self.cells, self.p, lo + start, lo + stop, out,
                               self.fill)

    def finish(self, state, ctx):
        scores = torch.cat(state).to(ctx.device)  # (n, T)
        lo, _ = self._range()
        total = ctx.kernels.rise_weighted_sum(self.seed, self.draw, self.n, self.cells, self.p, ctx.size, scores, lo)
        return total.cpu().numpy(), scores.sum(dim=0).double().cpu().numpy()


@dataclass(frozen=True)
class Rise3DQuery(RiseQuery):
    """RISE-3D on a clip (C, T, H, W): masks ``start:stop`` of the ``n`` space-time masks (T, H, W) of draw
    ``draw`` (``cells_t`` temporal cells; the backend's ``rise_masks_3d``). Result: (Σ_i f_t(X_i) · M_i as
    float32 (targets, T, H, W), Σ_i f_t(X_i) as (targets,)), X_i = I ⊙ M_i + fill ⊙ (1 - M_i), the sum made
    from the masks' separable factors (``rise_weighted_sum_3d``) block by block in index order, so it does
    not depend on the worker's batch size. Clip batches are plain contiguous (n, C, T, H, W)."""

    cells_t: int = 4

    def _args(self, ctx) -> tuple:
        return self.seed, self.draw, self.n, self.cells, self.cells_t, self.p, ctx.shape

    def build(self, ctx, start, stop, out):
        lo = self._range()[0]
        ctx.kernels.rise_blend_3d(ctx, self.seed, self.draw, self.n, self.cells, self.cells_t, self.p, lo + start,
                                  lo + stop, out, self.fill)

    def finish(self, state, ctx):
        scores = torch.cat(state).to(ctx.device)  # (n, targets)
        total = ctx.kernels.rise_weighted_sum_3d(*self._args(ctx), scores, self._range()[0])
        return total.cpu().numpy(), scores.sum(dim=0).double().cpu().numpy()


@dataclass(frozen=True)
class BoxQuery(Query):
    """One input per box (y0, y1, x0, x1), or (t0, t1, y0, y1, x0, x1) on a clip: ``mode="delete"`` fills
    the box, ``mode="keep"`` fills everything outside it. Result: scores (n_boxes, T)."""

    boxes: tuple[tuple[int, int, int, int], ...] = ()
    mode: str = "delete"
    fill: str | float = "zero"

    def n_inputs(self) -> int:
        return len(self.boxes)

    def build(self, ctx, start, stop, out):
        fill = ctx.fill(self.fill)
        base, inner = (fill, ctx.x) if self.mode == "keep" else (ctx.x, fill)
        ctx.kernels.paste_boxes(out, base, inner, self.boxes[start:stop])

    def changed_boxes(self):
        return self.boxes if self.mode == "delete" else None
