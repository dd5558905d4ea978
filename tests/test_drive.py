"""The one driver of query generators (salient.methods.drive): every caller's loop."""

from __future__ import annotations

import pytest

from salient.errors import ItemError
from salient.methods.drive import drive, drive_overlapped, first_queries, first_round, lockstep, step
from salient.queries import QueryFailure


def echo(rounds, log=None):
    """Yields [name-r] for r in range(rounds) (an empty round in between) and returns what it received."""
    got = []
    for r in range(rounds):
        assert (yield []) == []  # an empty round is answered at once, never evaluated
        got.append((yield [f"q{r}"]))
        if log is not None:
            log.append(r)
    return got


def test_step_skips_empty_rounds_and_reports_value_or_exception():
    gen = echo(2)
    assert step(gen, None) == (["q0"], None)
    assert step(gen, ["A"]) == (["q1"], None)
    assert step(gen, ["B"]) == (None, [["A"], ["B"]])

    def bad():
        yield ["x"]
        raise ValueError("broken")

    gen = bad()
    step(gen, None)
    queries, outcome = step(gen, [1])
    assert queries is None and isinstance(outcome, ValueError)


def test_drive_evaluates_in_order_and_raises_a_failed_query():
    calls = []

    def evaluate(queries):
        calls.append(queries)
        return [q.upper() for q in queries]

    assert drive(echo(3), evaluate) == [["Q0"], ["Q1"], ["Q2"]]
    assert calls == [["q0"], ["q1"], ["q2"]]
    log: list = []
    with pytest.raises(ItemError, match="item x: bad"):
        drive(echo(3, log), lambda qs: [QueryFailure("x", "item x: bad")] if qs == ["q1"] else qs)
    assert log == [0]  # stopped at the failure


def test_lockstep_hands_each_generator_its_own_results():
    gen = lockstep([echo(1), echo(3), echo(2)])
    rounds = []
    queries, value = step(gen, None)
    while queries is not None:
        rounds.append(queries)
        queries, value = step(gen, [q.upper() for q in queries])
    assert rounds == [["q0", "q0", "q0"], ["q1", "q1"], ["q2"]]
    assert value == [[["Q0"]], [["Q0"], ["Q1"], ["Q2"]], [["Q0"], ["Q1"]]]


def test_first_round_and_first_queries_stop_early_and_close():
    log: list = []
    gen = first_round(echo(5, log))
    assert step(gen, None) == (["q0"], None)
    assert step(gen, ["A"]) == (None, None)  # advanced to its second round, which is not run
    assert log == [0]
    assert first_queries(echo(2)) == ["q0"]
    with pytest.raises(ValueError, match="early"):
        first_queries(iter_raise())


def iter_raise():
    raise ValueError("early")
    yield  # a generator


def test_overlapped_driver_runs_one_evaluation_at_a_time_in_order_and_stops_on_failure():
    def gen(name, rounds, closed):
        try:
            got = []
            for r in range(rounds):
                got.append((yield [f"{name}{r}"]))
            return got
        finally:
            closed.append(name)

    asked: list = []
    closed: list = []

    def evaluate(queries):
        asked.append(queries[0])
        return [q.upper() for q in queries]

    out = drive_overlapped([gen("a", 3, closed), gen("b", 2, closed)], evaluate)
    assert out == [[["A0"], ["A1"], ["A2"]], [["B0"], ["B1"]]]
    assert asked == ["a0", "b0", "a1", "b1", "a2"]  # b's step runs while a's queries are evaluated, and so on
    closed.clear()

    def failing(queries):
        return [QueryFailure("b", "b: broken")] if queries == ["b1"] else queries

    with pytest.raises(ItemError, match="b: broken"):
        drive_overlapped([gen("a", 5, closed), gen("b", 5, closed)], failing)
    assert sorted(closed) == ["a", "b"]  # every generator is closed
