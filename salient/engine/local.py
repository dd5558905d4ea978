"""LocalExecutor: in-process workers, one thread each; the default, and it never imports Ray.

On CPU it runs one worker per core, each forward with 1 intra-op thread (torch's thread count is
per thread): the same arithmetic as a Ray actor per CPU, so local and Ray maps agree bitwise; on
this team's 2-core machines it was at least as fast as one worker using both cores (whose OpenMP
team slows down badly when other processes share the cores).
On a GPU it runs one worker. Every worker has its own replica of the module (a white-box query
hooks its worker's module: a shared one would see the other threads' forwards) and all share one
batch size.
Memory: at most ``WORKERS_PER_CORE`` workers per core (each one is a replica of the model and its
batches; beyond that they add memory, not speed: more workers are what the Ray executor is for),
and the workers' batches must fit in the memory available (:func:`~salient.engine.memory.check_fits`),
both checked before anything is allocated.
"""

from __future__ import annotations

import copy
import os
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..errors import SalientError
from ..item import Item
from ..models import Model
from ..queries import Query
from .executor import Done, Event, Failed, Unit
from .memory import check_fits
from .worker import Worker, default_threads, parse_precision, pick_device, precision_and_kernels, resolve_batch_size

WORKERS_PER_CORE = 2


def replica(model: Model) -> Model:
    """The model with its own copy of the module (parameters copied exactly; no cached engine)."""
    m = copy.copy(model)
    m.__dict__.pop("_engine", None)
    m.module = copy.deepcopy(model.module)
    return m


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def local_plan(device: str | None, threads: int | None, workers: int | None) -> tuple[torch.device, int | None, int]:
    """(device, intra-op threads, workers) of a LocalExecutor: the defaults filled in, and a worker count
    below 1 or above ``WORKERS_PER_CORE`` per core refused (see the module docstring)."""
    dev = pick_device(device)
    threads = default_threads(dev, threads)
    if workers is None:
        workers = max(1, cpu_count() // (threads or 1)) if dev.type == "cpu" else 1
    if int(workers) < 1:
        raise SalientError(f"workers must be >= 1, got {workers}")
    if int(workers) > WORKERS_PER_CORE * cpu_count():
        raise SalientError(f"workers must be at most {WORKERS_PER_CORE * cpu_count()} for the local executor "
                           f"({WORKERS_PER_CORE} per core, {cpu_count()} cores here), got {workers}; more workers need "
                           "the ray executor")
    return dev, threads, int(workers)


def check_local(model: Model, device: str | None = None, batch_size: int | str | None = None,
                workers: int | None = None, threads: int | None = None, precision: str = "fp32",
                kernels: str | None = "auto", cuda_graphs: bool = False, **_: Any) -> None:
    """What LocalExecutor(model, ...) would refuse (device, workers, precision, kernels, memory), checked
    without starting it; the memory only where the batch size is known without autotuning."""
    dev, threads, workers = local_plan(device, threads, workers)
    precision_and_kernels(dev, precision, kernels, cuda_graphs)
    if str(batch_size).strip().lower() != "auto" and (batch_size is not None or dev.type == "cpu"):
        check_fits(model, dev, resolve_batch_size(model, dev, batch_size), workers)


class LocalExecutor:
    """``workers`` threads (default: one per core on CPU, one on a GPU), ``threads`` intra-op threads
    per forward (default 1 on CPU), one ``batch_size`` (default: see ``resolve_batch_size``);
    ``fuse``, ``incremental``: the CPU fast paths of :class:`Worker`."""

    kind = "local"

    def __init__(self, model: Model, device: str | None = None, batch_size: int | str | None = None,
                 workers: int | None = None, threads: int | None = None, depth: int = 2, unit_batches: int = 4,
                 max_items: int = 256, fuse: bool = True, incremental: bool = True, memory_limit: int | None = None,
                 precision: str = "fp32", kernels: str | None = "auto", cuda_graphs: bool = False, **_: Any):
        dev, self.threads, self.n_workers = local_plan(device, threads, workers)
        self.depth, self.unit_batches = int(depth), int(unit_batches)
        size = resolve_batch_size(model, dev, batch_size, parse_precision(precision))  # once, shared: same bits
        check_fits(model, dev, size, self.n_workers)
        models = [model] + [replica(model) for _ in range(self.n_workers - 1)]
        self.memory_limit = memory_limit  # per worker (memory.batch_for)
        self.workers = [Worker(m, dev, size, max_items, fuse=fuse, incremental=incremental, memory_limit=memory_limit,
                               precision=precision, kernels=kernels, cuda_graphs=cuda_graphs)
                        for m in models]
        for w in self.workers:
            w.threads = self.threads  # applied in the worker's own thread at each run
        self.batch_size = size
        self._pools: list[ThreadPoolExecutor] | None = None
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._drops: list[list[str]] = [[] for _ in range(self.n_workers)]
        self._held: dict[str, Item] = {}
        self._inflight = 0

    @property
    def worker(self) -> Worker:
        """The first worker (kept for callers of the one-worker executor)."""
        return self.workers[0]

    def _pool(self, w: int) -> ThreadPoolExecutor:
        if self._pools is None:
            self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"salient-worker{i}")
                           for i in range(self.n_workers)]
        return self._pools[w]

    # -- the executor contract (see executor.py)
    def ready(self) -> list[int]:
        return list(range(self.n_workers))

    def submit(self, worker: int, unit: Unit) -> None:
        unit.worker = worker
        drops, self._drops[worker] = self._drops[worker], []
        fut = self._pool(worker).submit(self._run, self.workers[worker], unit.queries, unit.items, drops)
        self._inflight += 1
        fut.add_done_callback(lambda f, u=unit: self._done.put((u, f)))

    @staticmethod
    def _run(worker: Worker, queries: list[Query], items: dict[str, Item], drops: list[str]) -> list[Any]:
        for item_id in drops:
            worker.drop(item_id)
        for item_id, item in items.items():
            if not worker.has(item_id):
                worker.put(item_id, item.x)
        return worker.run(queries)

    def wait(self, timeout: float | None = None) -> list[Event]:
        if not self._inflight:
            if timeout:
                time.sleep(timeout)
            return []
        try:
            got = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                got.append(self._done.get_nowait())
            except queue.Empty:
                break
        self._inflight -= len(got)
        events: list[Event] = []
        for unit, fut in got:
            err = fut.exception()
            events.append(Failed(unit, err) if err is not None else Done(unit, fut.result()))
        return events

    def forget(self, item_id: str) -> None:
        for drops in self._drops:  # delivered with the worker's next unit; caches are bounded LRUs anyway
            drops.append(item_id)
            if len(drops) > 4096:
                del drops[:2048]

    # -- the one-call interface (items held for ``evaluate``)
    def hold(self, item: Item) -> None:
        self._held[item.id] = item

    def release(self, item_id: str) -> None:
        self._held.pop(item_id, None)
        self.forget(item_id)

    def evaluate(self, queries: list[Query]) -> list[Any]:
        """Run queries of held items on the first worker and wait for their results."""
        items = {q.item: self._held[q.item] for q in queries if q.item in self._held}
        fut: Future = self._pool(0).submit(self._run, self.workers[0], queries, items, [])
        return fut.result()

    def stats(self) -> dict[str, Any]:
        per = [w.stats() for w in self.workers]
        return {"executor": self.kind, "workers": self.n_workers, "batch_size": self.batch_size,
                "threads": self.threads, "n_forward": sum(p["n_forward"] for p in per),
                "busy_seconds": sum(p["busy_seconds"] for p in per), "per_worker": per}

    def close(self) -> None:
        if self._pools is not None:
            for pool in self._pools:
                pool.shutdown(wait=True)
            self._pools = None
