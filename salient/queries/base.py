"""The query contract: what a method asks the engine to evaluate, in a few numbers.

A query is small and picklable; the worker that holds the item evaluates it on its device, so masks
never travel and results are small. Two kinds:
- :class:`Query` (black box): ``n_inputs()`` masked inputs that the worker writes into its device
  batches (``build``, over ranges [start, stop) that may span several batches), scores with the
  model (``score_kind``: the model's own unless the query declares one), and folds back
  (``reduce``, ``finish``).
- :class:`WhiteBoxQuery` (hooks, gradients): ``run(ctx, module) -> (result, n_forward)`` on the
  model's own module; it touches nothing of the worker.
A query whose item fails (bad data, NaN scores) gets a :class:`QueryFailure` as its result.

``targets`` are the class ids whose scores the method needs; a result has one column (or map) per
target, in that order. Queries reach the device kernels only through ``ctx.kernels`` (the worker's
backend, :mod:`salient.kernels.backend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..kernels import TORCH


@dataclass
class QueryFailure:
    """The result of a query that failed for its item (bad data, NaN scores)."""

    item: str
    reason: str


class ItemContext:
    """What a worker knows about one item: its input x (C, H, W) on the device, the worker's kernel
    backend, and a cache."""

    def __init__(self, item_id: str, x: torch.Tensor, black: torch.Tensor, kernels: Any = TORCH):
        self.item_id = item_id
        self.x = x
        self.black = black
        self.kernels = kernels
        self.cache: dict[Any, Any] = {}

    @property
    def size(self) -> tuple[int, int]:
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    @property
    def frames(self) -> int:
        """T for a clip (C, T, H, W), 0 for an image."""
        return int(self.x.shape[1]) if self.x.ndim == 4 else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one map: (T, H, W) for a clip, (H, W) for an image."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def fill(self, kind: str | float) -> torch.Tensor:
        """The substrate of fill ``kind`` for this item ("image" is the item itself), cached."""
        if kind == "image":
            return self.x
        key = ("fill", kind)
        if key not in self.cache:
            self.cache[key] = self.kernels.fill_tensor(kind, self.x, self.black)
        return self.cache[key]

    def blend_terms(self, kind: str | float, out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``kernels.blend_terms`` of this item and fill ``kind`` for batches laid out like ``out``, cached."""
        key = ("blend", kind, self.kernels.is_channels_last(out))
        if key not in self.cache:
            self.cache[key] = self.kernels.blend_terms(self.x, self.fill(kind), out)
        return self.cache[key]


@dataclass(frozen=True)
class Query:
    """A black-box query: ``n_inputs()`` inputs; the result is their scores for ``targets``, float32
    (n_inputs, T). ``score_kind``: how the worker scores them ("softmax", "logit", "sigmoid"; None:
    the model's own)."""

    item: str
    targets: tuple[int, ...] = ()
    score_kind: ClassVar[str | None] = None

    def n_inputs(self) -> int:
        """Forward passes this query costs."""
        raise NotImplementedError

    def build(self, ctx: ItemContext, start: int, stop: int, out: torch.Tensor) -> Any:
        """Write inputs [start, stop) into ``out`` (stop - start, C, H, W); return anything reduce needs."""
        raise NotImplementedError

    def input_shape(self, ctx: ItemContext) -> tuple[int, ...]:
        """The shape of one of its inputs (without the batch axis): the item's own, unless the query
        builds inputs of another size (crops resized to the model's input)."""
        return tuple(ctx.x.shape)

    def changed_boxes(self) -> tuple[tuple[int, int, int, int], ...] | None:
        """Per input, the box (y0, y1, x0, x1) outside which it equals the item itself, or None (the
        inputs may differ anywhere). Lets the worker recompute only what a box changes
        (``salient.engine.incremental``)."""
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
class WhiteBoxQuery:
    """A query that needs the module itself (hooks, gradients): ``run(ctx, module)`` returns
    (result, forward passes it made); the worker counts them. ``n_inputs()`` is its cost in passes.
    ``needs_grad``: its forward keeps every activation for a backward pass (the worker checks that they fit
    the memory limit for an input at another size than the model's)."""

    item: str
    targets: tuple[int, ...] = ()
    needs_grad: ClassVar[bool] = False

    def n_inputs(self) -> int:
        return 1

    def run(self, ctx: ItemContext, module: torch.nn.Module) -> tuple[Any, int]:
        raise NotImplementedError
