"""Exact UCB argmax over a grid of states (:func:`ucb_argmax`), for a :class:`.gp.Posterior` and a prior.

a(x) = P(x) + μ(x) + κ·σ(x) over every (row, column, size), exactly, without evaluating every state
(the authors predict all 200,704 states at 224 px each iteration). The grid (:class:`StateGrid`) is cut
into blocks of 16 x 16 positions per size; each block gets an upper bound of a (:func:`_block_bounds`:
from the distance range of each observation to the block and the exact a at its centre) and the exact
a at its centre; blocks whose bound is below the best centre are dropped, the others halved (8, then
4), and the surviving 4 x 4 blocks are evaluated state by state in decreasing order of their bound
until no bound reaches the best value. The bounds carry a margin above rounding, so the result is the
argmax of the dense computation (ties: the first state in the authors' candidate order, column, then
row, then size); a few per cent of the states are evaluated. The blocks of all members of a batch
form one list, so each step is a few tensor operations for all of them; a state's value is computed
by the same arithmetic in any batch (the same maps batched or one at a time; to the last bit as far
as batched matrix products allow: "Batched and alone" in :mod:`.gp`). Work runs in chunks (large
temporaries cost page faults). Everything is float64; callers run it on one intra-op thread
(:func:`.gp.one_thread`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .gp import F64, SQRT3, Posterior


@dataclass
class StateGrid:
    """Candidate states: rows × cols × sizes in GP coordinates, with the pixel of each row and column.

    The search cuts the grid into square blocks of ``top`` x ``top`` candidate positions per size and
    halves the surviving blocks down to ``leaf`` (see :func:`ucb_argmax`)."""

    rows: torch.Tensor  # (nr,) GP coordinate of each candidate row, increasing
    cols: torch.Tensor  # (nc,)
    sizes: torch.Tensor  # (K,)
    row_px: np.ndarray  # (nr,) pixel row of each candidate row
    col_px: np.ndarray
    top: int = 16
    leaf: int = 4

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.rows), len(self.cols), len(self.sizes)

    def levels(self) -> list[int]:
        out, t = [], self.top
        while t >= self.leaf:
            out.append(t)
            t //= 2
        return out

    def prior_pyramid(self, prior: torch.Tensor) -> dict[int, torch.Tensor]:
        """Max of the prior (..., nr, nc) on the candidates of each block, per block side:
        {T: (..., ⌈nr/T⌉, ⌈nc/T⌉)}."""
        p = prior.to(F64)
        flat = p.reshape(-1, 1, *p.shape[-2:])
        return {t: torch.nn.functional.max_pool2d(flat, t, t, ceil_mode=True).view(*p.shape[:-2], *(
            -(-d // t) for d in p.shape[-2:])) for t in self.levels()}


def ucb_argmax(post: Posterior, grid: StateGrid, prior: torch.Tensor, pyramid: dict[int, torch.Tensor],
               kappa: float) -> tuple[tuple[int, int, int], float, int] | list:
    """Exact argmax of P + μ + κσ over the grid: ((row index, col index, size index), value, states evaluated).

    ``prior`` (nr, nc) holds P at the candidate rows and columns, ``pyramid`` its block maxima. Blocks
    whose upper bound (:func:`_block_bounds`) is below the best value seen are dropped, the others are
    halved, down to leaf blocks whose states are evaluated in decreasing order of their bound until no
    bound reaches the best value; the first of equal maxima in the authors' order (column, row, size) wins.

    Batched: ``post`` of B members, ``prior`` (B, nr, nc), ``pyramid`` {T: (B, ., .)}: a list of B such
    results, each member's the same as its own call (every state's value is computed by the same
    arithmetic; the bounds only decide which states are evaluated). The blocks of all members form one
    list (member, first row, first col, size), so each step is a few tensor operations for all members."""
    if post.x.dim() == 2:
        batched = Posterior.stack([post])
        return ucb_argmax(batched, grid, prior[None], {t: p[None] for t, p in pyramid.items()}, kappa)[0]
    nb = post.x.shape[0]
    nr, nc, nk = grid.shape
    top = grid.top
    r0, c0, k = torch.meshgrid(torch.arange(0, nr, top), torch.arange(0, nc, top), torch.arange(nk), indexing="ij")
    one = torch.stack([r0.flatten(), c0.flatten(), k.flatten()], dim=1)
    blocks = torch.cat([torch.arange(nb).repeat_interleave(len(one))[:, None], one.repeat(nb, 1)], dim=1)
    best = torch.full((nb,), -math.inf, dtype=F64)
    for t in grid.levels():
        ub, centre = _block_bounds(post, grid, blocks, t, prior, pyramid[t], kappa)
        best = best.scatter_reduce(0, blocks[:, 0], centre, "amax")
        keep = ub >= best[blocks[:, 0]]
        blocks, ub = blocks[keep], ub[keep]
        if t > grid.leaf:
            h = t // 2
            offsets = torch.tensor([[0, 0, 0, 0], [0, h, 0, 0], [0, 0, h, 0], [0, h, h, 0]])
            blocks = (blocks[:, None, :] + offsets).view(-1, 4)
            blocks = blocks[(blocks[:, 1] < nr) & (blocks[:, 2] < nc)]
    return _evaluate_leaves(post, grid, prior, blocks, ub, kappa)


def _evaluate_leaves(post: Posterior, grid: StateGrid, prior: torch.Tensor, blocks: torch.Tensor, ub: torch.Tensor,
                     kappa: float) -> list[tuple[tuple[int, int, int], float, int]]:
    """Every state of each member's leaf blocks (M, 4), in decreasing order of their bounds ub (M,), chunk by
    chunk until the member's next bound is below its best value; ties to the smallest key (column, row,
    size). A member with fewer blocks left than a chunk repeats its last one (the same states again)."""
    nb = post.x.shape[0]
    nr, nc, nk = grid.shape
    order = torch.argsort(ub, descending=True, stable=True)
    order = order[torch.argsort(blocks[order, 0], stable=True)]  # by member, then decreasing bound
    blocks, ub = blocks[order], ub[order]
    count = torch.bincount(blocks[:, 0], minlength=nb)
    start = torch.cumsum(count, 0) - count
    x, ls = post.x, post.ls
    n = x.shape[1]
    ar = ((grid.rows[None, :, None] - x[:, None, :, 0]) / ls[:, None, None, 0]).square_().view(-1, n)  # (B·nr, n)
    ac = ((grid.cols[None, :, None] - x[:, None, :, 1]) / ls[:, None, None, 1]).square_().view(-1, n)
    am = ((grid.sizes[None, :, None] - x[:, None, :, 2]) / ls[:, None, None, 2]).square_().view(-1, n)
    best = torch.full((nb,), -math.inf, dtype=F64)
    best_key = torch.full((nb,), math.inf, dtype=F64)
    evaluated = torch.zeros(nb, dtype=torch.long)
    t = grid.leaf
    span = torch.arange(t)
    chunk = max(1, LEAF_CHUNK // (t * t))
    pos = 0
    while True:
        live = (pos < count) & (ub[(start + pos).clamp_max(len(ub) - 1)] >= best)
        if not live.any():
            break
        bi = torch.nonzero(live)[:, 0]
        left = (count[bi] - pos).clamp_max(chunk)
        idx = start[bi, None] + pos + torch.minimum(torch.arange(int(left.max())), left[:, None] - 1)
        part = blocks[idx]  # (A, C, 4)
        pos += chunk
        na, m = part.shape[:2]
        ri = (part[..., 1:2] + span).clamp_max(nr - 1)  # (A, C, T), the last index repeated at the border
        ci = (part[..., 2:3] + span).clamp_max(nc - 1)
        k = part[..., 3]
        d2 = (ar.index_select(0, (bi[:, None, None] * nr + ri).flatten()).view(na, m, t, 1, n)
              + ac.index_select(0, (bi[:, None, None] * nc + ci).flatten()).view(na, m, 1, t, n)
              ).add_(am.index_select(0, (bi[:, None] * nk + k).flatten()).view(na, m, 1, 1, n))
        kc = _matern_(d2.sqrt_()).view(na, -1, n)  # (A, C·T·T, n)
        v = torch.bmm(kc, post.chol_inv[bi].mT)
        mu = torch.stack([kc[j] @ post.alpha[b] for j, b in enumerate(bi.tolist())])  # as a single member's
        sd = (1.0 - (v * v).sum(-1)).clamp_min(0.0).sqrt()
        value = (mu + kappa * sd).view(na, m, t, t) + prior[bi[:, None, None, None], ri[..., None], ci[..., None, :]]
        evaluated[bi] += left * (t * t)
        top = value.flatten(1).amax(1)
        key = ((ci[:, :, None, :] * nr + ri[..., None]) * nk + k[..., None, None]).to(F64)
        kmin = torch.where(value == top[:, None, None, None], key, math.inf).flatten(1).amin(1)
        was, was_key = best[bi], best_key[bi]
        win = (top > was) | ((top == was) & (kmin < was_key))
        best[bi], best_key[bi] = torch.where(win, top, was), torch.where(win, kmin, was_key)
    out = []
    for b in range(nb):
        key = int(best_key[b])
        out.append((((key // nk) % nr, key // (nk * nr), key % nk), float(best[b]), int(evaluated[b])))
    return out


LEAF_CHUNK = 512  # states per member per exact-evaluation chunk
BLOCK_CHUNK = 1024  # blocks per bound chunk, members together (temporaries of a few MB at most)


def _matern_(d: torch.Tensor) -> torch.Tensor:
    """matern32 computed in place of d."""
    s = d.mul_(SQRT3)
    e = torch.neg(s).exp_()
    return s.add_(1.0).mul_(e)


def _block_bounds(post: Posterior, grid: StateGrid, blocks: torch.Tensor, t: int, prior: torch.Tensor,
                  block_max: torch.Tensor, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper bounds of a = P + μ + κσ on blocks (M, 4) of side t given by (member, first row, first col, size),
    and a at one state of each (its centre c): (M,) each. With k_j ∈ [k_min,j, k_max,j] on the block (from
    the distance range to observation j) and A = (K + noise·I)⁻¹: μ = Σ α_j·k_j ≤ Σ max(α_j·k_max,j,
    α_j·k_min,j); with s = kᵀAk (σ² = 1 − s), A ⪰ 0 and w = A·k(c) (wᵀk(c) = s(c)),
    s(x) ≥ s(c) + 2·wᵀ(k(x) − k(c)) ≥ 2·Σ_j min(w_j·k_min,j, w_j·k_max,j) − s(c), and s ≥ k_min,j² / (1 + noise)
    for every j (the variance given observation j alone); P ≤ the block's max. The blocks are sorted by member."""
    nb, n = post.x.shape[:2]
    nk = grid.shape[2]
    x, ls, a = post.x, post.ls, post.alpha
    (rc, rows), (cc, cols) = (_axis_terms(grid.rows, t, x[..., 0], ls[:, 0]),
                              _axis_terms(grid.cols, t, x[..., 1], ls[:, 1]))  # (3, B, nt, n)
    ntr, ntc = rows.shape[2], cols.shape[2]
    m2 = ((grid.sizes[None, :, None] - x[:, None, :, 2]) / ls[:, None, None, 2]).square_()  # (B, K, n)
    # 3·d² (Matern's √3 folded in): rows and sizes summed once per member, (3, B·nt·K, n), and columns
    rows_sizes = (rows[:, :, :, None, :] + m2[None, :, None, :, :]).mul_(3.0).view(3, -1, n)
    cols = cols.mul(3.0).view(3, -1, n)
    rhs = torch.cat([post.chol_inv.mT, a[..., None]], dim=-1)  # k(c) @ rhs = (L⁻¹k(c), μ(c))
    a_pos, a_neg = a.clamp_min(0.0), a.clamp_max(0.0)
    margin = 1e-10 * (1.0 + kappa + a.abs().sum(1) + block_max.abs().flatten(1).amax(1))
    ub = torch.empty(len(blocks), dtype=F64)
    centre = torch.empty(len(blocks), dtype=F64)
    for s0 in range(0, len(blocks), BLOCK_CHUNK):
        b = blocks[s0 : s0 + BLOCK_CHUNK]
        mem, tr, tc, k = b[:, 0], b[:, 1] // t, b[:, 2] // t, b[:, 3]
        sd = rows_sizes.index_select(1, (mem * ntr + tr) * nk + k).add_(cols.index_select(1, mem * ntc + tc)).sqrt_()
        e = torch.neg(sd).exp_()
        kmax, kmin, kc = e.addcmul_(sd, e)  # (1 + √3d)·exp(−√3d), (3, m, n)
        vm = torch.empty((len(b), n + 1), dtype=F64)
        w = torch.empty((len(b), n), dtype=F64)
        mu_ub = torch.empty(len(b), dtype=F64)
        i = 0
        for j, c in zip(*(v.tolist() for v in torch.unique_consecutive(mem, return_counts=True)), strict=True):
            seg = slice(i, i + c)
            torch.mm(kc[seg], rhs[j], out=vm[seg])
            torch.mm(vm[seg, :n], post.chol_inv[j], out=w[seg])  # A·k(c)
            mu_ub[seg] = kmax[seg] @ a_pos[j] + kmin[seg] @ a_neg[j]
            i += c
        v, mu_c = vm[:, :n], vm[:, n]
        s = (v * v).sum(-1)
        lin = (w.clamp_min(0.0) * kmin).sum(-1) + (w.clamp_max(0.0) * kmax).sum(-1)
        s_lb = torch.maximum(2.0 * lin - s, kmin.square_().amax(-1) / (1.0 + post.noise))
        ub[s0 : s0 + len(b)] = (block_max[mem, tr, tc] + mu_ub
                                + kappa * (1.0 - s_lb + 1e-12).clamp_min(0.0).sqrt() + margin[mem])
        centre[s0 : s0 + len(b)] = prior[mem, rc[tr], cc[tc]] + mu_c + kappa * (1.0 - s).clamp_min(0.0).sqrt()
    return ub, centre


def _axis_terms(coords: torch.Tensor, t: int, xj: torch.Tensor, ls: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per run of t consecutive candidates along one axis: the index of its centre (nt,) and the squared
    scaled distances (3, B, nt, n) to each observation xj (B, n) of each member (length scale ls (B,)):
    nearest point, farthest point, centre."""
    n = len(coords)
    first = torch.arange(0, n, t)
    last = (first + t).clamp_max(n) - 1
    centre = torch.minimum(first + t // 2, last)
    xj, ls = xj[:, None, :], ls[:, None, None]
    lo, hi = (coords[first, None] - xj) / ls, (coords[last, None] - xj) / ls
    near = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
    far = torch.maximum(lo.abs(), hi.abs())
    mid = (coords[centre, None] - xj) / ls
    return centre, torch.stack([near, far, mid]).square_()
