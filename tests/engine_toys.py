"""Toy modules and a recording executor for engine tests (importable by Ray workers: tests/ is on
their PYTHONPATH when the test session starts Ray)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from toy_models import Linear

from salient.engine.executor import Done, Lost


class Slow(Linear):
    """``Linear`` logits, but each forward sleeps ``seconds`` (a slow worker)."""

    def __init__(self, seconds: float = 0.01, n_classes: int = 3, size: int = 32):
        super().__init__(n_classes, size, seed=1)
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return super().forward(x)


class Poison(Linear):
    """``Linear`` logits; raises RuntimeError when any input value exceeds ``limit`` (bad data that
    breaks the model, not an ItemError)."""

    def __init__(self, limit: float = 50.0, n_classes: int = 3, size: int = 32):
        super().__init__(n_classes, size, seed=2)
        self.limit = limit

    def forward(self, x):
        if bool((x > self.limit).any()):
            raise RuntimeError("poisoned input")
        return super().forward(x)


class Conv(nn.Module):
    """A small CNN (conv, ReLU, pooling, linear): white-box methods hook its conv layer."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


class Recording:
    """Wraps an executor; counts units in flight per worker independently of the scheduler, records
    which items each worker was given, and can turn chosen completions into losses (``lose``: unit
    ordinals, counted from 0 in submission order)."""

    def __init__(self, inner: Any, lose: tuple[int, ...] = ()):
        self.inner = inner
        self.inflight: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.items_by_worker: dict[int, set[str]] = {}
        self.lose = set(lose)
        self.submitted = 0
        self._ordinal: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def submit(self, worker: int, unit) -> None:
        self.inflight[worker] = self.inflight.get(worker, 0) + 1
        self.peak[worker] = max(self.peak.get(worker, 0), self.inflight[worker])
        self.items_by_worker.setdefault(worker, set()).update(unit.items)
        self._ordinal[id(unit)] = self.submitted
        self.submitted += 1
        self.inner.submit(worker, unit)

    def wait(self, timeout=None):
        events = self.inner.wait(timeout)
        out = []
        for ev in events:
            self.inflight[ev.unit.worker] -= 1
            if isinstance(ev, Done) and self._ordinal.pop(id(ev.unit), -1) in self.lose:
                ev = Lost(ev.unit, "simulated loss")
            out.append(ev)
        return out
