"""Boxes as numbers, on the host: DiDA's grid cells, Captum's sliding windows, BOREx's squares, and the
box average of a map; for clips, temporal segments and space-time boxes. A box is (y0, y1, x0, x1), or
(t0, t1, y0, y1, x0, x1) on a clip, half-open, already clipped to the input. (The
device kernels that paint boxes into inputs are the backends', :mod:`salient.kernels.backend`.)
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def grid_cells(size: tuple[int, int], g: int) -> np.ndarray:
    """The g x g cells of DiDA, row-major: cell (i, j) spans rows floor(i·H/g) .. floor((i+1)·H/g) - 1."""
    h, w = size
    ys = [(i * h) // g for i in range(g + 1)]
    xs = [(j * w) // g for j in range(g + 1)]
    return np.array([(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(g) for j in range(g)], dtype=np.int64)


def sliding_windows(size: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
    """Captum ``Occlusion`` windows: ceil((H - h) / s) + 1 positions per axis, starting at k·s,
    the last ones clipped at the border. Any number of axes: (y0, y1, x0, x1) rows for (H, W),
    (t0, t1, y0, y1, x0, x1) for (T, H, W); row-major over the axes' positions."""
    axes = [[(i * s, min(i * s + k, n)) for i in range(math.ceil(max(n - k, 0) / s) + 1)]
            for n, k, s in zip(size, window, stride, strict=True)]
    return np.array([sum(spans, ()) for spans in itertools.product(*axes)], dtype=np.int64).reshape(-1, 2 * len(size))


def time_segments(frames: int, n: int) -> np.ndarray:
    """The n temporal segments of a clip of T frames, (n, 2) half-open: segment k spans frames
    floor(k·T/n) .. floor((k+1)·T/n) − 1 (each non-empty for 1 <= n <= T)."""
    b = [(k * frames) // n for k in range(n + 1)]
    return np.array([(b[k], b[k + 1]) for k in range(n)], dtype=np.int64).reshape(-1, 2)


def space_time_cells(spans: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Every temporal span (t0, t1) with every spatial box (y0, y1, x0, x1), span-major:
    (len(spans)·len(cells), 6) boxes (t0, t1, y0, y1, x0, x1)."""
    spans, cells = np.asarray(spans, dtype=np.int64), np.asarray(cells, dtype=np.int64)
    return np.concatenate([np.repeat(spans, len(cells), axis=0), np.tile(cells, (len(spans), 1))], axis=1)


def squares(size: tuple[int, int], centers: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Squares [r - m, r + m) x [c - m, c + m) clipped to the image (BOREx states (r, c, m))."""
    h, w = size
    r, c, m = np.asarray(centers)[:, 0], np.asarray(centers)[:, 1], np.asarray(half)
    return np.stack(
        [np.clip(r - m, 0, h), np.clip(r + m, 0, h), np.clip(c - m, 0, w), np.clip(c + m, 0, w)], axis=1
    ).astype(np.int64)


def box_mean(a: np.ndarray, half: int) -> np.ndarray:
    """Mean of ``a`` (..., H, W) over the (2·half + 1)² window around each pixel, clipped to the image
    (``AvgPool2d(2h+1, stride=1, padding=h, count_include_pad=False)``), by summed-area tables in float64."""
    a = np.asarray(a, dtype=np.float64)
    h, w = a.shape[-2:]
    sat = np.zeros((*a.shape[:-2], h + 1, w + 1))
    sat[..., 1:, 1:] = a.cumsum(-2).cumsum(-1)
    y0, y1 = np.clip(np.arange(h) - half, 0, h), np.clip(np.arange(h) + half + 1, 0, h)
    x0, x1 = np.clip(np.arange(w) - half, 0, w), np.clip(np.arange(w) + half + 1, 0, w)
    total = (sat[..., y1[:, None], x1[None, :]] - sat[..., y0[:, None], x1[None, :]]
             - sat[..., y1[:, None], x0[None, :]] + sat[..., y0[:, None], x0[None, :]])
    return total / ((y1 - y0)[:, None] * (x1 - x0)[None, :])


def boxes_3d(shape: tuple[int, int, int], centers: np.ndarray, half: np.ndarray, dur: np.ndarray) -> np.ndarray:
    """Space-time boxes [t − τ, t + τ) x [r − m, r + m) x [c − m, c + m) clipped to the clip (T, H, W)
    (BOREx-3D states (t, r, c, m, τ)): rows (t0, t1, y0, y1, x0, x1). ``centers`` (n, 3) holds (t, r, c),
    ``half`` (n,) the pixel half-sides m, ``dur`` (n,) the half-lengths τ in frames."""
    t = np.asarray(centers)[:, 0]
    tau = np.asarray(dur)
    space = squares(tuple(shape[1:]), np.asarray(centers)[:, 1:], half)
    return np.concatenate([np.stack([np.clip(t - tau, 0, shape[0]), np.clip(t + tau, 0, shape[0])], axis=1),
                           space], axis=1).astype(np.int64)


def box_mean_3d(a: np.ndarray, half_t: int, half: int) -> np.ndarray:
    """Mean of ``a`` (..., T, H, W) over the (2·half_t + 1) x (2·half + 1)² window around each voxel, clipped
    to the clip (padding not counted, as ``AvgPool3d(count_include_pad=False)``), by a summed-volume table in
    float64: the 3-D form of :func:`box_mean`."""
    a = np.asarray(a, dtype=np.float64)
    dims = a.shape[-3:]
    sat = np.zeros((*a.shape[:-3], *(d + 1 for d in dims)))
    sat[..., 1:, 1:, 1:] = a.cumsum(-3).cumsum(-2).cumsum(-1)
    lo, hi = zip(*[(np.clip(np.arange(d) - h, 0, d), np.clip(np.arange(d) + h + 1, 0, d))
                   for d, h in zip(dims, (half_t, half, half), strict=True)], strict=True)
    total = np.zeros(a.shape)
    for corner in range(8):  # inclusion-exclusion over the 8 corners of each window
        pick = [(hi, lo)[(corner >> k) & 1][k] for k in range(3)]
        sign = (-1) ** bin(corner).count("1")
        total += sign * sat[..., pick[0][:, None, None], pick[1][None, :, None], pick[2][None, None, :]]
    count = ((hi[0] - lo[0])[:, None, None] * (hi[1] - lo[1])[None, :, None] * (hi[2] - lo[2])[None, None, :])
    return total / count
