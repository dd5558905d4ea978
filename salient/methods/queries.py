"""Query specs: what a method asks the engine to evaluate, in a few numbers.

A query is small and picklable; the worker that holds the item turns it into masked inputs on its
device (``build``), runs the model, and folds the scores back (``reduce``/``finish``), so masks
never travel and results are small. Every query covers ``size()`` forward passes, which a worker
may split over several device batches: ``build`` and ``reduce`` get ranges [start, stop).

``targets`` are the class ids whose scores the method needs; a query's result has one column (or
map) per target, in that order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..kernels import (
    blend_into,
    blend_over,
    blend_terms,
    is_channels_last,
    paste_boxes,
    rise_masks,
    rise_weighted_sum,
)


class ItemContext:
    """What a worker knows about one item: its input x (C, H, W) on the device, and a cache."""

    def __init__(self, item_id: str, x: torch.Tensor, black: torch.Tensor):
        self.item_id = item_id
        self.x = x
        self.black = black
        self.cache: dict[Any, Any] = {}

    @property
    def size(self) -> tuple[int, int]:
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def fill(self, kind: str | float) -> torch.Tensor:
        """The substrate of fill ``kind`` for this item ("image" is the item itself), cached."""
        if kind == "image":
            return self.x
        key = ("fill", kind)
        if key not in self.cache:
            from ..kernels import fill_tensor

            self.cache[key] = fill_tensor(kind, self.x, self.black)
        return self.cache[key]

    def blend_terms(self, kind: str | float, out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``kernels.blend_terms`` of this item and fill ``kind`` for batches laid out like ``out``, cached."""
        key = ("blend", kind, is_channels_last(out))
        if key not in self.cache:
            self.cache[key] = blend_terms(self.x, self.fill(kind), out)
        return self.cache[key]


@dataclass(frozen=True)
class Query:
    """Base: ``size()`` inputs; the result is their scores for ``targets``, float32 (size, T)."""

    item: str
    targets: tuple[int, ...] = ()

    def size(self) -> int:
        raise NotImplementedError

    def build(self, ctx: ItemContext, start: int, stop: int, out: torch.Tensor) -> Any:
        """Write inputs [start, stop) into ``out`` (stop - start, C, H, W); return anything reduce needs."""
        raise NotImplementedError

    def changed_boxes(self) -> tuple[tuple[int, int, int, int], ...] | None:
        """Per input, the box (y0, y1, x0, x1) outside which it equals the item itself, or None (the
        inputs may differ anywhere). Lets the worker recompute only what a box changes
        (``salient.models.incremental``)."""
        return None

    def reduce_init(self, ctx: ItemContext) -> Any:
        return []

    def reduce(self, state: Any, aux: Any, scores: torch.Tensor) -> Any:
        """Fold scores (stop - start, K) of all classes for the inputs of one ``build`` call."""
        state.append(scores[:, list(self.targets)].float().cpu())
        return state

    def finish(self, state: Any, ctx: ItemContext) -> Any:
        return torch.cat(state).numpy().astype(np.float32)


@dataclass(frozen=True)
class ScoreQuery(Query):
    """The unmasked image: result is the score vector of all classes, float32 (K,)."""

    def size(self) -> int:
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
    """Masks ``start:stop`` (default all ``n``) of the ``n`` RISE masks of chunk ``chunk``: result is
    (Σ_i f_t(X_i) · M_i as float32 (T, H, W), Σ_i f_t(X_i) as (T,)) with X_i = I ⊙ M_i + fill ⊙ (1 - M_i).
    The sum is made from the masks' separable factors (``kernels.rise_weighted_sum``), block by block in
    index order, so it does not depend on the worker's batch size."""

    seed: int = 0
    chunk: int = 0
    n: int = 500
    cells: int = 7
    p: float = 0.5
    fill: str | float = "zero"
    start: int = 0
    stop: int | None = None

    def _range(self) -> tuple[int, int]:
        return self.start, self.n if self.stop is None else self.stop

    def size(self) -> int:
        lo, hi = self._range()
        return hi - lo

    def _masks(self, ctx, start, stop, out=None):
        lo = self._range()[0]
        return rise_masks(self.seed, self.chunk, self.n, self.cells, self.p, ctx.size, ctx.device, lo + start,
                          lo + stop, out)

    def build(self, ctx, start, stop, out):
        if is_channels_last(out):  # the masks go straight into the batch, in its pixel order, then blend in place
            self._masks(ctx, start, stop, out.permute(0, 2, 3, 1))
            blend_over(out, *ctx.blend_terms(self.fill, out))
        else:
            blend_into(out, ctx.x, ctx.fill(self.fill), self._masks(ctx, start, stop))

    def finish(self, state, ctx):
        scores = torch.cat(state).to(ctx.device)  # (n, T)
        lo, _ = self._range()
        total = rise_weighted_sum(self.seed, self.chunk, self.n, self.cells, self.p, ctx.size, scores, lo)
        return total.cpu().numpy(), scores.sum(dim=0).double().cpu().numpy()


@dataclass(frozen=True)
class BoxQuery(Query):
    """One input per box (y0, y1, x0, x1): ``mode="delete"`` fills the box, ``mode="keep"`` fills
    everything outside it. Result: scores (n_boxes, T)."""

    boxes: tuple[tuple[int, int, int, int], ...] = ()
    mode: str = "delete"
    fill: str | float = "zero"

    def size(self) -> int:
        return len(self.boxes)

    def build(self, ctx, start, stop, out):
        fill = ctx.fill(self.fill)
        base, inner = (fill, ctx.x) if self.mode == "keep" else (ctx.x, fill)
        paste_boxes(out, base, inner, self.boxes[start:stop])

    def changed_boxes(self):
        return self.boxes if self.mode == "delete" else None


@dataclass(frozen=True)
class CurveQuery(Query):
    """Points of an insertion/deletion curve: input k shows ``top`` on the first ``counts[k]``
    pixels in order of decreasing saliency and ``base`` elsewhere (fills, or "image").
    Result: scores (n_points, T)."""

    saliency: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    counts: tuple[int, ...] = ()
    base: str | float = "image"
    top: str | float = "zero"

    def size(self) -> int:
        return len(self.counts)

    def _key(self) -> tuple:
        """The cache key of this map's pixel ranks: its content (an ``id`` could be reused by a later
        query after this one failed without ``finish``, and would then get stale ranks)."""
        sal = np.ascontiguousarray(self.saliency)
        return ("rank", sal.shape, hashlib.sha1(sal.view(np.uint8).ravel()).hexdigest())

    def build(self, ctx, start, stop, out):
        key = self._key()
        rank = ctx.cache.get(key)
        if rank is None:
            s = torch.as_tensor(np.ascontiguousarray(self.saliency), device=ctx.device).flatten()
            order = torch.argsort(-s, stable=True)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel(), device=ctx.device)
            rank = rank.view(ctx.size)
            ctx.cache[key] = rank
        k = torch.as_tensor(self.counts[start:stop], device=ctx.device)
        keep_top = (rank[None] < k[:, None, None]).float()
        # keep=1 shows "top"; blend_into keeps x where keep=1, so swap roles.
        blend_into(out, ctx.fill(self.top), ctx.fill(self.base), keep_top)

    def finish(self, state, ctx):
        ctx.cache.pop(self._key(), None)
        return super().finish(state, ctx)
