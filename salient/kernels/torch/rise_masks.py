"""RISE masks (Petsiuk et al. 2018) generated on the device from (seed, draw): a draw is one block of
masks drawn together from one random stream (the method's ``chunk`` parameter sets its size).

Mask i: a grid G ~ Bernoulli(p)^(s x s); cell = ceil(H/s), ceil(W/s); G is upsampled bilinearly to
((s+1)·cell_h, (s+1)·cell_w) with skimage's ``resize(order=1, mode="reflect")`` semantics
(pixel-centre coordinates, mirror boundary), then an H x W window is cropped at a uniform random
integer offset in [0, cell_h) x [0, cell_w). Upsampling is separable, so a mask is
``Wy[dy:dy+H] @ G @ Wx[dx:dx+W].T`` with fixed interpolation matrices: exact, and fast on any device.
Random draws come from numpy's PCG64 seeded with (seed, draw), so every device, executor and
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


def draw_grids(seed: int, draw: int, n: int, cells: int, p: float, size: tuple[int, int]):
    """The random part of a draw: grids (n, s, s) float32 and crop offsets (n, 2), from (seed, draw)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(draw)])))
    grids = (rng.random((n, cells, cells)) < p).astype(np.float32)
    ch, cw = cell_size(size, cells)
    dy = rng.integers(0, ch, size=n)
    dx = rng.integers(0, cw, size=n)
    return grids, np.stack([dy, dx], axis=1)


FACTOR_BLOCK = 128  # masks per cached block of factors


def rise_masks(
    seed: int, draw: int, n: int, cells: int, p: float, size: tuple[int, int],
    device: torch.device | str = "cpu", start: int = 0, stop: int | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masks ``start:stop`` of draw ``draw`` as float32 (stop - start, H, W) on ``device``.

    ``out``: write them into this contiguous (stop - start, H, W) tensor instead, or into a
    (stop - start, H, W, C) one: each mask value repeated over a last axis of C, the order in which a
    channels-last batch stores pixels (the same bits, made by the same product with every column of
    the horizontal interpolation repeated C times)."""
    stop = n if stop is None else stop
    h, w = size
    k = stop - start
    c = 1 if out is None or out.ndim == 3 else out.shape[-1]
    if out is None:
        out = torch.empty((k, h, w), dtype=torch.float32, device=device)
    elif tuple(out.shape[:3]) != (k, h, w) or out.ndim not in (3, 4) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({k}, {h}, {w}[, C]) tensor, got {tuple(out.shape)}")
    flat = out.view(k, h, w * c)
    for lo, a, b in _blocks(start, stop, n):
        rg, cols_t = _factors(seed, draw, n, cells, p, tuple(size), str(device), c, lo)
        for i in range(a, b):  # one product per mask, of its own cached factors: its bits never depend on
            torch.mm(rg[i], cols_t[i], out=flat[lo + i - start])  # which masks share the call (a batched one may)
    return out


def rise_weighted_sum(
    seed: int, draw: int, n: int, cells: int, p: float, size: tuple[int, int], weights: torch.Tensor,
    start: int = 0,
) -> torch.Tensor:
    """Σ_i weights[i, t] · M_i over masks ``start:start + len(weights)`` of the draw, as float32 (T, H, W),
    without making a mask: M_i = R_i G_i C_i^T (rows and columns of the interpolation matrices at the
    mask's shift), so Σ_i w_i M_i = [w_1 R_1 G_1 | ... | w_k R_k G_k] @ [C_1 | ... | C_k]^T, one
    matrix product of inner size k·s per block of masks, summed in index order."""
    h, w = size
    t = weights.shape[1]
    total = torch.zeros((t * h, w), dtype=torch.float32, device=weights.device)
    for lo, a, b in _blocks(start, start + weights.shape[0], n):
        rg, cols_t = _factors(seed, draw, n, cells, p, tuple(size), str(weights.device), 1, lo)
        wts = weights[lo + a - start : lo + b - start].float()  # (k, T)
        left = (wts.T[:, :, None, None] * rg[a:b]).permute(0, 2, 1, 3).reshape(t * h, (b - a) * cells)
        total += left @ cols_t[a:b].permute(2, 0, 1).reshape(w, (b - a) * cells).T
    return total.view(t, h, w)


def _blocks(start: int, stop: int, n: int):
    """(first mask of the block, start, stop within the block) for the factor blocks covering start:stop."""
    for lo in range(start - start % FACTOR_BLOCK, stop, FACTOR_BLOCK):
        yield lo, max(start, lo) - lo, min(stop, lo + FACTOR_BLOCK, n) - lo


@lru_cache(maxsize=8)
def _factors(seed: int, draw: int, n: int, cells: int, p: float, size: tuple[int, int], device: str, channels: int,
             lo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For masks lo:lo + FACTOR_BLOCK of a draw: R_i G_i as (k, H, s) and C_i^T as (k, s, W·channels),
    every column repeated ``channels`` times; M_i = (R_i G_i) @ C_i^T. Cached: a worker makes a block's
    masks a batch at a time, then their weighted sum. Read-only by contract."""
    if channels > 1:
        rg, cols_t = _factors(seed, draw, n, cells, p, size, device, 1, lo)
        return rg, cols_t.repeat_interleave(channels, dim=2)
    grids, shifts, wy, wx = _draw(seed, draw, n, cells, p, size, device)
    hi = min(lo + FACTOR_BLOCK, n)
    h, w = size
    rows = wy[shifts[lo:hi, 0, None] + torch.arange(h, device=device)]  # (k, H, s)
    cols = wx[shifts[lo:hi, 1, None] + torch.arange(w, device=device)]  # (k, W, s)
    return torch.bmm(rows, grids[lo:hi]), cols.transpose(1, 2).contiguous()


@lru_cache(maxsize=32)
def _draw(seed: int, draw: int, n: int, cells: int, p: float, size: tuple[int, int], device: str):
    """A draw's grids, shifts and interpolation matrices as tensors on ``device``, cached (a worker builds a
    draw's masks in many slices: one per batch, and again when reducing). Read-only by contract."""
    grids, shifts = draw_grids(seed, draw, n, cells, p, size)
    ch, cw = cell_size(size, cells)
    wy = torch.from_numpy(interp_matrix(cells, (cells + 1) * ch)).float().to(device)
    wx = torch.from_numpy(interp_matrix(cells, (cells + 1) * cw)).float().to(device)
    return torch.from_numpy(grids).to(device), torch.from_numpy(shifts).to(device), wy, wx
