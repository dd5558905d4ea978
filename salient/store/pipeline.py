"""The store's background writer: a pipeline of three stages, each first in, first out.

Writes run off the caller's thread (see :class:`_Writer`): encode the chunks on ``threads``
threads; lay out the shard and write its temp file; fsync and rename. Because each stage is first
in, first out, a table part is written only after every shard submitted before it. The first error
stops every later write and is raised by the next call on the store (and by ``close``). ``depth``
bounds each stage's queue, so at most a few shards are queued for writing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import SalientError


class _Writer:
    """Store writes off the caller's thread, in submission order, in three stages: encode, write
    the file, make it durable and visible (fsync, rename) -- so encoding, writing and the wait for
    the disk of consecutive shards overlap. A job is a generator: ``submit(job)``; stage ``i`` runs
    it to its ``i``-th ``yield`` (or its end) and passes it on. Each stage is first in, first out,
    so a job's last step runs after the last step of every job submitted before it that had one
    at that stage or before: a table part, whose last step is at the last stage, is written after
    every shard submitted before it. :meth:`map` spreads encoding over ``threads`` threads. The
    first error skips every later step (no row is written after a failed shard; abandoned jobs
    remove their temp files) and is raised by :meth:`check`, which the store calls on each
    operation. ``depth`` bounds each stage's queue (memory: a caller ahead of the disk waits).
    ``threads=0``: jobs run on the caller, errors raise at once."""

    STAGES = 3

    def __init__(self, threads: int, depth: int = 2):
        self.threads = max(0, int(threads))
        self.error: BaseException | None = None
        self._pool = ThreadPoolExecutor(self.threads - 1, "salient-store") if self.threads > 1 else None
        self._queues: list[queue.Queue] = [queue.Queue(depth) for _ in range(self.STAGES if self.threads else 0)]
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"salient-store-{i}", daemon=True)
                         for i in range(len(self._queues))]
        for t in self._threads:
            t.start()

    def map(self, fn: Callable[[Any], Any], items: list) -> list:
        """``[fn(x) for x in items]``, in ``threads`` contiguous parts on this thread and the pool's."""
        if self._pool is None or len(items) < 2:
            return [fn(x) for x in items]
        cuts = np.linspace(0, len(items), min(self.threads, len(items)) + 1).astype(int)
        parts = [items[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        futures = [self._pool.submit(lambda part=part: [fn(x) for x in part]) for part in parts[1:]]
        return [fn(x) for x in parts[0]] + [y for f in futures for y in f.result()]

    def submit(self, job: Iterator[None]) -> None:
        self.check()
        if self._queues:
            self._queues[0].put(job)
            return
        try:
            for _ in job:
                pass
        except BaseException as exc:
            self.error = exc
            if not isinstance(exc, Exception):
                raise
            self.check()

    def _run(self, stage: int) -> None:
        q, last = self._queues[stage], stage == len(self._queues) - 1
        while True:
            job = q.get()
            try:
                if job is None:
                    if not last:
                        self._queues[stage + 1].put(None)
                    return
                if self.error is None:
                    if last:  # this step and any left
                        for _ in job:
                            pass
                    elif next(job, StopIteration) is not StopIteration:
                        self._queues[stage + 1].put(job)
            except BaseException as exc:  # noqa: BLE001 - raised on the caller by check()
                self.error = self.error or exc
            finally:
                job = None  # an abandoned job is closed here (its temp file removed)
                q.task_done()

    def join(self) -> None:
        """Wait until everything submitted so far is written (or skipped after an error)."""
        for q in self._queues:
            q.join()

    def check(self) -> None:
        if self.error is not None:
            raise SalientError(f"store: a write failed ({type(self.error).__name__}: {self.error}); "
                               "nothing after it was written, resume redoes it") from self.error

    def close(self) -> None:
        """Finish what was submitted, stop the threads."""
        if self._queues:
            self._queues[0].put(None)
            for t in self._threads:
                t.join()
            self._queues, self._threads = [], []
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
