"""A Worker holds one model replica on one device and evaluates queries for the items it holds.

It is the same class behind every executor: in-process for LocalExecutor, inside a Ray actor for
RayExecutor. Queries from many items are packed into device batches of ``batch_size``; every
forward pass has exactly that batch shape (a short last batch is padded), because on CPU a
sample's output depends, in the last bits, on the batch shape: a fixed shape makes maps
independent of how queries were packed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ItemError
from ..methods.queries import ItemContext, Query
from ..models import Model

BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class QueryFailure:
    """The result of a query that failed for its item (bad data, NaN scores)."""

    item: str
    reason: str


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autotune_batch(model: Model, device: torch.device, candidates=BATCH_CANDIDATES, min_seconds: float = 0.3) -> int:
    """The batch size with the highest images/s on random inputs; stops once throughput falls."""
    module = model.module
    best, best_rate = candidates[0], 0.0
    with torch.inference_mode():
        for b in candidates:
            x = torch.randn(b, model.channels, *model.input_size, device=device).contiguous(
                memory_format=torch.channels_last
            )
            module(x)
            n, t0 = 0, time.perf_counter()
            while True:
                module(x)
                n += b
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if time.perf_counter() - t0 >= min_seconds and n >= 2 * b:
                    break
            rate = n / (time.perf_counter() - t0)
            if rate > best_rate * 1.03:
                best, best_rate = b, rate
            elif rate < best_rate * 0.9:
                break
    return best


class Worker:
    """Evaluates queries against the items it holds.

    ``put(item_id, x)`` caches an item's preprocessed input (an LRU bounded by ``max_items``);
    ``run(queries)`` returns one result per query, or a :class:`QueryFailure`.
    """

    def __init__(
        self, model: Model, device: str | torch.device | None = None, batch_size: int | None = None,
        max_items: int = 256, threads: int | None = None,
    ):
        if threads:
            torch.set_num_threads(int(threads))
        self.model = model
        self.device = pick_device(device)
        self.module = model.module.to(self.device).eval()
        if self.device.type in ("cpu", "cuda"):
            self.module = self.module.to(memory_format=torch.channels_last)
        self.batch_size = int(batch_size) if batch_size else autotune_batch(model, self.device)
        self.max_items = max_items
        self.items: OrderedDict[str, ItemContext] = OrderedDict()
        self.black = model.black(self.device)
        self.n_forward = 0
        self.busy_seconds = 0.0
        self._buffer: torch.Tensor | None = None

    def has(self, item_id: str) -> bool:
        return item_id in self.items

    def put(self, item_id: str, x: torch.Tensor | np.ndarray) -> None:
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        self.items[item_id] = ItemContext(item_id, x, self.black)
        self.items.move_to_end(item_id)
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)

    def drop(self, item_id: str) -> None:
        self.items.pop(item_id, None)

    def context(self, item_id: str) -> ItemContext:
        ctx = self.items.get(item_id)
        if ctx is None:
            raise KeyError(f"worker does not hold item {item_id!r}")
        self.items.move_to_end(item_id)
        return ctx

    def _buf(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self._buffer is None or tuple(self._buffer.shape) != shape:
            self._buffer = torch.zeros(shape, device=self.device).contiguous(memory_format=torch.channels_last)
        return self._buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (n, K) of the model's score kind for a batch already on the device."""
        with torch.inference_mode():
            logits = self.module(x)
        self.n_forward += x.shape[0]
        return self.model.score(logits)

    def run(self, queries: list[Query]) -> list[Any]:
        """Evaluate queries; results are in the same order. A failing item fails only its queries."""
        t0 = time.perf_counter()
        results: list[Any] = [None] * len(queries)
        failed: dict[str, str] = {}
        states: dict[int, Any] = {}
        segments: list[tuple[int, int, int]] = []  # (query index, start, stop) in packing order
        for qi, q in enumerate(queries):
            if q.item not in self.items:
                results[qi] = QueryFailure(q.item, f"worker does not hold item {q.item!r}")
                continue
            execute = getattr(q, "execute", None)
            if execute is not None:  # white-box queries run on their own (forward + backward)
                try:
                    results[qi] = execute(self.context(q.item), self)
                except ItemError as e:
                    results[qi] = QueryFailure(q.item, str(e))
                continue
            states[qi] = q.reduce_init(self.context(q.item))
            segments.append((qi, 0, q.size()))
        b = self.batch_size
        x0 = next(iter(self.items.values())).x if self.items else None
        pending: list[tuple[int, int, int, int, Any]] = []
        fill = 0
        buf = self._buf((b, *x0.shape)) if x0 is not None and segments else None

        def flush() -> None:
            nonlocal fill, pending
            if not pending:
                return
            scores = self.forward(buf)  # always the full batch shape
            for qi, s, e, off, aux in pending:
                q = queries[qi]
                if q.item in failed:
                    continue
                sc = scores[off : off + (e - s)]
                if not torch.isfinite(sc[:, list(q.targets)] if q.targets else sc).all():
                    failed[q.item] = f"model returned NaN or infinite scores for item {q.item!r}"
                    continue
                states[qi] = q.reduce(states[qi], aux, sc)
            pending, fill = [], 0

        for qi, s, e in segments:
            q = queries[qi]
            while s < e:
                take = min(e - s, b - fill)
                ctx = self.context(q.item)
                try:
                    aux = q.build(ctx, s, s + take, buf[fill : fill + take])
                except ItemError as err:
                    failed[q.item] = str(err)
                    aux = None
                pending.append((qi, s, s + take, fill, aux))
                fill += take
                s += take
                if fill == b:
                    flush()
        flush()
        for qi, q in enumerate(queries):
            if results[qi] is not None:
                continue
            if q.item in failed:
                results[qi] = QueryFailure(q.item, failed[q.item])
            else:
                results[qi] = q.finish(states[qi], self.context(q.item))
        self.busy_seconds += time.perf_counter() - t0
        return results
