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
    device: torch.device | str = "cpu", start: int = 0, stop: int | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masks ``start:stop`` of chunk ``chunk`` as float32 (stop - start, H, W) on ``device``.

    ``out``: write them into this contiguous (stop - start, H, W) tensor instead, or into a
    (stop - start, H, W, C) one: each mask value repeated over a last axis of C, the order in which a
    channels-last batch stores pixels (the same bits, made by the same product with every column of
    the horizontal interpolation repeated C times)."""
    stop = n if stop is None else stop
    grids, shifts, wy, wx = _chunk(seed, chunk, n, cells, p, tuple(size), str(device))
    h, w = size
    k = stop - start
    c = 1 if out is None or out.ndim == 3 else out.shape[-1]
    if out is not None and (tuple(out.shape[:3]) != (k, h, w) or out.ndim not in (3, 4) or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous ({k}, {h}, {w}[, C]) tensor, got {tuple(out.shape)}")
    dy, dx = shifts[start:stop, 0], shifts[start:stop, 1]
    rows = wy[dy[:, None] + torch.arange(h, device=device)]  # (k, H, s)
    col_index = dx[:, None] + torch.arange(w, device=device)
    cols = wx[col_index if c == 1 else col_index.repeat_interleave(c, dim=1)]  # (k, W·C, s)
    masks = torch.bmm(rows, grids[start:stop])
    if out is None:
        return torch.bmm(masks, cols.transpose(1, 2))
    torch.bmm(masks, cols.transpose(1, 2), out=out.view(k, h, w * c))
    return out


def rise_weighted_sum(
    seed: int, chunk: int, n: int, cells: int, p: float, size: tuple[int, int], weights: torch.Tensor,
    start: int = 0, block: int = 256,
) -> torch.Tensor:
    """Σ_i weights[i, t] · M_i over masks ``start:start + len(weights)`` of the chunk, as float32 (T, H, W),
    without making a mask: M_i = R_i G_i C_i^T (rows and columns of the interpolation matrices at the
    mask's shift), so Σ_i w_i M_i = [w_1 R_1 G_1 | ... | w_k R_k G_k] @ [C_1 | ... | C_k]^T, one
    matrix product of inner size k·s per block of ``block`` masks, summed in index order."""
    device = weights.device
    grids, shifts, wy, wx = _chunk(seed, chunk, n, cells, p, tuple(size), str(device))
    h, w = size
    k_all, t = weights.shape
    total = torch.zeros((t * h, w), dtype=torch.float32, device=device)
    for lo in range(0, k_all, block):
        a, b = start + lo, start + min(lo + block, k_all)
        k = b - a
        rows = wy[shifts[a:b, 0, None] + torch.arange(h, device=device)]  # (k, H, s)
        cols = wx[shifts[a:b, 1, None] + torch.arange(w, device=device)]  # (k, W, s)
        left = weights[lo : lo + k].float().T[:, :, None, None] * torch.bmm(rows, grids[a:b])  # (T, k, H, s)
        left = left.permute(0, 2, 1, 3).reshape(t * h, k * cells)
        total += left @ cols.permute(1, 0, 2).reshape(w, k * cells).T
    return total.view(t, h, w)


@lru_cache(maxsize=32)
def _chunk(seed: int, chunk: int, n: int, cells: int, p: float, size: tuple[int, int], device: str):
    """A chunk's draws and interpolation matrices as tensors on ``device``, cached (a worker builds a
    chunk's masks in many slices: one per batch, and again when reducing). Read-only by contract."""
    grids, shifts = draw_grids(seed, chunk, n, cells, p, size)
    ch, cw = cell_size(size, cells)
    wy = torch.from_numpy(interp_matrix(cells, (cells + 1) * ch)).float().to(device)
    wx = torch.from_numpy(interp_matrix(cells, (cells + 1) * cw)).float().to(device)
    return torch.from_numpy(grids).to(device), torch.from_numpy(shifts).to(device), wy, wx
