"""The measuring protocol: engine rounds alternated with raw rounds of equal length, in random order.

A machine's speed drifts from one few-second stretch to the next (on a shared 2-core VM, 2-second
forward rates scatter about ±12%), and a raw probe taken once before a long job compares different
stretches. So every engine round is paired with a raw round of the same duration: round 1 runs the
engine first (to learn its duration); each later round flips a seeded coin for which side goes first,
the raw side lasting as long as the engine round it is paired with (the previous one when raw goes
first). A noisy stretch then hurts both sides alike, whichever it falls on.

A figure is the median of its rounds with its spread (min-max and the interquartile range); a ratio
is the median of the rounds' own ratios (engine rate / paired raw rate). Warm-up (the first job of a
case, the first batch of a raw probe) is never inside a round; it is timed and reported apart.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One round: ``n`` forward passes in ``seconds``; ``extra`` holds what a round also measured."""

    n: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


def alternate(engine_round: Callable[[], Sample], raw_round: Callable[[float], Sample] | None, rounds: int,
              rng: random.Random) -> tuple[list[Sample], list[Sample]]:
    """Run ``rounds`` engine rounds, each paired with ``raw_round(seconds)`` of the same duration, in the order
    of the module docstring (no raw side when ``raw_round`` is None). Returns (engine samples, raw samples),
    pair k at index k of both."""
    engine: list[Sample] = []
    raw: list[Sample] = []
    seconds = 0.0
    for r in range(rounds):
        raw_first = raw_round is not None and r > 0 and rng.random() < 0.5
        if raw_first:
            raw.append(raw_round(seconds))
        s = engine_round()
        seconds = s.seconds
        engine.append(s)
        if raw_round is not None and not raw_first:
            raw.append(raw_round(seconds))
    return engine, raw


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, min, max, q1, q3 (numpy's linear quantiles) of ``values``; NaN for none."""
    v = np.asarray(list(values), dtype=np.float64)
    if not v.size:
        return dict.fromkeys(("median", "min", "max", "q1", "q3"), float("nan"))
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"median": float(med), "min": float(v.min()), "max": float(v.max()), "q1": float(q1), "q3": float(q3)}


def ratios(engine: Sequence[Sample], raw: Sequence[Sample]) -> list[float]:
    """Each pair's engine rate / raw rate."""
    return [e.rate / r.rate for e, r in zip(engine, raw, strict=True) if r.rate > 0]
