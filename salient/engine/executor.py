"""The executor contract: what the scheduler needs from a pool of workers.

An executor owns ``n_workers`` workers (model replicas) and runs *units* on them: a unit is a
list of queries, possibly of several items, evaluated by one worker in one call and retried
whole. The scheduler decides what goes where; the executor only transports:

- ``ready()``: the workers that accept units now (a lost worker is absent until it is back);
- ``submit(worker, unit)``: run ``unit.queries`` on ``worker`` (non-blocking). ``unit.items``
  holds every item the queries need; the executor sends the ones the worker lacks (a restarted
  worker has lost its cache, so this never depends on what the scheduler believes it holds);
- ``wait(timeout)``: block until at least one submitted unit ends (or ``timeout`` s pass) and
  return the events: :class:`Done` (one result per query, a
  :class:`~salient.queries.QueryFailure` for a query whose item failed), :class:`Lost`
  (the worker died; the unit must run again, maybe elsewhere) or :class:`Failed` (running the
  unit raised);
- ``forget(item_id)``: no live task needs the item any more (workers may drop it);
- ``batch_size``, ``depth`` (units in flight per worker), ``unit_batches`` (the batches a unit
  aims for), ``stats()``, ``close()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..item import Item
from ..queries import Query


@dataclass(eq=False)
class Unit:
    """Queries for one worker call. ``entries`` is the scheduler's routing (one per query)."""

    id: int
    queries: list[Query]
    items: dict[str, Item]
    entries: list[Any] = field(default_factory=list)
    worker: int = -1
    epoch: int = 0  # the worker's incarnation when submitted (executors tell old losses from new)
    attempts: int = 0  # times lost with its worker
    isolated: bool = False  # one item only: a failure here is that item's
    owner: Any = field(default=None, repr=False)  # the inbox of the scheduler run it belongs to

    @property
    def n_inputs(self) -> int:
        """Forward passes this unit costs."""
        return sum(q.n_inputs() for q in self.queries)


@dataclass
class Done:
    unit: Unit
    results: list[Any]


@dataclass
class Lost:
    unit: Unit
    reason: str


@dataclass
class Failed:
    unit: Unit
    error: BaseException


Event = Done | Lost | Failed


class Executor(Protocol):
    kind: str
    n_workers: int
    batch_size: int
    depth: int
    unit_batches: int

    def ready(self) -> list[int]: ...

    def submit(self, worker: int, unit: Unit) -> None: ...

    def wait(self, timeout: float | None = None) -> list[Event]: ...

    def forget(self, item_id: str) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (a unit's failure reason)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
