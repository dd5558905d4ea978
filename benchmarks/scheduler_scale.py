"""The scheduler's own overhead at cluster scale: simulated workers, no model.

Each simulated worker takes a fixed time per device batch (``--batch-ms``) and runs its units in
order; the driver (the real :class:`~salient.engine.Scheduler`) must hand a worker its next unit
before the one queued behind the running one ends, else the worker idles. Reported per worker
count: utilisation (busy time / wall time, mean over workers), dispatched batches/s, units/s, the
fill of the batches (useful forward passes / batch slots) and the driver's CPU seconds per unit.

Workloads: ``rise`` (per item: 1 unmasked pass, then 2 queries of 2 batches each: big queries, one
per unit or two), ``borex`` (per item: 1 unmasked pass, then 10 rounds of 2 one-pass queries:
every unit packs the small queries of many items, the hardest case for the driver). Round-based
small-query methods are limited by supply, not by the driver: a round of ``max_live`` tasks brings
``2 * max_live`` passes per round trip, so filling W workers at depth 2 needs ``max_live`` near
``W * 2 * batch_size / 2``; ``--max-live`` shows it (each live task holds its item's pixels).

Then the driver's peak traced memory (tracemalloc) for a 1,000- and a 10,000-item job: flat if the
scheduler keeps only ``max_live`` tasks alive.

    python benchmarks/scheduler_scale.py                       # the issue's table (1,000 items; ~2 min)
    python benchmarks/scheduler_scale.py --items 200 --workers 1,8 --memory 500,2000   # a quick check
    python benchmarks/scheduler_scale.py --workload borex --workers 64 --max-live 2048 --memory ""
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import time
import tracemalloc
from dataclasses import dataclass

import torch

from salient.engine import Item, Scheduler, Task
from salient.engine.executor import Done
from salient.queries import Query


@dataclass(frozen=True)
class SimQuery(Query):
    n: int = 1

    def size(self) -> int:
        return self.n


class SimExecutor:
    """``n`` workers taking ``batch_s`` seconds per batch; a unit of s passes takes ceil(s / b) batches."""

    kind = "sim"

    def __init__(self, n: int, batch_size: int, batch_s: float, depth: int = 2, unit_batches: int = 4):
        self.n_workers, self.batch_size, self.batch_s = n, batch_size, batch_s
        self.depth, self.unit_batches = depth, unit_batches
        self.free_at = [0.0] * n
        self.busy = [0.0] * n
        self.batches = 0
        self.slots_used = 0
        self._heap: list = []
        self._seq = itertools.count()

    def ready(self) -> list[int]:
        return list(range(self.n_workers))

    def submit(self, w: int, unit) -> None:
        size = unit.n_inputs
        n_batches = math.ceil(size / self.batch_size)
        start = max(time.perf_counter(), self.free_at[w])
        self.free_at[w] = end = start + n_batches * self.batch_s
        self.busy[w] += n_batches * self.batch_s
        self.batches += n_batches
        self.slots_used += size
        heapq.heappush(self._heap, (end, next(self._seq), unit))

    def wait(self, timeout: float | None = None) -> list:
        if not self._heap:
            return []
        delay = self._heap[0][0] - time.perf_counter()
        if delay > 0:
            time.sleep(min(delay, timeout or delay))
        now, events = time.perf_counter(), []
        while self._heap and self._heap[0][0] <= now:
            unit = heapq.heappop(self._heap)[2]
            events.append(Done(unit, [None] * len(unit.queries)))
        return events

    def forget(self, item_id: str) -> None:
        pass

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def rise_like(item: Item, b: int):
    yield [SimQuery(item.id, n=1)]
    yield [SimQuery(item.id, n=2 * b) for _ in range(2)]


def borex_like(item: Item, b: int, rounds: int = 10):
    yield [SimQuery(item.id, n=1)]
    for _ in range(rounds):
        yield [SimQuery(item.id, n=1) for _ in range(2)]


WORKLOADS = {"rise": rise_like, "borex": borex_like}
PIXELS = torch.zeros(3, 32, 32)


def tasks(n_items: int, workload: str, b: int):
    gen = WORKLOADS[workload]
    for i in range(n_items):
        item = Item(f"item{i}", PIXELS)
        yield Task(i, item, gen(item, b))


def run(n_workers: int, n_items: int, workload: str, batch_s: float, batch_size: int,
        max_live: int | None = None) -> dict:
    ex = SimExecutor(n_workers, batch_size, batch_s)
    sched = Scheduler(ex, max_live)
    t0, c0 = time.perf_counter(), time.process_time()
    done = sum(1 for _ in sched.run(tasks(n_items, workload, batch_size)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert done == n_items
    return {"workers": n_workers, "max_live": sched.max_live, "utilisation": sum(ex.busy) / n_workers / wall,
            "batches/s": ex.batches / wall,
            "units/s": sched.stats["units"] / wall, "fill": ex.slots_used / (ex.batches * batch_size),
            "driver us/unit": 1e6 * cpu / sched.stats["units"], "wall s": wall}


def peak_memory(n_items: int, n_workers: int = 64) -> float:
    """Peak traced driver memory (MiB) of a job of ``n_items`` with 0.1 ms batches."""
    tracemalloc.start()
    ex = SimExecutor(n_workers, 32, 1e-4)
    for _ in Scheduler(ex).run(tasks(n_items, "rise", 32)):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,8,32,64")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--batch-ms", type=float, default=20.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workload", default="rise,borex")
    p.add_argument("--max-live", type=int, default=None, help="tasks alive at once (default: the scheduler's)")
    p.add_argument("--memory", default="1000,10000", help="item counts for the memory check ('' to skip)")
    args = p.parse_args()
    cols = ["workers", "max_live", "utilisation", "batches/s", "units/s", "fill", "driver us/unit", "wall s"]
    for workload in args.workload.split(","):
        print(f"\nworkload {workload}: {args.items} items, {args.batch_ms:g} ms per batch of {args.batch_size}")
        print("  ".join(f"{c:>14}" for c in cols))
        for n in (int(w) for w in args.workers.split(",")):
            r = run(n, args.items, workload, args.batch_ms / 1000, args.batch_size, args.max_live)
            print("  ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols), flush=True)
    if args.memory:
        print("\npeak driver memory (tracemalloc), 64 workers, rise workload")
        for n in (int(k) for k in args.memory.split(",")):
            print(f"{n:>8} items: {peak_memory(n):8.2f} MiB", flush=True)


if __name__ == "__main__":
    main()
