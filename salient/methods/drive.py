"""The one loop that drives query generators.

A method (or a metric, or a task) is a generator: it yields a list of queries, receives their
results in the same order, and returns its value. Everything that runs such generators goes
through :func:`step`: the engine's scheduler, the synchronous :func:`drive` (BOREx's batched API,
benchmarks), :func:`drive_overlapped`, :func:`lockstep` (generators side by side as one, e.g. a
BOREx prior for several requests, a map's curves), :func:`first_round` (the CLI's preflight) and
:func:`first_queries` (the dry-run check of a method's parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import ItemError
from ..queries import QueryFailure


def step(gen: Generator, value: Any) -> tuple[list | None, Any]:
    """Send ``value`` and run the generator to its next non-empty list of queries (an empty one is
    answered at once with ``[]``). Returns (queries, None), or (None, outcome) once it is done:
    its return value, or the exception it raised."""
    while True:
        try:
            queries = list(gen.send(value))
        except StopIteration as stop:
            return None, stop.value
        except Exception as e:  # noqa: BLE001 - the caller decides what a failed generator means
            return None, e
        if queries:
            return queries, None
        value = []


def first_failure(results: Sequence[Any]) -> QueryFailure | None:
    """The first failed query's result, if any."""
    return next((r for r in results if isinstance(r, QueryFailure)), None)


def raise_failure(results: Sequence[Any]) -> None:
    """Raise the first failed query's reason as an ItemError."""
    failed = first_failure(results)
    if failed is not None:
        raise ItemError(failed.reason)


def drive(gen: Generator, evaluate: Callable[[list], list]) -> Any:
    """Run a query generator to its return value with ``evaluate``; a failed query raises its ItemError."""
    value: Any = None
    try:
        while True:
            queries, outcome = step(gen, value)
            if queries is None:
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome
            value = evaluate(queries)
            raise_failure(value)
    finally:
        gen.close()


def drive_overlapped(gens: Sequence[Generator], evaluate: Callable[[list], list]) -> list:
    """Run several query generators round-robin so that each one's work between two yields (a BOREx GP
    step) overlaps the evaluation of the others' queries: ``evaluate`` runs in one helper thread, one
    call at a time, in the order the queries were yielded. Returns the generators' values in order; a
    failed query raises its ItemError (every generator is closed)."""
    out: list[Any] = [None] * len(gens)
    pending: dict[int, Future] = {}
    live = list(range(len(gens)))
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="salient-evaluate") as pool:
            while live:
                for i in list(live):
                    value = None
                    if i in pending:
                        value = pending.pop(i).result()
                        raise_failure(value)
                    queries, outcome = step(gens[i], value)
                    if queries is None:
                        if isinstance(outcome, BaseException):
                            raise outcome
                        out[i] = outcome
                        live.remove(i)
                        continue
                    pending[i] = pool.submit(evaluate, queries)
    finally:
        for fut in pending.values():
            fut.cancel()
        for gen in gens:
            gen.close()
    return out


def lockstep(gens: Sequence[Generator]) -> Generator[list, list, list]:
    """Generators side by side as one: each round yields all their queries at once and hands each
    its own results; returns their values in order. A generator that raises raises here."""
    out: list[Any] = [None] * len(gens)
    send: dict[int, Any] = {i: None for i in range(len(gens))}
    while send:
        asked: dict[int, list] = {}
        for i, value in send.items():
            queries, outcome = step(gens[i], value)
            if queries is None:
                if isinstance(outcome, BaseException):
                    raise outcome
                out[i] = outcome
            else:
                asked[i] = queries
        if not asked:
            break
        answers = yield [q for qs in asked.values() for q in qs]
        send, pos = {}, 0
        for i, qs in asked.items():
            send[i], pos = answers[pos : pos + len(qs)], pos + len(qs)
    return out


def first_round(gen: Generator) -> Generator[list, list, None]:
    """Generator: pass a generator's first queries on, feed their answers back, let it advance to its
    next queries (which are not run), then stop and close it. For an explain task this checks the
    unmasked scores, resolves the targets and starts the method, at the cost of one forward pass."""
    try:
        queries, outcome = step(gen, None)
        if queries is None:
            if isinstance(outcome, BaseException):
                raise outcome
            return
        answers = yield queries
        _, outcome = step(gen, answers)
        if isinstance(outcome, BaseException):
            raise outcome
    finally:
        gen.close()


def first_queries(gen: Generator) -> list | None:
    """Run a generator up to its first queries (or its end) and close it: what a dry run checks.
    Returns the queries (None if it ended first); an exception it raises propagates."""
    try:
        queries, outcome = step(gen, None)
        if isinstance(outcome, BaseException):
            raise outcome
        return queries
    finally:
        gen.close()
