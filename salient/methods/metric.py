"""The metric contract and registry (:data:`METRICS`, beside :data:`~salient.methods.base.METHODS`).

A metric judges one map of an item: ``fn(item_id, size, saliency, target, **options)`` is a query
generator (driven like a method: it yields queries, gets their results, never calls the model) that
returns one number, stored in the results table as column ``column``. Metrics register themselves
from :mod:`salient.metrics` (``register_metric``); the engine, the job spec, the CLI and the store
read this registry and never import :mod:`salient.metrics`, so a new metric is one module there
plus its registration. Options (e.g. a curve's ``step`` and ``substrate``) are shared by the
metrics of a run; each metric takes those its function names. Per item, the engine adds ``mask``:
the item's object mask (bool, the map's shape) or None (:func:`salient.object_mask.object_mask`).
A value that is undefined for a reason is an :class:`Undefined` NaN; the engine writes the reasons
of a map's metrics to the table's :data:`NOTE_COLUMN`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..errors import SalientError

MetricGen = Generator[list, list, float]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., MetricGen]
    column: str  # the results table's column for its value
    doc: str
    higher_is_better: bool | None = None  # the direction a paired comparison tests (None: two-sided)

    @property
    def options(self) -> tuple[str, ...]:
        """The options its function takes (after item, size, saliency, target)."""
        return tuple(list(inspect.signature(self.fn).parameters)[4:])

    def run(self, item: str, size: tuple[int, ...], saliency: Any, target: int, options: dict[str, Any]) -> MetricGen:
        """The generator for one map, given the run's options (those this metric does not take are left out)."""
        return self.fn(item, size, saliency, target, **{k: v for k, v in options.items() if k in self.options})


METRICS: dict[str, Metric] = {}


def register_metric(name: str, column: str | None = None, higher_is_better: bool | None = None) -> Callable:
    """Register a metric generator; its value goes to column ``column`` (default ``<name>``);
    ``higher_is_better`` says which way a better map moves it (None: no direction)."""

    def deco(fn: Callable[..., MetricGen]) -> Callable[..., MetricGen]:
        METRICS[name] = Metric(name, fn, column or name, (fn.__doc__ or "").strip().split("\n")[0], higher_is_better)
        return fn

    return deco


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise SalientError(f"unknown metric {name!r}; choose one of {', '.join(METRICS) or 'none'}")
    return METRICS[name]


def metric_columns() -> tuple[str, ...]:
    """The results table's metric columns, in registration order."""
    return tuple(m.column for m in METRICS.values())


def metric_for_column(column: str) -> Metric | None:
    """The registered metric whose results-table column is ``column`` (None if there is none)."""
    return next((m for m in METRICS.values() if m.column == column), None)


NOTE_COLUMN = "metric_note"  # the results table's column for why a map's metrics are undefined


class Undefined(float):
    """A metric value that is undefined (NaN) for a stated reason (no object mask, an empty mask, a
    constant map): ``float`` NaN everywhere, with ``reason``; :func:`metric_note` collects the reasons."""

    reason: str

    def __new__(cls, reason: str) -> Undefined:
        obj = super().__new__(cls, float("nan"))
        obj.reason = reason
        return obj

    def __reduce__(self) -> tuple:
        return Undefined, (self.reason,)


def metric_note(values: dict[str, Any]) -> str | None:
    """The reasons of the Undefined values among a map's metric values (column -> value), as
    ``"reason (column, column); reason (column)"`` in first-seen order; None if there are none."""
    by_reason: dict[str, list[str]] = {}
    for column, v in values.items():
        if isinstance(v, Undefined):
            by_reason.setdefault(v.reason, []).append(column)
    return "; ".join(f"{r} ({', '.join(cs)})" for r, cs in by_reason.items()) or None
