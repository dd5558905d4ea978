"""A Worker holds one model replica on one device and evaluates queries for the items it holds.

It is the same class behind every executor: in a thread of LocalExecutor, inside a Ray actor for
RayExecutor. Queries from many items are packed into device batches of ``batch_size``; every
forward pass has exactly that batch shape (a short last batch is padded); inputs at another size than
the model's (whole mode) run at the batch of the memory rule, a function of their shape and the
configured limit only (:func:`~salient.engine.memory.batch_for`).

Determinism (CPU): a sample's output depends, in the last bits, on the batch *shape* and on the
number of intra-op threads of the forward, but not on which other samples share the batch. So every
worker of an engine uses one shared ``batch_size`` and the same ``threads`` (1 per worker on CPU,
parallelism coming from one worker per core); maps are then bitwise identical whatever the
executor, the number of workers and the packing of queries. On a GPU the same holds for one GPU type
and precision: a fixed batch shape, cuDNN's deterministic algorithms and no TF32 (:func:`cuda_numerics`),
and reductions in a fixed order (the kernels' weighted sums).

Precision (``fp32``, ``bf16``, ``fp16``): black-box forwards run under ``torch.autocast`` at that dtype
(white-box queries, which take gradients, stay fp32); scores are computed in fp32 from the logits. The
fused and incremental CPU paths are fp32 only and are off at another precision. The GPU path also keeps
the device busy: items are copied from pinned memory without blocking, the batch k+1 is built (masks on the
device) while the forward of batch k runs, scores are read back one batch late, and ``cuda_graphs``
replays a captured forward for each batch shape.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ItemError, SalientError, short_repr
from ..kernels import kernels_for
from ..models import Model
from ..queries import ItemContext, Query, QueryFailure, WhiteBoxQuery
from .fuse import fuse_for_cpu, with_reference_rows
from .incremental import IncrementalPlan, plan_incremental
from .memory import batch_for
from .whole import check_gradients_fit

BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
GPU_BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BATCH_SIZE = 4  # the CPU default: fixed (so two runs give the same bits); fastest measured on 2 cores
# (through the fused module: 1.3x over batch 2 for RISE, 1.2x for occlusion; batch 8 is slower again)


def parse_device(device: str | torch.device) -> torch.device:
    """A device name (cpu, cuda, cuda:N, mps, ...) as a torch.device; a one-line error for anything else."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SalientError(f"device {short_repr(device, 60)}: not a device; use cpu, cuda, cuda:N, mps or auto") \
            from None


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on (None or "auto": the GPU if there is one); a device that this machine lacks
    is a one-line error here, not a failure at the first tensor moved to it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = parse_device(device)
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    n = backend.device_count() if backend is not None and hasattr(backend, "device_count") else 0
    if not n and backend is not None and getattr(backend, "is_available", lambda: False)():
        n = 1
    if not n or (dev.index or 0) >= n:
        have = f"{n} {dev.type} device{'s' * (n != 1)}" if n else f"no {dev.type} device"
        raise SalientError(f"device {device}: this machine has {have}; use cpu or auto")
    return dev


def parse_precision(precision: str | None) -> str:
    """``fp32`` (default), ``bf16`` or ``fp16``; a one-line error for anything else."""
    name = "fp32" if precision is None else str(precision).strip().lower()
    if name not in PRECISIONS:
        raise SalientError(f"precision {short_repr(precision, 40)}: unknown; use one of {', '.join(PRECISIONS)}")
    return name


def precision_and_kernels(device: torch.device, precision: str | None, kernels: str | None,
                          cuda_graphs: bool) -> tuple[str, Any]:
    """(precision, kernel backend) of a worker on ``device``: one-line errors for an unknown precision or
    kernels, CuPy asked for where it cannot run, and CUDA graphs without a CUDA device."""
    if cuda_graphs and device.type != "cuda":
        raise SalientError(f"cuda_graphs needs a CUDA device; this worker runs on {device}")
    return parse_precision(precision), kernels_for(device, kernels)


