"""The query of a causal metric: points of an insertion or deletion curve."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .base import Query


@dataclass(frozen=True)
class CurveQuery(Query):
    """Points of an insertion/deletion curve: input k shows ``top`` on the first ``counts[k]``
    pixels in order of decreasing saliency and ``base`` elsewhere (fills, or "image").
    Result: scores (n_points, T)."""

    saliency: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    counts: tuple[int, ...] = ()
    base: str | float = "image"
    top: str | float = "zero"

    def n_inputs(self) -> int:
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
        counts = torch.as_tensor(self.counts[start:stop])  # on the host: the backend moves it without blocking
        ctx.kernels.curve_blend(out, ctx.fill(self.top), ctx.fill(self.base), rank, counts)

    def finish(self, state, ctx):
        ctx.cache.pop(self._key(), None)
        return super().finish(state, ctx)
