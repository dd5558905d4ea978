"""The scheduler: drives many task generators at once over a pool of workers.

Each live task is a generator that yields lists of queries and receives their results in the same
order. The scheduler
- keeps at most ``max_live`` tasks alive (memory stays flat however many tasks a job has);
- queues the queries of every waiting task per item (a task's largest first, so that one item's
  queries shard evenly over several workers), and packs them into *units* of about
  ``unit_batches`` device batches (fewer when there is too little work to keep every free worker
  busy, so one item's queries shard over several workers); a query is never split, and one larger
  than a unit is a unit of its own;
- gives each unit to the least loaded ready worker (less than one batch of work goes only to an
  idle worker: a busy one gets it later, in a fuller batch), taking first the queries of items that worker
  already holds, then of items no worker holds, then of items other workers hold (the unit carries
  its items, so the executor sends what the worker lacks);
- keeps at most ``executor.depth`` units in flight per worker (backpressure);
- routes results back; a task completes when its generator returns (its value), raises (that
  exception), or one of its queries fails (``ItemError`` with the reason).

Failures: a unit whose worker died runs again (its worker's cache is presumed lost; its items then
run alone so that an item that kills workers is found); after ``max_attempts`` losses its tasks
fail. A unit that raises while running, if it mixed several items, is re-run as one unit per item;
alone, its item fails with that exception. The maps never depend on how queries were packed or
where they ran (see worker.py), so every recovery gives the maps of an undisturbed run.

Several runs may share one executor, even nested (a run started while another is suspended):
each unit belongs to its run, and events a run receives for another run's units are handed over.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ItemError
from ..item import Item
from ..methods.drive import step
from ..queries import QueryFailure
from .executor import Done, Event, Failed, Lost, Unit


@dataclass
class Task:
    key: Any
    item: Item | None  # None: the task fails before it needs an item (e.g. an unreadable file)
    gen: Any
    n_forward: int = 0
    pending: list = field(default_factory=list)


class _Live:
    """A live task: its current queries, their results so far, and how many are outstanding."""

    __slots__ = ("task", "queries", "results", "outstanding", "done", "losses")

    def __init__(self, task: Task):
        self.task = task
        self.queries: list = []
        self.results: list = []
        self.outstanding = 0
        self.done = False
        self.losses = 0


class _Held:
    __slots__ = ("item", "refs", "holders")

    def __init__(self, item: Item):
        self.item, self.refs, self.holders = item, 0, set()


_unit_ids = itertools.count()


class Scheduler:
    def __init__(self, executor, max_live: int | None = None, on_progress: Callable[[int], None] | None = None,
                 max_attempts: int = 3, poll: float = 1.0):
        self.executor = executor
        self.max_live = max_live or max(64, 4 * executor.n_workers * executor.depth)
        self.on_progress = on_progress
        self.max_attempts = max_attempts
        self.poll = poll
        self.stats: dict[str, Any] = {}
        self._inbox: list[Event] = []  # this run's events received by another run; units point to it

    # -- the loop
    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Any]]:
        """Yield (task, result or exception) as tasks complete; ``task.n_forward`` counts its passes."""
        n = self.executor.n_workers
        self._items: dict[str, _Held] = {}
        # item id -> (live, query index) in arrival order; queries under one batch first: they are
        # mostly first rounds of new tasks, whose answers bring the next (larger) work
        self._small: dict[str, deque] = {}
        self._large: dict[str, deque] = {}
        self._queued = 0  # forward passes waiting
        self._inflight = [0] * n
        self._isolated: set[str] = set()
        self._finished: deque[tuple[Task, Any]] = deque()
        self._lives: set[_Live] = set()
        self._inbox = []
        self.stats = {"units": 0, "lost": 0, "failed_units": 0, "peak_inflight": [0] * n, "peak_live": 0}
        source, exhausted = iter(tasks), False
        try:
            while True:
                while not exhausted and len(self._lives) < self.max_live and len(self._finished) < self.max_live:
                    try:
                        task = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    self._admit(task)
                self.stats["peak_live"] = max(self.stats["peak_live"], len(self._lives))
                yield from self._drain()
                if not self._lives and exhausted:
                    return
                if not self._lives:
                    continue
                self._dispatch()
                events = self._inbox[:]
                self._inbox.clear()
                if not events:
                    if not any(self._inflight) and not self._queued:
                        raise RuntimeError("scheduler stalled: live tasks but no queued or running queries")
                    events = self.executor.wait(self.poll)
                for ev in events:
                    self._handle(ev)
                yield from self._drain()
        finally:
            for live in list(self._lives):  # abandoned (the caller stopped early) or an error
                live.task.gen.close()
                live.done = True
            self._lives.clear()

    def _drain(self) -> Iterator[tuple[Task, Any]]:
        while self._finished:
            yield self._finished.popleft()

    # -- tasks
    def _admit(self, task: Task) -> None:
        live = _Live(task)
        self._lives.add(live)
        if task.item is not None:
            held = self._items.get(task.item.id)
            if held is None:
                held = self._items[task.item.id] = _Held(task.item)
            held.refs += 1
        self._advance(live, None)

    def _advance(self, live: _Live, value: Any) -> None:
        """Send ``value`` to the generator (:func:`~salient.methods.drive.step`); queue its next queries
        or finish it (its value, or its exception: a failing task fails its item only)."""
        queries, outcome = step(live.task.gen, value)
        if queries is None:
            self._finish(live, outcome)
            return
        unknown = next((q.item for q in queries if q.item not in self._items), None)
        if unknown is not None:
            live.task.gen.close()
            self._finish(live, ItemError(f"query for item {unknown!r}, which no live task holds"))
            return
        live.queries, live.results, live.outstanding = queries, [None] * len(queries), len(queries)
        live.task.pending = queries
        live.task.n_forward += sum(q.n_inputs() for q in queries)
        for qi in sorted(range(len(queries)), key=lambda i: -queries[i].n_inputs()):  # largest first: even shards
            self._enqueue(live, qi)

    def _finish(self, live: _Live, outcome: Any) -> None:
        live.done = True
        live.task.pending = []
        self._lives.discard(live)
        if live.outstanding:  # failed with queries still queued: take them out
            for item_id, waiting in itertools.product({q.item for q in live.queries}, (self._small, self._large)):
                dq = waiting.get(item_id)
                if dq is None:
                    continue
                keep = deque(e for e in dq if e[0] is not live)
                self._queued -= sum(live.queries[qi].n_inputs() for lv, qi in dq if lv is live)
                if keep:
                    waiting[item_id] = keep
                else:
                    del waiting[item_id]
        item = live.task.item
        if item is not None:
            held = self._items[item.id]
            held.refs -= 1
            if held.refs == 0:
                del self._items[item.id]
                self._isolated.discard(item.id)
                self.executor.forget(item.id)
        self._finished.append((live.task, outcome))

    def _fail(self, live: _Live, error: BaseException) -> None:
        if not live.done:
            live.task.gen.close()
            self._finish(live, error)

    # -- units
    def _dispatch(self) -> None:
        ex = self.executor
        depth, b = ex.depth, ex.batch_size
        ready = [w for w in ex.ready() if self._inflight[w] < depth]
        cap = b * max(1, ex.unit_batches)
        while ready and self._queued > 0:
            slots = sum(depth - self._inflight[w] for w in ready)
            target = min(cap, max(b, -(-self._queued // slots)))
            target = -(-target // b) * b  # whole batches
            w = min(ready, key=self._inflight.__getitem__)
            if self._queued < b and self._inflight[w]:
                break  # less than a batch: keep it for a worker with nothing queued (fuller batches)
            unit = self._form(w, target)
            if unit is None:
                break
            self._submit(w, unit)
            if self._inflight[w] >= depth:
                ready.remove(w)

    def _form(self, w: int, target: int) -> Unit | None:
        """Take queued queries for worker ``w``, small ones first; within each, the items ``w`` holds,
        then items no worker holds, then items other workers hold."""
        entries: list[tuple[_Live, int]] = []
        size = 0
        isolated = False

        def take(waiting: dict[str, deque], item_id: str) -> None:
            nonlocal size, isolated
            if item_id in self._isolated:
                if entries:
                    return
                isolated = True
            dq = waiting[item_id]
            while dq and size < target:
                live, qi = dq.popleft()
                entries.append((live, qi))
                q_size = live.queries[qi].n_inputs()
                size += q_size
                self._queued -= q_size
            if not dq:
                del waiting[item_id]

        for waiting in (self._small, self._large):
            unheld: list[str] = []
            others: list[str] = []
            for item_id in list(waiting):
                if size >= target or isolated:
                    break
                holders = self._items[item_id].holders
                if w in holders:
                    take(waiting, item_id)
                elif holders:
                    others.append(item_id)
                else:
                    unheld.append(item_id)
            for item_id in itertools.chain(unheld, others):
                if size >= target or isolated:
                    break
                take(waiting, item_id)
        if not entries:
            return None
        item_ids = {live.queries[qi].item for live, qi in entries}
        return Unit(next(_unit_ids), [live.queries[qi] for live, qi in entries],
                    {i: self._items[i].item for i in item_ids}, entries, isolated=isolated or len(item_ids) == 1,
                    owner=self._inbox)

    def _submit(self, w: int, unit: Unit) -> None:
        unit.worker = w
        for item_id in unit.items:
            self._items[item_id].holders.add(w)
        self._inflight[w] += 1
        self.stats["units"] += 1
        peak = self.stats["peak_inflight"]
        peak[w] = max(peak[w], self._inflight[w])
        self.executor.submit(w, unit)

    def _enqueue(self, live: _Live, qi: int, front: bool = False) -> None:
        q = live.queries[qi]
        size = q.n_inputs()
        self._queued += size
        waiting = self._small if size < self.executor.batch_size else self._large
        dq = waiting.get(q.item)
        if dq is None:
            dq = waiting[q.item] = deque()
        if front:
            dq.appendleft((live, qi))
        else:
            dq.append((live, qi))

    def _requeue(self, unit: Unit) -> None:
        for live, qi in reversed(unit.entries):
            if not live.done:
                self._enqueue(live, qi, front=True)

    # -- events
    def _handle(self, ev: Event) -> None:
        unit = ev.unit
        if unit.owner is not self._inbox:  # another run's unit (runs sharing the executor): hand it over
            if unit.owner is not None:
                unit.owner.append(ev)
            return
        self._inflight[unit.worker] -= 1
        if isinstance(ev, Done):
            self._done(unit, ev.results)
        elif isinstance(ev, Lost):
            self.stats["lost"] += 1
            for held in self._items.values():
                held.holders.discard(unit.worker)
            lives = {id(live): live for live, _ in unit.entries if not live.done}.values()
            for live in lives:
                live.losses += 1
            if len({live.queries[qi].item for live, qi in unit.entries}) > 1:
                self._isolated.update(unit.items)
            for live in lives:
                if live.losses >= self.max_attempts:
                    self._fail(live, ItemError(f"its worker was lost {live.losses} times ({ev.reason})"))
            self._requeue(unit)
        elif isinstance(ev, Failed):
            self.stats["failed_units"] += 1
            if unit.isolated:
                for live, _ in unit.entries:
                    self._fail(live, ev.error)
            else:
                self._isolated.update(unit.items)
                self._requeue(unit)

    def _done(self, unit: Unit, results: list[Any]) -> None:
        n = 0
        for (live, qi), r in zip(unit.entries, results, strict=True):
            n += live.queries[qi].n_inputs() if not live.done else 0
            if live.done:
                continue
            if isinstance(r, QueryFailure):
                self._fail(live, ItemError(r.reason))
                continue
            live.results[qi] = r
            live.outstanding -= 1
            if live.outstanding == 0:
                self._advance(live, live.results)
        if self.on_progress and n:
            self.on_progress(n)
