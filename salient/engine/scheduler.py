"""The scheduler: drives many task generators at once and routes query results back to them.

Each live task is a generator that yields lists of queries and receives their results. The
scheduler keeps at most ``max_live`` tasks alive (so memory stays flat however many tasks a job
has), gathers the queries of every task that is waiting, hands them to the executor in one call
(the worker packs queries from many items into full device batches), and resumes each task with
its results. A task whose query failed, or whose generator raised, completes with the exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ItemError
from .tasks import Item
from .worker import QueryFailure


@dataclass
class Task:
    key: Any
    item: Item | None  # None: the task fails before it needs an item (e.g. an unreadable file)
    gen: Any
    n_forward: int = 0
    pending: list = field(default_factory=list)


def _advance(task: Task, value: Any) -> tuple[bool, Any]:
    """Send ``value``; returns (done, queries or result). Exceptions propagate to the caller."""
    try:
        queries = task.gen.send(value)
    except StopIteration as stop:
        return True, stop.value
    return False, list(queries)


class Scheduler:
    def __init__(self, executor, max_live: int = 64, on_progress: Callable[[int], None] | None = None):
        self.executor = executor
        self.max_live = max_live
        self.on_progress = on_progress

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Any]]:
        """Yield (task, result or exception) as tasks complete; ``task.n_forward`` counts its passes."""
        source = iter(tasks)
        live: list[Task] = []
        refs: dict[str, int] = {}
        exhausted = False

        def start(task: Task, value: Any = None):
            while True:
                try:
                    done, out = _advance(task, value)
                except Exception as e:  # noqa: BLE001 - a failing task fails its item only
                    return e
                if done:
                    return _Done(out)
                if out:
                    task.pending = out
                    task.n_forward += sum(q.size() for q in out)
                    return None
                value = []  # an empty batch is answered at once

        def release(task: Task) -> None:
            if task.item is None:
                return
            refs[task.item.id] -= 1
            if refs[task.item.id] == 0:
                del refs[task.item.id]
                self.executor.release(task.item.id)

        while live or not exhausted:
            while not exhausted and len(live) < self.max_live:
                try:
                    task = next(source)
                except StopIteration:
                    exhausted = True
                    break
                if task.item is not None:
                    if task.item.id not in refs:
                        self.executor.hold(task.item)
                    refs[task.item.id] = refs.get(task.item.id, 0) + 1
                outcome = start(task)
                if outcome is None:
                    live.append(task)
                else:
                    release(task)
                    yield task, outcome.value if isinstance(outcome, _Done) else outcome
            if not live:
                continue
            queries = [q for t in live for q in t.pending]
            results = self.executor.evaluate(queries)
            if self.on_progress:
                self.on_progress(sum(q.size() for q in queries))
            still: list[Task] = []
            pos = 0
            for task in live:
                res = results[pos : pos + len(task.pending)]
                pos += len(task.pending)
                task.pending = []
                failure = next((r for r in res if isinstance(r, QueryFailure)), None)
                if failure is not None:
                    task.gen.close()
                    outcome: Any = ItemError(failure.reason)
                else:
                    outcome = start(task, res)
                if outcome is None:
                    still.append(task)
                else:
                    release(task)
                    yield task, outcome.value if isinstance(outcome, _Done) else outcome
            live = still


@dataclass
class _Done:
    value: Any
