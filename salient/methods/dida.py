"""DiDA: signed multi-grid occlusion (Ayatsuka et al., 2021)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import SalientError
from ..kernels import check_fill, grid_cells, space_time_cells, time_segments
from ..queries import BoxQuery
from .base import Request, register
from .spacetime import clip_only, frame_count, on_clip

DIDA_GRIDS = (7, 9, 11, 13, 15, 17, 19, 21)
DIDA_WEIGHTS = (0.044, 0.067, 0.085, 0.105, 0.130, 0.156, 0.188, 0.225)
SEGMENTS = 4  # DiDA-3D's temporal segments by default (at most the clip's frames)


def paint_cells(size: tuple[int, int], g: int, values: np.ndarray) -> np.ndarray:
    """Paint per-cell values (g², T) onto (T, H, W) with DiDA's floor(i·H/g) cell bounds."""
    h, w = size
    ys = np.array([(i * h) // g for i in range(g + 1)])
    xs = np.array([(j * w) // g for j in range(g + 1)])
    row = np.searchsorted(ys, np.arange(h), side="right") - 1
    col = np.searchsorted(xs, np.arange(w), side="right") - 1
    idx = row[:, None] * g + col[None, :]
    return np.moveaxis(values[idx], -1, 0)


@register("dida", signed=True)
def dida(req: Request, grids: tuple = DIDA_GRIDS, weights: tuple = DIDA_WEIGHTS, fill: str = "black",
         chunk: int = 4, segments: int | None = None):
    """DiDA: D = Σ_g w_g · D_g, D_g painting d_ij = f_k(I) − f_k(I with cell (i, j) filled black)
    on cell (i, j) of a g x g grid. Positive: the cell supports class k; negative: it argues against.
    Cost: 1 + Σ g² forward passes (1737 at the defaults). The cells of all grids are asked for in
    queries of ``chunk`` cells: the engine packs small queries into whole batches of any size, so
    only the last query can leave padded rows, and 4 keeps every worker busy to an image's end (a
    worker's last unit of work is at most a few cells).

    On a clip (C, T, H, W), DiDA-3D: every cell (i, j) of every grid g is combined with each of n =
    ``segments`` temporal segments (segment s spans frames floor(s·T/n) .. floor((s+1)·T/n) − 1); d_sij =
    f_k(I) − f_k(I with the space-time cell (s, i, j) filled) is painted on that cell's voxels: D_g, and D =
    Σ_g w_g · D_g with the same weights per spatial grid, signed, a (targets, T, H, W) map. ``segments``:
    an integer in [1, T], default (None) min(4, T); clips only (an error on an image). Cost: 1 + n·Σ g²
    forward passes."""
    grids = tuple(int(g) for g in grids)
    weights = tuple(float(w) for w in weights)
    if not grids or len(grids) != len(weights):
        raise SalientError(f"dida: {len(grids)} grid sizes but {len(weights)} weights")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise SalientError(f"dida: weights must be finite and >= 0, at least one > 0, got {weights}")
    if min(grids) < 1 or max(grids) > min(req.size):
        raise SalientError(f"dida: grid sizes must lie in [1, {min(req.size)}], got {grids}")
    if chunk < 1:
        raise SalientError("dida: chunk must be >= 1")
    fill = check_fill(fill, "dida: fill")
    clip_only(req, "dida", segments=segments)
    spans = time_segments(req.frames, frame_count("dida", "segments", segments, SEGMENTS, req.frames)) \
        if req.frames else None
    per_grid = [grid_cells(req.size, g) for g in grids]
    if spans is not None:  # segment-major within a grid: cell (s, i, j) is row s·g² + i·g + j
        per_grid = [space_time_cells(spans, c) for c in per_grid]
    cells = np.concatenate(per_grid)
    results = yield [BoxQuery(req.item, req.targets, boxes=tuple(map(tuple, cells[i : i + chunk].tolist())),
                              mode="delete", fill=fill) for i in range(0, len(cells), chunk)]
    d = req.base[None, :].astype(np.float64) - np.concatenate(results)  # (Σ g², T) (n·Σ g² on a clip)
    out = np.zeros((len(req.targets), *req.shape), dtype=np.float64)
    start = 0
    for g, w, rows in zip(grids, weights, per_grid, strict=True):
        if spans is None:
            out += w * paint_cells(req.size, g, d[start : start + g * g])
        else:
            for k, (t0, t1) in enumerate(spans.tolist()):
                out[:, t0:t1] += w * paint_cells(req.size, g, d[start + k * g * g : start + (k + 1) * g * g])[:, None]
        start += len(rows)
    return on_clip(req, out, segments=None if spans is None else len(spans))
