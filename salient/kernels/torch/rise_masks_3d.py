"""RISE-3D masks for clips, on the device from (seed, draw): the space-time form of :mod:`.rise_masks`.

Mask i: a grid G ~ Bernoulli(p)^(s_t x s x s); cells ceil(T/s_t), ceil(H/s), ceil(W/s); G is upsampled
trilinearly to ((s_t+1)·cell_t, (s+1)·cell_h, (s+1)·cell_w) with skimage's ``resize(order=1,
mode="reflect")`` semantics (pixel-centre coordinates, mirror boundary, per axis), then a T x H x W
window is cropped at a uniform random integer offset in [0, cell_t) x [0, cell_h) x [0, cell_w).
Trilinear upsampling is separable: M[t, y, x] = Σ_abc G[a, b, c] · Wt[dt+t, a] · Wy[dy+y, b] · Wx[dx+x, c]
with the fixed interpolation matrices of :func:`.rise_masks.interp_matrix`. Random draws come from
numpy's PCG64 seeded with (seed, draw, 3) (a stream apart from the 2-D masks'), so every device,
executor and worker count draws the same masks.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .rise_masks import FACTOR_BLOCK, _blocks, interp_matrix

STREAM = 3  # the third word of the 3-D masks' seed sequence (the 2-D ones use (seed, draw))


def cell_size_3d(shape: tuple[int, int, int], cells: int, cells_t: int) -> tuple[int, int, int]:
    """(ceil(T/s_t), ceil(H/s), ceil(W/s))."""
    t, h, w = shape
    return math.ceil(t / cells_t), math.ceil(h / cells), math.ceil(w / cells)


def draw_grids_3d(seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, shape: tuple[int, int, int]):
    """The random part of a draw: grids (n, s_t, s, s) float32 and crop offsets (n, 3) as (dt, dy, dx)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(draw), STREAM])))
    grids = (rng.random((n, cells_t, cells, cells)) < p).astype(np.float32)
    shifts = [rng.integers(0, c, size=n) for c in cell_size_3d(shape, cells, cells_t)]
    return grids, np.stack(shifts, axis=1)


def rise_masks_3d(
    seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, shape: tuple[int, int, int],
    device: torch.device | str = "cpu", start: int = 0, stop: int | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masks ``start:stop`` of draw ``draw`` as float32 (stop - start, T, H, W) on ``device`` (into ``out``,
    a contiguous tensor of that shape, if given). Each mask is made by its own products of its own
    cached factors, (Wt_i @ ((Wy_i G_i) Wx_i^T)), so its bits never depend on which masks share a call."""
    stop = n if stop is None else stop
    t, h, w = shape
    k = stop - start
    if out is None:
        out = torch.empty((k, t, h, w), dtype=torch.float32, device=device)
    elif tuple(out.shape) != (k, t, h, w) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({k}, {t}, {h}, {w}) tensor, got {tuple(out.shape)}")
    flat = out.view(k, t, h * w)
    for lo, a, b in _blocks(start, stop, n):
        rt, rg, cols_t = _factors_3d(seed, draw, n, cells, cells_t, p, tuple(shape), str(device), lo)
        for i in range(a, b):
            space = torch.matmul(rg[i], cols_t[i]).view(cells_t, h * w)  # (s_t, H·W): each temporal slice in space
            torch.mm(rt[i], space, out=flat[lo + i - start])
    return out


def rise_weighted_sum_3d(
    seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, shape: tuple[int, int, int],
    weights: torch.Tensor, start: int = 0,
) -> torch.Tensor:
    """Σ_i weights[i, k] · M_i over masks ``start:start + len(weights)`` of the draw, as float32 (K, T, H, W),
    without making a mask: with L_i[t] = Wy_i (Σ_a Wt_i[t, a] G_i[a]) (H x s), M_i[t] = L_i[t] C_i^T, so
    Σ_i w_i M_i[t] = [w_1 L_1[t] | ... | w_k L_k[t]] @ [C_1 | ... | C_k]^T: one matrix product of inner
    size k·s for all (K, T) rows of a block of masks, blocks summed in index order."""
    t, h, w = shape
    nt = weights.shape[1]
    total = torch.zeros((nt * t * h, w), dtype=torch.float32, device=weights.device)
    for lo, a, b in _blocks(start, start + weights.shape[0], n):
        _, _, cols_t = _factors_3d(seed, draw, n, cells, cells_t, p, tuple(shape), str(weights.device), lo)
        lt = _left_3d(seed, draw, n, cells, cells_t, p, tuple(shape), str(weights.device), lo)  # (k, T, H, s)
        wts = weights[lo + a - start : lo + b - start].float()  # (k, K)
        left = (wts.T[:, :, None, None, None] * lt[a:b]).permute(0, 2, 3, 1, 4).reshape(nt * t * h, (b - a) * cells)
        total += left @ cols_t[a:b].permute(2, 0, 1).reshape(w, (b - a) * cells).T
    return total.view(nt, t, h, w)


@lru_cache(maxsize=8)
def _factors_3d(seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, shape: tuple[int, int, int],
                device: str, lo: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For masks lo:lo + FACTOR_BLOCK of a draw: Wt_i rows at the mask's shift (k, T, s_t), Wy_i G_i per
    temporal slice (k, s_t, H, s) and C_i^T (k, s, W). Cached (a worker makes a block's masks a batch at a
    time, then their weighted sum). Read-only by contract."""
    grids, shifts, wt, wy, wx = _draw_3d(seed, draw, n, cells, cells_t, p, shape, device)
    hi = min(lo + FACTOR_BLOCK, n)
    t, h, w = shape
    rt = wt[shifts[lo:hi, 0, None] + torch.arange(t, device=device)]  # (k, T, s_t)
    rows = wy[shifts[lo:hi, 1, None] + torch.arange(h, device=device)]  # (k, H, s)
    cols = wx[shifts[lo:hi, 2, None] + torch.arange(w, device=device)]  # (k, W, s)
    rg = torch.matmul(rows[:, None], grids[lo:hi])  # (k, s_t, H, s)
    return rt.contiguous(), rg.contiguous(), cols.transpose(1, 2).contiguous()


@lru_cache(maxsize=4)
def _left_3d(seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, shape: tuple[int, int, int],
             device: str, lo: int) -> torch.Tensor:
    """L_i[t] = Σ_a Wt_i[t, a] · (Wy_i G_i[a]) for the block's masks, (k, T, H, s), made for the whole block
    at once (its bits do not depend on the range a query asks for). Read-only by contract."""
    rt, rg, _ = _factors_3d(seed, draw, n, cells, cells_t, p, shape, device, lo)
    k, st, h, s = rg.shape
    return torch.bmm(rt, rg.view(k, st, h * s)).view(k, rt.shape[1], h, s)


@lru_cache(maxsize=32)
def _draw_3d(seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, shape: tuple[int, int, int],
             device: str):
    """A draw's grids, shifts and interpolation matrices (t, y, x) as tensors on ``device``, cached."""
    grids, shifts = draw_grids_3d(seed, draw, n, cells, cells_t, p, shape)
    ct, ch, cw = cell_size_3d(shape, cells, cells_t)
    mats = [torch.from_numpy(interp_matrix(c, (c + 1) * m)).float().to(device)
            for c, m in ((cells_t, ct), (cells, ch), (cells, cw))]
    return (torch.from_numpy(grids).to(device), torch.from_numpy(shifts).to(device), *mats)
