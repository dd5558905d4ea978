"""Sliding-window occlusion with Captum's ``Occlusion`` semantics (images, and clips in space-time)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import SalientError
from ..kernels import sliding_windows
from ..queries import BoxQuery
from .base import Request, register
from .spacetime import on_clip

WINDOW_T = 4  # a clip's temporal window by default: min(T, 4) frames, stride max(1, window_t // 2)


def _pair(v: tuple, name: str) -> tuple[int, int]:
    v = tuple(int(x) for x in v)
    if len(v) == 1:
        v = (v[0], v[0])
    if len(v) != 2 or min(v) < 1:
        raise SalientError(f"occlusion: {name} must be one or two positive integers, got {v}")
    return v


def _axes(req: Request, window: tuple, stride: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and stride with one value per axis of the input: (h, w) on an image; (t, h, w) on a clip,
    where a window or stride of 1 or 2 values gets the temporal default (WINDOW_T)."""
    if not req.frames:
        return _pair(window, "window"), _pair(stride, "stride")
    window, stride = tuple(int(x) for x in window), tuple(int(x) for x in stride)
    for name, v in (("window", window), ("stride", stride)):
        if not 1 <= len(v) <= 3 or min(v) < 1:
            raise SalientError(f"occlusion: {name} must be one to three positive integers on a clip, got {v}")
    wt = window[0] if len(window) == 3 else min(req.frames, WINDOW_T)
    st = stride[0] if len(stride) == 3 else max(1, wt // 2)
    return (wt, *_pair(window[-2:], "window")), (st, *_pair(stride[-2:], "stride"))


@register("occlusion", signed=True)
def occlusion(req: Request, window: tuple = (32, 32), stride: tuple = (16, 16), baseline: float = 0.0,
              chunk: int = 4):
    """Occlusion: attribution(x) = mean over windows covering x of f_c(I) − f_c(I, window := baseline).

    Windows, strides and baseline (a value in normalised space, covering all channels) as Captum's
    ``Occlusion(sliding_window_shapes=(C, h, w), strides=(C, sh, sw), baselines=b)``: ceil((H-h)/sh)+1
    positions per axis, the last clipped at the border. Queries hold ``chunk`` windows each (4: see
    DiDA's ``chunk``).

    On a clip (C, T, H, W), occlusion-3D: space-time windows (t, h, w) slid with strides (st, sh, sw), as
    Captum's ``sliding_window_shapes=(C, t, h, w), strides=(C, st, sh, sw)`` on (N, C, T, H, W):
    ceil((T-t)/st)+1 positions along t too, the attribution of each voxel (t, y, x) the mean over the
    windows that cover it, a (targets, T, H, W) map. ``window`` and ``stride`` take 3 values
    (t, h, w) there; with 1 or 2 (spatial) values, t = min(T, 4) and st = max(1, t // 2). 3 values on an
    image are an error."""
    window, stride = _axes(req, window, stride)
    if any(w > n for w, n in zip(window, req.shape, strict=True)):
        raise SalientError(f"occlusion: window {window} larger than the input {req.shape}")
    if chunk < 1:
        raise SalientError("occlusion: chunk must be >= 1")
    if not math.isfinite(baseline):
        raise SalientError(f"occlusion: baseline must be a finite number, got {baseline!r}")
    boxes = sliding_windows(req.shape, window, stride)
    parts = [boxes[i : i + chunk] for i in range(0, len(boxes), chunk)]
    results = yield [BoxQuery(req.item, req.targets, boxes=tuple(map(tuple, b.tolist())), mode="delete",
                              fill=float(baseline)) for b in parts]
    scores = np.concatenate(results)  # (n_windows, T)
    diff = req.base[None, :].astype(np.float64) - scores
    total = np.zeros((len(req.targets), *req.shape), dtype=np.float64)
    count = np.zeros(req.shape, dtype=np.float64)
    for box, d in zip(boxes.tolist(), diff, strict=True):
        sl = tuple(slice(box[2 * i], box[2 * i + 1]) for i in range(len(req.shape)))
        total[(slice(None), *sl)] += d.reshape(-1, *[1] * len(req.shape))
        count[sl] += 1.0
    return on_clip(req, total / np.maximum(count, 1.0), window=window, stride=stride)