def autocast(device: torch.device, precision: str, cache: bool = True):
    """``torch.autocast`` at ``precision`` on ``device`` (a no-op context at fp32)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=cache)


def cuda_numerics() -> None:
    """The CUDA settings a worker runs under (process-wide in torch): cuDNN's deterministic algorithms and no
    benchmark-chosen ones (the same bits at every run on one GPU type), and no TF32 (fp32 means fp32: maps
    within 1e-4 of the CPU's; bf16/fp16 are asked for with ``precision``)."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def autotune_batch(model: Model, device: torch.device, candidates=None, min_seconds: float = 0.3,
                   precision: str = "fp32") -> int:
    """The batch size with the highest images/s on random inputs at ``precision``: the largest before throughput
    stops rising (by 3%), bounded by memory (a batch that runs out of device memory ends the search)."""
    module = model.module.to(device).eval()
    if candidates is None:
        candidates = GPU_BATCH_CANDIDATES if device.type == "cuda" else BATCH_CANDIDATES
    best, best_rate = candidates[0], 0.0
    with torch.inference_mode(), autocast(device, precision):
        for b in candidates:
            try:
                x = torch.randn(b, *model.input_shape, device=device).contiguous(memory_format=model.memory_format)
                module(x)
                n, t0 = 0, time.perf_counter()
                while True:
                    module(x)
                    n += b
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if time.perf_counter() - t0 >= min_seconds and n >= 2 * b:
                        break
            except torch.OutOfMemoryError:
                x = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                break
            rate = n / (time.perf_counter() - t0)
            if rate > best_rate * 1.03:
                best, best_rate = b, rate
            elif rate < best_rate * 0.9:
                break
    return best


def resolve_batch_size(model: Model, device: torch.device, batch_size: int | str | None,
                       precision: str = "fp32") -> int:
    """A number is kept; "auto" autotunes; None autotunes on an accelerator and is
    ``CPU_BATCH_SIZE`` on CPU (timing-based choices differ between runs, and the bits with them)."""
    if batch_size is None:
        return CPU_BATCH_SIZE if device.type == "cpu" else autotune_batch(model, device, precision=precision)
    if str(batch_size).strip().lower() == "auto":
        return autotune_batch(model, device, precision=precision)
    try:
        b = int(batch_size)
    except (TypeError, ValueError):
        b = 0
    if b < 1:
        raise SalientError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    return b


def default_threads(device: torch.device, threads: int | None) -> int | None:
    """Intra-op threads per forward: 1 on CPU unless given (deterministic whatever the worker count);
    None (leave torch alone) on an accelerator."""
    if threads is not None:
        return int(threads)
    return 1 if device.type == "cpu" else None


