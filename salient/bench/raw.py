"""The raw forward rate (the ceiling): the engine's own workers running nothing but full forward batches.

Each worker runs ``Worker.forward_logits`` (its module as the engine runs it: the fused copy on CPU,
autocast at the engine's precision, a CUDA graph if asked) on a seeded random batch of the engine's
batch size at the case's input shape (lowered for large inputs by the engine's memory rule,
:func:`~salient.engine.memory.batch_for`), with the worker's intra-op threads, for a given time after one
warm-up batch; all workers at once. So "raw" is the model's rate at the batch size each worker runs (on
CPU the engine's fixed batch and one thread per worker; on a GPU its autotuned batch), and the engine's
ratio to it measures the engine's overhead, nothing else.

Local workers run in threads here; a Ray worker runs the same loop inside its actor
(``__ray_call__``: the actor's :class:`Worker`), so the ceiling is measured where the work runs.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import torch

from ..engine.memory import batch_for
from ..engine.worker import PRECISIONS, Worker
from .protocol import Sample


def raw_forwards(worker: Worker, shape: tuple[int, ...], batch: int, seconds: float,
                 barrier: threading.Barrier | None = None) -> tuple[int, float, float]:
    """(forward passes, seconds, warm-up seconds) of ``worker`` running batches (``batch``, *shape) for at least
    ``seconds`` (and at least one batch) after one warm-up batch; ``barrier``: waited on before the clock starts."""
    if worker.threads and torch.get_num_threads() != worker.threads:
        torch.set_num_threads(worker.threads)
    dev = worker.device
    x = _batch(worker, (batch, *shape))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    worker.forward_logits(x)
    sync()
    warm = time.perf_counter() - t0
    if barrier is not None:
        barrier.wait()
    n, t0 = 0, time.perf_counter()
    while True:
        worker.forward_logits(x)
        sync()
        n += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n, elapsed, warm


_BATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # worker -> {shape: its raw batch}


def _batch(worker: Worker, shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded random batch of ``shape`` in the worker's input dtype and layout, made once per worker and shape
    (a CUDA-graph worker captures one graph per input buffer: a new tensor per round would capture again)."""
    held = _BATCHES.setdefault(worker, {})
    if shape not in held:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to(worker.device, worker.kernels.batch_dtype(PRECISIONS[worker.precision]))
        held.clear()
        held[shape] = x.contiguous(memory_format=worker.model.memory_format) if x.ndim == 4 else x
    return held[shape]


def _in_actor(actor: Any, shape: tuple[int, ...], batch: int, seconds: float) -> tuple[int, float, float]:
    return raw_forwards(actor.worker, shape, batch, seconds)


def raw_batch(executor: Any, model: Any, shape: tuple[int, ...]) -> int:
    """The batch the engine's workers run inputs of ``shape`` at."""
    return batch_for(model, shape, executor.batch_size, getattr(executor, "memory_limit", None))


def raw_round(executor: Any, model: Any, shape: tuple[int, ...], seconds: float) -> Sample:
    """Every worker of ``executor`` (local or Ray) at once for ``seconds``: a Sample whose rate is the sum of the
    workers' rates; ``extra``: ``per_worker`` rates and ``warmup_s`` (the slowest warm-up batch)."""
    b = raw_batch(executor, model, shape)
    if executor.kind == "ray":
        import ray

        got = ray.get([a.__ray_call__.remote(_in_actor, shape, b, seconds) for a in executor.actors])
    else:
        workers = executor.workers
        barrier = threading.Barrier(len(workers))
        got: list[Any] = [None] * len(workers)
        errors: list[BaseException] = []

        def run(k: int) -> None:
            try:
                got[k] = raw_forwards(workers[k], shape, b, seconds, barrier)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
                errors.append(e)
                barrier.abort()

        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    rates = [n / s for n, s, _ in got]
    total = sum(n for n, _, _ in got)
    return Sample(total, total / sum(rates), {"per_worker": rates, "warmup_s": max(w for _, _, w in got)})
