"""Boxes as numbers, on the host: DiDA's grid cells, Captum's sliding windows, BOREx's squares, and the
box average of a map. A box is (y0, y1, x0, x1), half-open, already clipped to the image. (The
device kernels that paint boxes into inputs are the backends', :mod:`salient.kernels.backend`.)
"""

from __future__ import annotations

import math

import numpy as np


def grid_cells(size: tuple[int, int], g: int) -> np.ndarray:
    """The g x g cells of DiDA, row-major: cell (i, j) spans rows floor(i·H/g) .. floor((i+1)·H/g) - 1."""
    h, w = size
    ys = [(i * h) // g for i in range(g + 1)]
    xs = [(j * w) // g for j in range(g + 1)]
    return np.array([(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(g) for j in range(g)], dtype=np.int64)


def sliding_windows(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Captum ``Occlusion`` windows: ceil((H - h) / s) + 1 positions per axis, starting at k·s,
    the last ones clipped at the border."""
    h, w = size
    wh, ww = window
    sh, sw = stride
    ny = math.ceil(max(h - wh, 0) / sh) + 1
    nx = math.ceil(max(w - ww, 0) / sw) + 1
    return np.array(
        [(i * sh, min(i * sh + wh, h), j * sw, min(j * sw + ww, w)) for i in range(ny) for j in range(nx)],
        dtype=np.int64,
    )


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
