"""Sliding-window occlusion with Captum's ``Occlusion`` semantics."""

from __future__ import annotations

import math

import numpy as np

from ..errors import SalientError
from ..kernels import sliding_windows
from ..queries import BoxQuery
from .base import Request, register


def _pair(v: tuple, name: str) -> tuple[int, int]:
    v = tuple(int(x) for x in v)
    if len(v) == 1:
        v = (v[0], v[0])
    if len(v) != 2 or min(v) < 1:
        raise SalientError(f"occlusion: {name} must be one or two positive integers, got {v}")
    return v


@register("occlusion", signed=True)
def occlusion(req: Request, window: tuple = (32, 32), stride: tuple = (16, 16), baseline: float = 0.0,
              chunk: int = 4):
    """Occlusion: attribution(x) = mean over windows covering x of f_c(I) − f_c(I, window := baseline).

    Windows, strides and baseline (a value in normalised space, covering all channels) as Captum's
    ``Occlusion(sliding_window_shapes=(C, h, w), strides=(C, sh, sw), baselines=b)``: ceil((H-h)/sh)+1
    positions per axis, the last clipped at the border. Queries hold ``chunk`` windows each (4: see
    DiDA's ``chunk``)."""
    window, stride = _pair(window, "window"), _pair(stride, "stride")
    if window[0] > req.size[0] or window[1] > req.size[1]:
        raise SalientError(f"occlusion: window {window} larger than the input {req.size}")
    if chunk < 1:
        raise SalientError("occlusion: chunk must be >= 1")
    if not math.isfinite(baseline):
        raise SalientError(f"occlusion: baseline must be a finite number, got {baseline!r}")
    boxes = sliding_windows(req.size, window, stride)
    parts = [boxes[i : i + chunk] for i in range(0, len(boxes), chunk)]
    results = yield [BoxQuery(req.item, req.targets, boxes=tuple(map(tuple, b.tolist())), mode="delete",
                              fill=float(baseline)) for b in parts]
    scores = np.concatenate(results)  # (n_windows, T)
    diff = req.base[None, :].astype(np.float64) - scores
    total = np.zeros((len(req.targets), *req.size), dtype=np.float64)
    count = np.zeros(req.size, dtype=np.float64)
    for (y0, y1, x0, x1), d in zip(boxes, diff, strict=True):
        total[:, y0:y1, x0:x1] += d[:, None, None]
        count[y0:y1, x0:x1] += 1.0
    return (total / np.maximum(count, 1.0)).astype(np.float32)