class Worker:
    """Evaluates queries against the items it holds.

    ``put(item_id, x)`` caches an item's preprocessed input (an LRU bounded by ``max_items``);
    ``run(queries)`` returns one result per query, or a :class:`QueryFailure`. ``threads`` is
    applied to the calling thread at every ``run`` (torch's thread count is per thread). On CPU,
    masked forwards run through a fused copy of the module (``fuse=True``: batch norm folded,
    activations fused into oneDNN convolutions, ~1.5-2x faster; see ``salient.engine.fuse``), and
    queries whose inputs differ from their item only inside a box (occlusion, DiDA) recompute only
    what the box changes in the early layers (``incremental=True``; ``salient.engine.incremental``).
    Both fast paths hand the samples of a batch that hold NaN or ±inf to ``module`` itself (the fused
    activations would turn NaN into numbers: ``salient.engine.fuse``), so a non-finite input gives
    the same scores, and the same "model returned NaN" failure, with or without them.
    White-box queries (CAMs: hooks, gradients) always use ``module`` itself.

    ``precision``: fp32 | bf16 | fp16 (autocast, see the module docstring); ``kernels``: auto | torch | cupy
    (:func:`~salient.kernels.backend.kernels_for`); ``cuda_graphs``: replay a captured forward per batch
    shape (CUDA only).
    """

    def __init__(
        self, model: Model, device: str | torch.device | None = None, batch_size: int | str | None = None,
        max_items: int = 256, threads: int | None = None, fuse: bool = True, incremental: bool = True,
        memory_limit: int | None = None, precision: str = "fp32", kernels: str | None = "auto",
        cuda_graphs: bool = False,
    ):
        self.model = model
        self.memory_limit = memory_limit  # per worker: lowers the batch of inputs at other sizes (memory.batch_for)
        self.device = pick_device(device)
        # the mask math for this device (handed to queries) and the forwards' precision
        self.precision, self.kernels = precision_and_kernels(self.device, precision, kernels, cuda_graphs)
        self.cuda_graphs = bool(cuda_graphs)
        if self.device.type == "cuda":
            cuda_numerics()
        self.threads = int(threads) if threads else None
        self._apply_threads()
        with warnings.catch_warnings():  # moving a TorchScript module reads its parameters' .grad: torch warns
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
            self.module = model.module.to(self.device).eval()
            if self.device.type in ("cpu", "cuda"):
                self.module = self.module.to(memory_format=self.model.memory_format)
        self.batch_size = resolve_batch_size(model, self.device, batch_size, self.precision)
        fp32_cpu = self.device.type == "cpu" and self.precision == "fp32"  # the fast paths are fp32 CPU kernels
        self.fused = self._fuse() if fuse and fp32_cpu else None
        self.plan = self._plan() if incremental and self.fused is not None else None
        self.max_items = max_items
        self.items: OrderedDict[str, ItemContext] = OrderedDict()
        self.black = model.black(self.device)
        self._graphs: dict[tuple, tuple[Any, torch.Tensor]] = {}  # (buffer address, shape, dtype) -> (graph, output)
        self.n_forward = 0
        self.n_batches = 0
        self.n_units = 0
        self.items_received = 0
        self.busy_seconds = 0.0
        self.shape_batches: dict[str, int] = {}  # input shape "CxHxW" -> the batch its forwards ran at
        self._buffers: dict[tuple[int, ...], torch.Tensor] = {}

    def _fuse(self) -> nn.Module | None:
        """The module with its convolutions fused (``salient.engine.fuse``), checked on a seeded random
        batch of the engine's shape; None where nothing fuses (the module then runs as it is)."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn((self.batch_size, *self.model.input_shape), generator=g)
        return fuse_for_cpu(self.module, x.contiguous(memory_format=self.model.memory_format))

    def _plan(self) -> IncrementalPlan | None:
        """The fused module split for incremental inference, checked on a seeded random input."""
        if self.model.frames:
            return None
        x = torch.randn((1, *self.model.input_shape), generator=torch.Generator().manual_seed(1))
        return plan_incremental(self.fused, x.contiguous(memory_format=self.model.memory_format))

    def _apply_threads(self) -> None:
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def has(self, item_id: str) -> bool:
        return item_id in self.items

    def put(self, item_id: str, x: torch.Tensor | np.ndarray) -> None:
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.device.type == "cuda" and x.device.type == "cpu":  # from pinned memory, without blocking
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        self.items[item_id] = ItemContext(item_id, x, self.black, self.kernels)
        self.items.move_to_end(item_id)
        self.items_received += 1
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

    def stats(self) -> dict[str, Any]:
        return {"n_forward": self.n_forward, "n_batches": self.n_batches, "n_units": self.n_units,
                "items_received": self.items_received, "busy_seconds": self.busy_seconds,
                "batch_size": self.batch_size, "threads": self.threads, "device": str(self.device),
                "shape_batches": dict(self.shape_batches), "precision": self.precision,
                "kernels": self.kernels.name, "cuda_graphs": self.cuda_graphs}

    def _buf(self, shape: tuple[int, ...]) -> torch.Tensor:
        buf = self._buffers.get(shape)
        if buf is None:
            if len(self._buffers) >= 4:
                self._buffers.clear()
                self._graphs.clear()  # captured on those buffers
            buf = torch.zeros(shape, device=self.device, dtype=self.kernels.batch_dtype(PRECISIONS[self.precision]))
            if buf.ndim == 4:
                buf = buf.contiguous(memory_format=self.model.memory_format)
            self._buffers[shape] = buf
        return buf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (n, K) of the model's score kind for a batch already on the device."""
        return self.model.score(self.forward_logits(x))

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs (n, K), float32, for a batch already on the device (through the fused module if any,
        under autocast at the worker's precision, replayed from a CUDA graph if asked)."""
        with torch.inference_mode(), autocast(self.device, self.precision, cache=not self.cuda_graphs):
            if self.cuda_graphs:
                logits = self._replay(x)
            elif self.fused is None:
                logits = self.module(x)
            else:
                logits = with_reference_rows(self.fused(x), x, self.module)
        self.n_forward += x.shape[0]
        self.n_batches += 1
        return logits.float()

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output on ``x`` by a CUDA graph captured once per buffer (warmed up on a side stream,
        as torch's graph docs ask); a copy, since the next replay overwrites the graph's output."""
        key = (x.data_ptr(), tuple(x.shape), x.dtype)
        if key not in self._graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.module(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.module(x)
            self._graphs[key] = (graph, out)
        graph, out = self._graphs[key]
        graph.replay()
        return out.clone()

    def forward_local(self, x: torch.Tensor, items: list[ItemContext],
                      boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """Raw outputs (n, K) for a batch whose row r equals ``items[r]``'s input outside ``boxes[r]``
        (rows past ``len(items)`` are padding), through the incremental plan."""
        key = ("incremental", id(self.plan))
        with torch.inference_mode():
            bases = []
            for ctx in items:
                if key not in ctx.cache:
                    ctx.cache[key] = self.plan.base(ctx.x)
                bases.append(ctx.cache[key])
            logits = with_reference_rows(self.plan.forward(x, bases, boxes), x, self.module)
        self.n_forward += x.shape[0]
        self.n_batches += 1
        return logits

    def run(self, queries: list[Query]) -> list[Any]:
        """Evaluate queries; results are in the same order. A failing item fails only its queries."""
        t0 = time.perf_counter()
        self._apply_threads()
        self.n_units += 1
        results: list[Any] = [None] * len(queries)
        failed: dict[str, str] = {}
        states: dict[int, Any] = {}
        groups: dict[tuple[int, ...], list[int]] = {}  # input shape (the item's) -> query indices, in order
        for qi, q in enumerate(queries):
            if q.item not in self.items:
                results[qi] = QueryFailure(q.item, f"worker does not hold item {q.item!r}")
                continue
            ctx = self.context(q.item)
            try:
                if isinstance(q, WhiteBoxQuery):  # on the module itself (hooks, gradients), on their own
                    if q.needs_grad:  # a large input's backward must fit the limit (whole mode)
                        check_gradients_fit(self.model, tuple(ctx.x.shape), self.memory_limit)
                    results[qi], passes = q.run(ctx, self.module)
                    self.n_forward += passes
                    continue
                states[qi] = q.reduce_init(ctx)
            except ItemError as e:
                results[qi] = QueryFailure(q.item, str(e))
                continue
            local = self.plan is not None and tuple(ctx.x.shape[-2:]) == self.plan.input_hw \
                and (boxes := q.changed_boxes()) is not None and self.plan.pays(boxes)
            groups.setdefault((q.input_shape(ctx), local), []).append(qi)
        for (shape, local), indices in groups.items():  # an input at another size than the model's: memory rule
            b = batch_for(self.model, shape, self.batch_size, self.memory_limit)
            self.shape_batches["x".join(map(str, shape))] = b
            self._run_group(queries, indices, self._buf((b, *shape)), states, failed, local)
        for qi, q in enumerate(queries):
            if results[qi] is not None:
                continue
            if q.item not in failed:
                try:
                    results[qi] = q.finish(states[qi], self.context(q.item))
                    continue
                except ItemError as e:
                    failed[q.item] = str(e)
            results[qi] = QueryFailure(q.item, failed[q.item])
        self.busy_seconds += time.perf_counter() - t0
        return results

    def _run_group(self, queries: list[Query], indices: list[int], buf: torch.Tensor, states: dict[int, Any],
                   failed: dict[str, str], local: bool = False) -> None:
        """Pack the inputs of ``queries[indices]`` (one input shape) into full batches and reduce;
        ``local``: every query has ``changed_boxes`` and the batches run through ``forward_local``.

        A batch's scores are read back (``settle``) after the next batch has been built and its forward
        started: on a GPU the host then never waits for the device between batches (the next batch's masks are
        built on the device's stream behind the forward). The results and their bits are the same either way."""
        b = buf.shape[0]  # the engine's batch size, lowered for a large input (memory.batch_for)
        pending: list[tuple[int, int, int, int, Any]] = []  # (query index, start, stop, offset, aux)
        started: list[tuple[list, torch.Tensor]] = []  # the batch whose forward ran, not yet settled
        fill = 0

        def flush() -> None:
            nonlocal fill, pending
            if not pending:
                return
            if local:
                items, boxes = [], []
                for qi, s, e, _, _ in pending:
                    items += [self.context(queries[qi].item)] * (e - s)
                    boxes += queries[qi].changed_boxes()[s:e]
                logits = self.forward_local(buf, items, boxes)
            else:
                logits = self.forward_logits(buf)  # always the full batch shape
            if started:
                settle(*started.pop())
            started.append((pending, logits))
            pending, fill = [], 0

        def settle(batch: list, logits: torch.Tensor) -> None:
            scores: dict[str, torch.Tensor] = {}  # per score kind: a query may declare its own (score_kind)
            for qi, s, e, off, aux in batch:
                q = queries[qi]
                if q.item in failed:
                    continue
                kind = q.score_kind or self.model.score_kind
                if kind not in scores:
                    scores[kind] = self.model.score(logits, kind)
                sc = scores[kind][off : off + (e - s)]
                if not torch.isfinite(sc[:, list(q.targets)] if q.targets else sc).all():
                    failed[q.item] = f"model returned NaN or infinite scores for item {q.item!r}"
                    continue
                try:
                    states[qi] = q.reduce(states[qi], aux, sc)
                except ItemError as err:
                    failed[q.item] = str(err)

        for qi in indices:
            q = queries[qi]
            s, e = 0, q.n_inputs()
            while s < e:
                if q.item in failed:
                    break
                take = min(e - s, b - fill)
                try:
                    aux = q.build(self.context(q.item), s, s + take, buf[fill : fill + take])
                except ItemError as err:
                    failed[q.item] = str(err)
                    break
                pending.append((qi, s, s + take, fill, aux))
                fill += take
                s += take
                if fill == b:
                    flush()
        flush()
        if started:
            settle(*started.pop())
