"""The metric contract and registry (:data:`METRICS`, beside :data:`~salient.methods.base.METHODS`).

A metric judges one map of an item: ``fn(item_id, size, saliency, target, **options)`` is a query
generator (driven like a method: it yields queries, gets their results, never calls the model) that
returns one number, stored in the results table as column ``column``. Metrics register themselves
from :mod:`salient.metrics` (``register_metric``); the engine, the job spec, the CLI and the store
read this registry and never import :mod:`salient.metrics`, so a new metric is one module there
plus its registration. Options (e.g. a curve's ``step`` and ``substrate``) are shared by the
metrics of a run; each metric takes those its function names.
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

    @property
    def options(self) -> tuple[str, ...]:
        """The options its function takes (after item, size, saliency, target)."""
        return tuple(list(inspect.signature(self.fn).parameters)[4:])

    def run(self, item: str, size: tuple[int, ...], saliency: Any, target: int, options: dict[str, Any]) -> MetricGen:
        """The generator for one map, given the run's options (those this metric does not take are left out)."""
        return self.fn(item, size, saliency, target, **{k: v for k, v in options.items() if k in self.options})


METRICS: dict[str, Metric] = {}


def register_metric(name: str, column: str | None = None) -> Callable:
    """Register a metric generator; its value goes to column ``column`` (default ``<name>``)."""

    def deco(fn: Callable[..., MetricGen]) -> Callable[..., MetricGen]:
        METRICS[name] = Metric(name, fn, column or name, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise SalientError(f"unknown metric {name!r}; choose one of {', '.join(METRICS) or 'none'}")
    return METRICS[name]


def metric_columns() -> tuple[str, ...]:
    """The results table's metric columns, in registration order."""
    return tuple(m.column for m in METRICS.values())
