"""BOREx-3D and GP-3D: the BOREx loop (:mod:`.borex`) on clips (C, T, H, W), in space and time.

For a clip of T frames of H x W (ALGORITHMS.md "BOREx", "Video"); everything not stated is as in 2-D:
- States (t, r, c, m, τ): t a frame, r, c pixel positions, m a half-side from ``sizes`` (224-px units,
  half-side round(m·s) pixels, s = min(H, W) / 224, as in 2-D), τ a half-length in frames from
  ``durations`` (default () = {max(1, ⌊T/8⌋), max(1, ⌊T/4⌋)}: {1, 2} at T = 8, {2, 4} at T = 16). A state
  costs two forward passes: I_keep keeps the box [t−τ, t+τ) x [r−m, r+m) x [c−m, c+m) (clipped to the clip)
  and fills the rest, I_del fills the box. Δ = f_c(I_keep) − f_c(I_del), score = tanh(gain·Δ) (5).
- GP coordinates: (t/u, r/s, c/s, m, τ/u) with u = T / 224 (time in 224-units of the clip's length, so that
  τ = T/8 is 28 units, as m = 30 is in space); Matern 3/2 ARD with 5 length scales initialised
  (ℓ_t, 12, 12, 10, ℓ_τ), ``lengthscale_t`` = (ℓ_t, ℓ_τ) = (12, 10), all bounded to ``bounds`` [1, 20], no
  output scale, noise 0.01, on the residuals y = score − P[t, r, c]; P is the prior (T, H, W) (a 2-D prior
  map is broadcast over t) normalised P·0.1 / mean|P| (``gp``: P = 0).
- Acquisition: UCB a = P + μ + κ·σ (κ = 10), the exact argmax over the candidate grid: every frame, rows
  and columns every ``clip_stride`` pixels (default 0 = max(1, round(min(H, W) / 28)): a 28 x 28 grid of
  positions; every pixel up to 41 px), every (m, τ), computed densely in chunks of one frame (memory:
  rows·cols·sizes·durations·n float64 per chunk); ties go to the first state in (t, r, c, m, τ) order.
  The recorded state gets Gaussian jitter with std (j_t, 1, 1, 0.5, j_τ) in GP units, ``jitter_t`` =
  (j_t, j_τ) = (1, 0.5); the clip is masked at the state itself. First state: the prior's argmax over
  (t, r, c) (row-major), the smallest m and τ; the centre (T//2, H//2, W//2) if P is constant.
- Final map: for each (m, τ), the mean of P + μ(·, ·, ·, m, τ) over the (2τ+1) x (2m+1)² window around each
  voxel (clipped, padding not counted: :func:`~salient.kernels.geometry.box_mean_3d`, summed-volume tables),
  averaged over all sizes and durations; (T, H, W) float32 per target, signed, not diverging (as 2-D).
q > 1 (kriging believer), ``refit_every``, ``warm_start``, ``fill`` and batched GPs of several members
(one batched likelihood fit per iteration) work as in 2-D; the acquisition runs per member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..kernels.geometry import box_mean_3d, boxes_3d
from ..queries import BoxQuery
from .bo import F64, Posterior, one_thread
from .bo.gp import SQRT3
from .bo.observe import observe

REF_SIDE = 224
CHUNK_ELEMS = 1 << 21  # float64 elements of one chunk's (states x observations) temporaries (16 MB)


def auto_durations(frames: int) -> tuple[int, ...]:
    """The default half-lengths τ in frames: {max(1, ⌊T/8⌋), max(1, ⌊T/4⌋)}, increasing, without repeats."""
    return tuple(sorted({max(1, frames // 8), max(1, frames // 4)}))


def auto_stride(size: tuple[int, int]) -> int:
    """The default candidate stride on clips: max(1, round(min(H, W) / 28))."""
    return max(1, round(min(size) / 28))


@dataclass
class ClipGeometry:
    """Pixel half-sides, frame half-lengths and the candidate axes (pixels and GP coordinates) of one clip shape."""

    shape: tuple[int, int, int]  # (T, H, W)
    scale: float  # s: pixels per GP unit in space
    tscale: float  # u: frames per GP unit in time
    half: tuple[int, ...]  # pixel half-sides, one per size
    dur: tuple[int, ...]  # half-lengths in frames
    sizes: torch.Tensor  # (K,) GP coordinate of each size
    durs: torch.Tensor  # (L,) GP coordinate of each duration
    rows: np.ndarray  # candidate pixel rows
    cols: np.ndarray

    @classmethod
    def of(cls, shape: tuple[int, int, int], opts: Any) -> ClipGeometry:
        t, h, w = shape
        scale, tscale = min(h, w) / REF_SIDE, t / REF_SIDE
        dur = tuple(int(d) for d in opts.durations) if opts.durations else auto_durations(t)
        stride = int(opts.clip_stride) or auto_stride((h, w))
        return cls(tuple(shape), scale, tscale, tuple(max(1, round(m * scale)) for m in opts.sizes), dur,
                   torch.tensor(opts.sizes, dtype=F64), torch.tensor(dur, dtype=F64) / tscale,
                   np.arange(0, h, stride), np.arange(0, w, stride))

    @property
    def stride(self) -> int:
        return int(self.rows[1] - self.rows[0]) if len(self.rows) > 1 else 1

    def coords(self, state: tuple[int, int, int, int, int]) -> np.ndarray:
        """GP coordinates (t/u, r/s, c/s, m, τ/u) of a state (t, r, c, size index, duration index)."""
        t, r, c, k, j = state
        return np.array([t / self.tscale, r / self.scale, c / self.scale, float(self.sizes[k]), float(self.durs[j])])


@dataclass
class ClipMember:
    """One (request, target) run on a clip: its normalised prior (T, H, W), first state, observations, GP."""

    req: int
    t: int
    prior: np.ndarray
    first: tuple[int, int, int]
    geo: ClipGeometry
    rng: np.random.Generator
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    post: Posterior | None = None

    @property
    def cand_prior(self) -> torch.Tensor:
        """P at the candidates (T, nr, nc)."""
        return torch.from_numpy(np.ascontiguousarray(self.prior[:, self.geo.rows][:, :, self.geo.cols]))


def refine_clip(reqs: list, members: list[ClipMember], opts: Any):
    """Generator: the BOREx-3D loop (module docstring) over all members; returns one (targets, T, H, W)
    float64 array per request. Members are built by :mod:`.borex` (prior, first state, random stream)."""
    ls0 = torch.tensor([[opts.lengthscale_t[0], *opts.lengthscale, opts.lengthscale_t[1]]] * len(members), dtype=F64)
    jitter = np.array([opts.jitter_t[0], *opts.jitter, opts.jitter_t[1]])
    ls = ls0.clone()
    plan = [_start(m, opts, ls0[0], jitter) for m in members]
    for it in range(1, opts.iterations + 1):
        queries = []
        for m, (states, _) in zip(members, plan, strict=True):
            st = np.array(states)
            boxes = boxes_3d(m.geo.shape, st[:, :3], np.array([m.geo.half[k] for k in st[:, 3]]),
                             np.array([m.geo.dur[j] for j in st[:, 4]]))
            target = (reqs[m.req].targets[m.t],)
            queries += [BoxQuery(reqs[m.req].item, target, boxes=tuple(map(tuple, boxes.tolist())), mode=mode,
                                 fill=opts.fill) for mode in ("keep", "delete")]
        results = yield queries
        with one_thread():
            ls, _ = observe(members, plan, results, opts, it, ls, ls0)
            if it < opts.iterations:
                plan = [_choose(m, m.post, opts, jitter) for m in members]
    with one_thread():
        out = [np.zeros((len(r.targets), *r.shape)) for r in reqs]
        for m in members:
            out[m.req][m.t] = final_map_3d(m.post, m.prior, m.geo)
    return out


def _start(m: ClipMember, opts: Any, ls: torch.Tensor, jitter: np.ndarray) -> tuple[list, list]:
    """The first iteration's states: the first state with the smallest size and duration, unjittered, then
    (q > 1) states chosen by the believer on a GP without observations."""
    first = (*m.first, 0, 0)
    rec = m.geo.coords(first)
    if opts.q == 1:
        return [first], [rec]
    post = Posterior.fit(torch.tensor(rec[None]), torch.zeros(1, dtype=F64), ls, opts.noise)
    states, recorded = _choose(m, post, opts, jitter, q=opts.q - 1)
    return [first, *states], [rec, *recorded]


def _choose(m: ClipMember, post: Posterior, opts: Any, jitter: np.ndarray, q: int | None = None
            ) -> tuple[list, list]:
    """q states by UCB, each recorded with jitter; later ones with σ conditioned on the earlier (believer)."""
    states, recorded = [], []
    prior = m.cand_prior
    for j in range(opts.q if q is None else q):
        ti, ri, ci, k, d = ucb_argmax_dense(post, m.geo, prior, opts.kappa)
        state = (ti, int(m.geo.rows[ri]), int(m.geo.cols[ci]), k, d)
        rec = m.geo.coords(state) + m.rng.standard_normal(5) * jitter
        states.append(state)
        recorded.append(rec)
        if j + 1 < (opts.q if q is None else q):
            post = post.believe(torch.tensor(rec))
    return states, recorded


def _axis(coords: torch.Tensor, xj: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """Squared scaled distances (len(coords), n) along one GP axis."""
    return ((coords[:, None] - xj[None, :]) / ls).square()


def _matern_(d2: torch.Tensor) -> torch.Tensor:
    """(1 + √3d)·exp(−√3d) of squared distances, in place."""
    s = d2.sqrt_().mul_(SQRT3)
    e = torch.neg(s).exp_()
    return s.add_(1.0).mul_(e)


def ucb_argmax_dense(post: Posterior, geo: ClipGeometry, prior: torch.Tensor, kappa: float
                     ) -> tuple[int, int, int, int, int]:
    """Argmax of P + μ + κσ over every candidate (frame, candidate row, candidate col, size, duration):
    indices (t, ri, ci, k, j); the first of equal maxima in that (C) order. ``prior`` (T, nr, nc) at the
    candidates. Dense, one frame at a time (``CHUNK_ELEMS`` bounds the temporaries further)."""
    x, ls = post.x, post.ls
    n = x.shape[0]
    nt = geo.shape[0]
    at = _axis(torch.arange(nt, dtype=F64) / geo.tscale, x[:, 0], ls[0])
    ar = _axis(torch.tensor(geo.rows, dtype=F64) / geo.scale, x[:, 1], ls[1])
    ac = _axis(torch.tensor(geo.cols, dtype=F64) / geo.scale, x[:, 2], ls[2])
    sd = (_axis(geo.sizes, x[:, 3], ls[3])[:, None] + _axis(geo.durs, x[:, 4], ls[4])[None]).view(-1, n)  # (K·L, n)
    nr, nc, nkl = len(ar), len(ac), len(sd)
    rcs = ar[:, None, None] + ac[None, :, None] + sd[None, None]  # (nr, nc, K·L, n): one frame's distances
    step = max(1, CHUNK_ELEMS // max(1, nc * nkl * n))
    best, where = -math.inf, (0, 0, 0, 0, 0)
    lt = post.chol_inv.T.contiguous()
    for t in range(nt):
        for r0 in range(0, nr, step):
            d2 = rcs[r0 : r0 + step] + at[t]
            kc = _matern_(d2).view(-1, n)
            v = kc @ lt
            value = kc @ post.alpha + kappa * (1.0 - (v * v).sum(-1)).clamp_min(0.0).sqrt()
            value = value.view(-1, nc, nkl) + prior[t, r0 : r0 + step, :, None]
            i = int(torch.argmax(value))  # the first maximum in C order
            top = float(value.flatten()[i])
            if top > best:
                ri, rem = divmod(i, nc * nkl)
                ci, kl = divmod(rem, nkl)
                best, where = top, (t, r0 + ri, ci, *divmod(kl, len(geo.durs)))
    return where


def mean_volume(post: Posterior, geo: ClipGeometry, k: int, j: int) -> np.ndarray:
    """Posterior mean μ(t, y, x, m_k, τ_j) at every frame and pixel: (T, H, W) float64."""
    x, ls = post.x, post.ls
    n = x.shape[0]
    t, h, w = geo.shape
    at = _axis(torch.arange(t, dtype=F64) / geo.tscale, x[:, 0], ls[0])
    ar = _axis(torch.arange(h, dtype=F64) / geo.scale, x[:, 1], ls[1])
    ac = _axis(torch.arange(w, dtype=F64) / geo.scale, x[:, 2], ls[2])
    const = ((geo.sizes[k] - x[:, 3]) / ls[3]).square() + ((geo.durs[j] - x[:, 4]) / ls[4]).square()
    acc = ac + const  # (W, n)
    out = torch.empty((t, h, w), dtype=F64)
    step = max(1, CHUNK_ELEMS // max(1, w * n))
    for f in range(t):
        for r0 in range(0, h, step):
            d2 = ar[r0 : r0 + step, None] + acc[None] + at[f]
            out[f, r0 : r0 + step] = _matern_(d2) @ post.alpha
    return out.numpy()


def final_map_3d(post: Posterior, prior: np.ndarray, geo: ClipGeometry) -> np.ndarray:
    """Mean over sizes and durations of the (2τ+1) x (2m+1)² box average of P + μ(·, ·, ·, m, τ)."""
    total = np.zeros(geo.shape)
    for k, half in enumerate(geo.half):
        for j, tau in enumerate(geo.dur):
            total += box_mean_3d(mean_volume(post, geo, k, j) + prior, tau, half)
    return total / (len(geo.half) * len(geo.dur))
