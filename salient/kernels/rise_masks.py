"""RISE masks (Petsiuk et al. 2018) generated on the device from (seed, chunk).

Mask i: a grid G ~ Bernoulli(p)^(s x s); cell = ceil(H/s), ceil(W/s); G is upsampled bilinearly to
((s+1)·cell_h, (s+1)·cell_w) with skimage's ``resize(order=1, mode="reflect")`` semantics
(pixel-centre coordinates, mirror boundary), then an H x W window is cropped at a uniform random
integer offset in [0, cell_h) x [0, cell_w). Upsampling is separable, so a mask is
``Wy[dy:dy+H] @ G @ Wx[dx:dx+W].T`` with fixed interpolation matrices: exact, and fast on any device.
Random draws come from numpy's PCG64 seeded with (seed, chunk), so every device, executor and
worker count draws the same masks.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage 'mirror' (= skimage 'reflect') index folding."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i > n - 1, period - i, i)


@lru_cache(maxsize=64)
def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of linear interpolation at pixel centres with mirror boundary."""
    o = np.arange(n_out, dtype=np.float64)
    c = (o + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(c).astype(np.int64)
    frac = c - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), _mirror(i0, n_in)), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), _mirror(i0 + 1, n_in)), frac)
    return m


def cell_size(size: tuple[int, int], cells: int) -> tuple[int, int]:
    return math.ceil(size[0] / cells), math.ceil(size[1] / cells)


def draw_grids(seed: int, chunk: int, n: int, cells: int, p: float, size: tuple[int, int]):
    """The random part of a chunk: grids (n, s, s) float32 and crop offsets (n, 2), from (seed, chunk)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(chunk)])))
    grids = (rng.random((n, cells, cells)) < p).astype(np.float32)
    ch, cw = cell_size(size, cells)
    dy = rng.integers(0, ch, size=n)
    dx = rng.integers(0, cw, size=n)
    return grids, np.stack([dy, dx], axis=1)


def rise_masks(
    seed: int, chunk: int, n: int, cells: int, p: float, size: tuple[int, int],
    device: torch.device | str = "cpu", start: int = 0, stop: int | None = None,
) -> torch.Tensor:
    """Masks ``start:stop`` of chunk ``chunk`` as float32 (stop - start, H, W) on ``device``."""
    stop = n if stop is None else stop
    grids, shifts, wy, wx = _chunk(seed, chunk, n, cells, p, tuple(size), str(device))
    h, w = size
    dy, dx = shifts[start:stop, 0], shifts[start:stop, 1]
    rows = wy[dy[:, None] + torch.arange(h, device=device)]  # (k, H, s)
    cols = wx[dx[:, None] + torch.arange(w, device=device)]  # (k, W, s)
    return torch.bmm(torch.bmm(rows, grids[start:stop]), cols.transpose(1, 2))


@lru_cache(maxsize=32)
def _chunk(seed: int, chunk: int, n: int, cells: int, p: float, size: tuple[int, int], device: str):
    """A chunk's draws and interpolation matrices as tensors on ``device``, cached (a worker builds a
    chunk's masks in many slices: one per batch, and again when reducing). Read-only by contract."""
    grids, shifts = draw_grids(seed, chunk, n, cells, p, size)
    ch, cw = cell_size(size, cells)
    wy = torch.from_numpy(interp_matrix(cells, (cells + 1) * ch)).float().to(device)
    wx = torch.from_numpy(interp_matrix(cells, (cells + 1) * cw)).float().to(device)
    return torch.from_numpy(grids).to(device), torch.from_numpy(shifts).to(device), wy, wx
