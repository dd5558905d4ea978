"""The temporal pass: importance over time of a clip, by occluding whole temporal segments."""

from __future__ import annotations

import numpy as np

from ..errors import SalientError
from ..kernels import check_fill, time_segments
from ..queries import BoxQuery
from .base import Request, register
from .spacetime import frame_count, on_clip

SEGMENTS = 8  # temporal segments by default (at most the clip's frames)


@register("temporal", signed=True)
def temporal(req: Request, segments: int | None = None, window: int = 1, fill: str = "zero", chunk: int = 4):
    """Temporal occlusion of a clip (C, T, H, W): n = ``segments`` segments, segment k spanning frames
    floor(k·T/n) .. floor((k+1)·T/n) − 1 (default (None) n = min(8, T); an integer in [1, T]). Window j
    (j = 0 .. n − ``window``) fills all pixels of the frames of segments j .. j + window − 1 with ``fill``
    (default "zero"): d_j = f_c(I) − f_c(I without them). The map (targets, T, H, W) holds on every pixel
    of segment k's frames the mean of d_j over the windows that cover k (window 1: d_k itself); positive
    where the frames support the class. Cost: n − window + 1 forward passes. Images have no time axis:
    an error. Queries hold ``chunk`` windows each."""
    if not req.frames:
        raise SalientError("temporal explains clips; this input is an image")
    n = frame_count("temporal", "segments", segments, SEGMENTS, req.frames)
    if not 1 <= window <= n:
        raise SalientError(f"temporal: window must lie in [1, {n}] (segments), got {window}")
    if chunk < 1:
        raise SalientError("temporal: chunk must be >= 1")
    fill = check_fill(fill, "temporal: fill")
    spans = time_segments(req.frames, n)
    h, w = req.size
    boxes = [(int(spans[j, 0]), int(spans[j + window - 1, 1]), 0, h, 0, w) for j in range(n - window + 1)]
    results = yield [BoxQuery(req.item, req.targets, boxes=tuple(boxes[i : i + chunk]), mode="delete", fill=fill)
                     for i in range(0, len(boxes), chunk)]
    d = req.base[None, :].astype(np.float64) - np.concatenate(results)  # (windows, targets)
    per_segment = np.zeros((n, len(req.targets)), dtype=np.float64)
    count = np.zeros(n, dtype=np.float64)
    for j, dj in enumerate(d):
        per_segment[j : j + window] += dj
        count[j : j + window] += 1.0
    per_segment /= count[:, None]
    out = np.zeros((len(req.targets), *req.shape), dtype=np.float64)
    for (t0, t1), v in zip(spans.tolist(), per_segment, strict=True):
        out[:, t0:t1] = v[:, None, None, None]
    return on_clip(req, out, segments=n)
