"""BOREx (Kikuchi, Uchida, Waga, Suenaga; ACCV 2022): refine any saliency map with Bayesian
optimisation; and GP saliency without a prior (Mokuwe et al. 2020), method ``gp``. On a clip
(``req.frames`` > 0) both run in space and time, BOREx-3D / GP-3D, as :mod:`.borex3d` states.

The algorithm of the authors' code (SoftwareFoundationGroupAtKyotoU/BOREx), with their defaults,
stated for a 224 x 224 input (ALGORITHMS.md):
- Prior P (any map: a registered method run first, RISE with 100 masks, 8 cells, p = 0.3 by default,
  as theirs; or a user map), normalised P <- P·0.1 / mean|P|. Defined for degenerate priors: an
  all-zero prior stays 0 (that is ``gp``), a constant one becomes ±0.1 everywhere, and both start
  at the centre (no location to prefer). A prior with NaN or infinite values, or of another size
  than the input, is a one-line SalientError.
- States (r, c, m): r, c pixel positions, m a half-side in {30, 45, 60, 75}. A state costs two
  forward passes: I_keep keeps the square [r−m, r+m) x [c−m, c+m) (clipped) and fills the rest,
  I_del fills the square (fill 0 by default). Δ = f_c(I_keep) − f_c(I_del), score = tanh(5·Δ)
  (the authors' 2·(sigmoid(10Δ) − 0.5); ``gain=0`` gives Δ itself).
- A GP (:mod:`.bo.gp`: Matern 3/2 ARD, ℓ initialised (12, 12, 10), bounded to [1, 20], no
  output scale, noise 0.01) on the residuals y = score − P[r, c], refitted by maximum marginal
  likelihood after every observation. Next state: argmax over every (r, c, m) of
  P + μ + 10·σ; the GP records it with Gaussian jitter (std 1, 1, 0.5), the image is masked at the
  state itself. First state: the argmax of P with m = 30 (``gp``, or a constant prior: the centre).
- Final map: for each m, the mean of P + μ(·, ·, m) over the (2m+1)² window around each pixel
  (clipped at the border, AvgPool2d with count_include_pad=False), averaged over the sizes. Signed
  (values may be negative) but not diverging: the sign does not say support vs opposition (the GP
  mean of tanh(5Δ) for 60-px windows on a 224 input is negative almost everywhere), only the order
  of the values does, so the map is shown on the relative (min-max) scale of unsigned maps.

Other input sizes: positions and half-sides scale with s = min(H, W) / 224 (half-side
round(m·s) pixels); the GP works in 224-pixel units (r/s, c/s, m), so length scales, bounds and
jitter keep their meaning.

Where we differ from the authors (each choice is a parameter):
- the length scales are warm-started from the previous fit (``warm_start=True``); scikit-learn,
  which they use, restarts every fit from (12, 12, 10) (``warm_start=False``). Our optimiser is a
  projected BFGS in log ℓ, not L-BFGS-B itself (:mod:`.bo.optimise`); with ``warm_start=False`` the states
  match a transcription of the authors' loop with scikit-learn state for state (a test).
- the jitter comes from a generator seeded by (request seed, target index), not numpy's global one.
- the argmax is exact but evaluates only blocks of states whose upper bound can win (:mod:`.bo.search`);
  ties go to the first state in the authors' order (column, row, size), as their np.argmax.
- a constant non-zero prior starts at the centre (their np.argmax would start at pixel (0, 0)).
Options of ours, off by default: ``q`` states per iteration (q > 1: states 2..q chosen by the
kriging believer, conditioning σ on the pending states so they do not pile up; 2·q forward passes
per iteration), ``stride`` (candidate rows and columns every ``stride`` pixels), ``refit_every`` k
iterations (and always at the last), ``fill`` ("zero", "blur", "black", "mean", a number).

Design: a method is a generator per request, so the engine batches the keep/delete queries of many
items into full forward batches, but each request fits its own GP. ``borex_batch(reqs, ...)`` is a
generator over several requests that fits all their GPs as one batched gpytorch GP
(``batch_shape=(B,)``) and runs their acquisitions as one batched search per iteration; every
member (request, target) keeps its own seed, data and optimiser state, so it returns the same maps
as one-at-a-time runs (a test checks it). Nothing is shared between calls: no module state. The
scheduler's tasks hold one item each, so :func:`run_batch` drives it with a synchronous
``evaluate(queries)`` (an executor's, items held; benchmarks/borex_quality.py spreads each round
over all workers), optionally as several batched GPs whose GP work overlaps the others' forward
passes (``groups``, :func:`drive_overlapped`). The GP arithmetic runs on one
CPU thread (``torch.set_num_threads(1)`` between two yields, restored before yielding; the
engine's workers set their own): its tensors are small and several threads only contend.
Results record the prior and its parameters (``prior``, ``prior.<name>``), the fitted length
scales, and the engine counts the forward passes: the prior's plus 2·q·iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import SalientError
from ..kernels import check_fill
from ..kernels.geometry import box_mean, squares
from ..queries import BoxQuery
from ..saliency import Maps, Saliency
from .base import Request, get_method, register
from .bo import F64, Posterior, StateGrid, fit_lengthscales, mean_grid, one_thread, ucb_argmax
from .bo.observe import observe
from .borex3d import ClipGeometry, ClipMember, refine_clip
from .drive import drive, drive_overlapped, lockstep

REF_SIDE = 224
RISE_PRIOR = {"n_masks": 100, "cells": 8, "p": 0.3}  # the authors' prior (SaliencyMap.generate)
SIZES = (30.0, 45.0, 60.0, 75.0)


@dataclass(frozen=True)
class Options:
    """The parameters shared by ``borex`` and ``gp`` (see their docstrings)."""

    iterations: int
    sizes: tuple
    kappa: float
    gain: float
    jitter: tuple
    lengthscale: tuple
    bounds: tuple
    noise: float
    magnification: float
    q: int
    stride: int
    refit_every: int
    warm_start: bool
    fill: Any
    durations: tuple = ()  # clips only (BOREx-3D, :mod:`.borex3d`)
    clip_stride: int = 0
    lengthscale_t: tuple = (12.0, 10.0)
    jitter_t: tuple = (1.0, 0.5)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SalientError(f"borex: {what}")

        need(int(self.iterations) >= 1, f"iterations must be >= 1, got {self.iterations}")
        need(int(self.q) >= 1 and int(self.stride) >= 1 and int(self.refit_every) >= 1,
             f"q, stride and refit_every must be >= 1, got {self.q}, {self.stride}, {self.refit_every}")
        need(len(self.sizes) >= 1 and min(self.sizes) > 0, f"sizes must be positive half-sides, got {self.sizes}")
        need(len(self.jitter) == 3 and min(self.jitter) >= 0, f"jitter must be 3 values >= 0, got {self.jitter}")
        need(len(self.bounds) == 2 and 0 < self.bounds[0] <= self.bounds[1], f"bad bounds {self.bounds}")
        need(len(self.lengthscale) == 3 and all(self.bounds[0] <= v <= self.bounds[1] for v in self.lengthscale),
             f"lengthscale must be 3 values within bounds {self.bounds}, got {self.lengthscale}")
        need(self.noise > 0 and self.magnification > 0 and self.kappa >= 0 and self.gain >= 0,
             "noise and magnification must be > 0, kappa and gain >= 0")
        need(all(d >= 1 and d == int(d) for d in self.durations),
             f"durations must be whole numbers of frames >= 1, got {self.durations}")
        need(int(self.clip_stride) >= 0, f"clip_stride must be >= 0 (0: automatic), got {self.clip_stride}")
        need(len(self.jitter_t) == 2 and min(self.jitter_t) >= 0,
             f"jitter_t must be 2 values >= 0, got {self.jitter_t}")
        need(len(self.lengthscale_t) == 2 and all(self.bounds[0] <= v <= self.bounds[1] for v in self.lengthscale_t),
             f"lengthscale_t must be 2 values within bounds {self.bounds}, got {self.lengthscale_t}")
        try:
            object.__setattr__(self, "fill", check_fill(self.fill))
        except ValueError as e:
            raise SalientError(f"borex: {e}") from None


@register("borex", signed=True, diverging=False, nested={"prior": {"rise": RISE_PRIOR}})
def borex(
    req: Request, prior: Any = "rise", iterations: int = 50, sizes: tuple = SIZES, kappa: float = 10.0,
    gain: float = 5.0, jitter: tuple = (1.0, 1.0, 0.5), lengthscale: tuple = (12.0, 12.0, 10.0),
    bounds: tuple = (1.0, 20.0), noise: float = 0.01, magnification: float = 0.1, q: int = 1, stride: int = 1,
    refit_every: int = 1, warm_start: bool = True, fill: str = "zero", durations: tuple = (), clip_stride: int = 0,
    lengthscale_t: tuple = (12.0, 10.0), jitter_t: tuple = (1.0, 0.5), **prior_params: Any,
):
    """BOREx: refine a prior map by Bayesian optimisation of keep/delete box scores (2 passes per state).

    ``prior``: a registered method's name (its parameters as ``prior.<name>``; RISE defaults to the
    authors' 100 masks, 8 cells, p = 0.3), or a map (H, W) / (T, H, W) (numpy, torch, Saliency).
    Costs the prior's passes plus 2·q·iterations. See the module docstring for the algorithm. The map is
    signed, not diverging: higher means more salient, but its sign does not mean support vs opposition.
    On a clip (BOREx-3D, :mod:`.borex3d`; maps (T, H, W)): states (t, r, c, m, τ) with τ from ``durations``
    (frames; () = {max(1, ⌊T/8⌋), max(1, ⌊T/4⌋)}), candidates every ``clip_stride`` pixels (0 = max(1,
    round(min(H, W) / 28))) in every frame, ``lengthscale_t`` (ℓ_t, ℓ_τ) = (12, 10) and ``jitter_t``
    (1, 0.5) for the time axes; ``stride`` is the images' (refused on a clip). The prior may be (T, H, W) or (H, W)."""
    opts = Options(iterations, tuple(sizes), kappa, gain, tuple(jitter), tuple(lengthscale), tuple(bounds), noise,
                   magnification, q, stride, refit_every, warm_start, fill, tuple(durations), clip_stride,
                   tuple(lengthscale_t), tuple(jitter_t))
    (maps,) = yield from _refine([req], [prior], _prior_params(prior, prior_params), opts)
    return maps


@register("gp", signed=True, diverging=False)
def gp(
    req: Request, iterations: int = 50, sizes: tuple = SIZES, kappa: float = 10.0, gain: float = 5.0,
    jitter: tuple = (1.0, 1.0, 0.5), lengthscale: tuple = (12.0, 12.0, 10.0), bounds: tuple = (1.0, 20.0),
    noise: float = 0.01, q: int = 1, stride: int = 1, refit_every: int = 1, warm_start: bool = True,
    fill: str = "zero", durations: tuple = (), clip_stride: int = 0, lengthscale_t: tuple = (12.0, 10.0),
    jitter_t: tuple = (1.0, 0.5),
):
    """GP saliency (Mokuwe et al. 2020): BOREx with a zero prior, starting at the centre.

    The map is signed, not diverging, as BOREx's: higher means more salient, but its sign does not mean
    support vs opposition. On a clip: GP-3D (maps (T, H, W), first state at the clip's centre; the clip
    parameters as borex's)."""
    opts = Options(iterations, tuple(sizes), kappa, gain, tuple(jitter), tuple(lengthscale), tuple(bounds), noise,
                   1.0, q, stride, refit_every, warm_start, fill, tuple(durations), clip_stride, tuple(lengthscale_t),
                   tuple(jitter_t))
    (maps,) = yield from _refine([req], [None], {}, opts)
    return maps


def borex_batch(reqs: Sequence[Request], method: str = "borex", **params: Any) -> Generator[list, list, list]:
    """Generator: ``method`` ("borex" or "gp") for several requests with one batched GP per iteration.

    Parameters as the method's; for borex, ``prior`` may also be a sequence of maps, one per
    request. Returns one (T, H, W) map array per request, equal to one-at-a-time runs."""
    if method not in ("borex", "gp"):
        raise SalientError(f"borex_batch runs borex or gp, not {method!r}")
    prior = params.pop("prior", "rise") if method == "borex" else None
    per_request = not isinstance(prior, str) and prior is not None and _is_sequence_of_maps(prior, len(reqs))
    checked = get_method(method).check_params({**params, **({"prior": prior} if method == "borex" else {})})
    nested = {k: v for k, v in checked.items() if k.startswith("prior.")}
    names = list(Options.__dataclass_fields__)
    opts = Options(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in checked.items() if k in names},
                   **({"magnification": 1.0} if method == "gp" else {}))
    priors = list(prior) if per_request else [prior] * len(reqs)
    return (yield from _refine(list(reqs), priors, _prior_params(prior, nested) if method == "borex" else {}, opts))


def run_batch(evaluate: Callable[[list], list], reqs: Sequence[Request], method: str = "borex", groups: int = 1,
              **params: Any) -> list[np.ndarray]:
    """:func:`borex_batch` driven by a synchronous ``evaluate(queries) -> results``, e.g. a local
    executor's ``evaluate`` with the requests' items held.

    ``groups`` > 1 splits the requests into that many batched GPs (contiguous, near-equal) whose GP
    work overlaps the forward passes of the others (:func:`drive_overlapped`: ``evaluate`` then runs
    in a helper thread, one call at a time). It pays where the GP would otherwise leave cores idle;
    on a CPU whose cores all run forward passes, the GP competes with them instead. The maps are the
    same for any ``groups``."""
    if groups <= 1 or len(reqs) < 2:
        return drive(borex_batch(reqs, method, **params), evaluate)
    prior = params.pop("prior", "rise") if method == "borex" else None
    cuts = np.linspace(0, len(reqs), min(groups, len(reqs)) + 1).round().astype(int)
    per_request = not isinstance(prior, str) and prior is not None and _is_sequence_of_maps(prior, len(reqs))
    gens = [borex_batch(reqs[a:b], method, **params, **(
            {"prior": list(prior[a:b]) if per_request else prior} if method == "borex" else {}))
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return [maps for part in drive_overlapped(gens, evaluate) for maps in part]


def _is_sequence_of_maps(prior: Any, n: int) -> bool:
    if isinstance(prior, (list, tuple)) and len(prior) == n and not np.isscalar(prior[0]):
        return all(not isinstance(p, str) for p in prior)
    return False


def _prior_params(prior: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The checked parameters of the prior method (keys without the ``prior.`` prefix)."""
    bad = [k for k in given if not k.startswith("prior.")]
    if bad:
        raise SalientError(f"borex: unknown parameter(s) {', '.join(sorted(bad))}")
    name = prior if isinstance(prior, str) else None
    checked = get_method("borex").check_nested("prior", name, {k[6:]: v for k, v in given.items()})
    return {k[6:]: v for k, v in checked.items()}


def prior_maps(req: Request, value: Any) -> np.ndarray:
    """A user prior as float64 (T, H, W) for the request's targets; one-line errors for bad input."""
    if isinstance(value, Saliency):
        value = value.map
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SalientError(f"borex: prior must be a method name or a map, got {type(value).__name__}") from None
    t, shape = len(req.targets), tuple(req.shape)
    if arr.ndim == len(shape) + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if req.frames and arr.shape == tuple(req.size):  # a 2-D prior on a clip: the same map in every frame
        arr = np.broadcast_to(arr, shape)
    if arr.shape == shape:
        arr = np.broadcast_to(arr, (t, *shape))
    if arr.shape != (t, *shape):
        raise SalientError(f"borex: prior of shape {arr.shape} does not match the input {shape} "
                           f"({t} target(s))")
    if not np.isfinite(arr).all():
        raise SalientError("borex: the prior has NaN or infinite values")
    return arr


def normalise_prior(p: np.ndarray, magnification: float = 0.1) -> np.ndarray:
    """P · magnification / mean|P| (the authors'); an all-zero prior stays zero."""
    scale = np.abs(p).mean()
    return p * (magnification / scale) if scale > 0 else np.zeros_like(p)


def first_state(p: np.ndarray) -> tuple[int, ...]:
    """The first (row, col) ((frame, row, col) on a clip): the prior's first maximum in row-major order;
    the centre if P is constant."""
    if p.max() == p.min():
        return tuple(s // 2 for s in p.shape)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(p)), p.shape))


@dataclass
class Geometry:
    """Pixel half-sides and the candidate grid for one input size."""

    scale: float
    half: tuple[int, ...]
    grid: StateGrid

    @classmethod
    def of(cls, size: tuple[int, int], opts: Options) -> Geometry:
        h, w = size
        scale = min(h, w) / REF_SIDE
        half = tuple(max(1, round(m * scale)) for m in opts.sizes)
        rows, cols = np.arange(0, h, opts.stride), np.arange(0, w, opts.stride)
        grid = StateGrid(torch.tensor(rows / scale, dtype=F64), torch.tensor(cols / scale, dtype=F64),
                         torch.tensor(opts.sizes, dtype=F64), rows, cols)
        return cls(scale, half, grid)

    def coords(self, r: int, c: int, k: int) -> np.ndarray:
        """GP coordinates of a state."""
        return np.array([r / self.scale, c / self.scale, float(self.grid.sizes[k])])


@dataclass
class Member:
    """One (request, target) run: its prior, observations, random stream and current GP."""

    req: int
    t: int
    prior: np.ndarray  # (H, W) normalised
    geo: Geometry
    rng: np.random.Generator
    cand_prior: torch.Tensor = None
    pyramid: dict = None
    x: list = None
    y: list = None
    post: Posterior | None = None

    def __post_init__(self) -> None:
        p = torch.from_numpy(np.ascontiguousarray(self.prior))
        self.cand_prior = p[self.geo.grid.row_px][:, self.geo.grid.col_px]
        self.pyramid = self.geo.grid.prior_pyramid(self.cand_prior)
        self.x, self.y = [], []


def _refine(reqs: list[Request], priors: list[Any], prior_params: dict[str, Any], opts: Options,
            trace: list | None = None):
    """Generator: the shared BOREx / GP loop over all (request, target) members; returns Maps per request.
    ``trace`` (tests) receives (iteration, member, (row, col, size index), recorded GP coordinates)."""
    names = {i: p for i, p in enumerate(priors) if isinstance(p, str)}
    gens = {i: get_method(p).fn(reqs[i], **prior_params) for i, p in names.items()}
    computed = dict(zip(gens, (yield from lockstep(list(gens.values()))), strict=True))
    if any(r.frames for r in reqs):
        return (yield from _refine_clips(reqs, priors, computed, prior_params, opts))
    members: list[Member] = _members(reqs, priors, computed, opts, lambda req: Geometry.of(req.size, opts), Member)
    ls0 = torch.tensor([opts.lengthscale] * len(members), dtype=F64)
    ls = ls0.clone()
    groups = _groups(members)
    with one_thread():
        plan = [_start(m, opts) for m in members]
    for it in range(1, opts.iterations + 1):
        queries = []
        for m, (states, _) in zip(members, plan, strict=True):
            boxes = tuple(map(tuple, squares(reqs[m.req].size, np.array([s[:2] for s in states]),
                                             np.array([m.geo.half[s[2]] for s in states])).tolist()))
            target = (reqs[m.req].targets[m.t],)
            queries += [BoxQuery(reqs[m.req].item, target, boxes=boxes, mode=mode, fill=opts.fill)
                        for mode in ("keep", "delete")]
        results = yield queries
        with one_thread():
            ls, post = observe(members, plan, results, opts, it, ls, ls0, trace, fit_lengthscales)
            if it < opts.iterations:
                plan = [None] * len(members)
                for idx, grid, prior, pyramid in groups:
                    chosen = _choose([members[b] for b in idx.tolist()], post.take(idx), grid, prior, pyramid, opts)
                    for b, choice in zip(idx.tolist(), chosen, strict=True):
                        plan[b] = choice
    with one_thread():
        out = [np.zeros((len(r.targets), *r.size)) for r in reqs]
        for m in members:
            out[m.req][m.t] = final_map(m.post, m.prior, m.geo)
    return [Maps(o, _record(priors[i], prior_params, [m for m in members if m.req == i]))
            for i, o in enumerate(out)]


def _refine_clips(reqs: list[Request], priors: list[Any], computed: dict[int, Any], prior_params: dict[str, Any],
                  opts: Options):
    """Generator: BOREx-3D / GP-3D (:mod:`.borex3d`) for requests that are all clips; returns Maps per request."""
    if not all(r.frames for r in reqs):
        raise SalientError("borex: one batch cannot mix clips and images")
    if opts.stride != 1:
        raise SalientError(f"borex: stride is the images' candidate stride; on a clip use clip_stride, got stride "
                           f"{opts.stride}")
    members = _members(reqs, priors, computed, opts, lambda req: ClipGeometry.of(req.shape, opts),
                       lambda i, t, p, geo, rng: ClipMember(i, t, p, first_state(p), geo, rng))
    out = yield from refine_clip(reqs, members, opts)
    recs = []
    for i, o in enumerate(out):
        mine = [m for m in members if m.req == i]
        rec = _record(priors[i], prior_params, mine)
        recs.append(Maps(o, {**rec, "durations": list(mine[0].geo.dur), "clip_stride": mine[0].geo.stride}))
    return recs


def _members(reqs: list[Request], priors: list[Any], computed: dict[int, Any], opts: Options,
             geometry: Callable[[Request], Any], member: Callable[..., Any]) -> list:
    """One member per (request, target): ``member(request index, target index, normalised prior, geometry,
    random stream seeded by (request seed, target index))``; one ``geometry(request)`` per input shape."""
    geos: dict[tuple[int, ...], Any] = {}
    members = []
    for i, req in enumerate(reqs):
        raw = (np.zeros((len(req.targets), *req.shape)) if priors[i] is None
               else prior_maps(req, computed[i] if i in computed else priors[i]))
        geo = geos.setdefault(tuple(req.shape), geometry(req))
        for t in range(len(req.targets)):
            p = normalise_prior(raw[t], opts.magnification)
            members.append(member(i, t, p, geo, np.random.default_rng([int(req.seed) % 2**63, t])))
    return members


def _groups(members: list[Member]) -> list[tuple[torch.Tensor, StateGrid, torch.Tensor, dict]]:
    """Members of the same candidate grid, whose acquisitions run as one batch: (indices, grid, priors
    (B, nr, nc), their block maxima {T: (B, ., .)})."""
    by_geo: dict[int, list[int]] = {}
    for b, m in enumerate(members):
        by_geo.setdefault(id(m.geo), []).append(b)
    out = []
    for idx in by_geo.values():
        ms = [members[b] for b in idx]
        out.append((torch.tensor(idx), ms[0].geo.grid, torch.stack([m.cand_prior for m in ms]),
                    {t: torch.stack([m.pyramid[t] for m in ms]) for t in ms[0].pyramid}))
    return out


def _start(m: Member, opts: Options) -> tuple[list, list]:
    """The first iteration's states: the prior's argmax (or the centre) with the smallest size, unjittered,
    then (q > 1) states chosen by the believer on a GP without observations."""
    r, c = first_state(m.prior)
    first = (r, c, 0)
    rec = m.geo.coords(*first)
    if opts.q == 1:
        return [first], [rec]
    post = Posterior.fit(torch.tensor(rec[None, None]), torch.zeros((1, 1), dtype=F64),
                         torch.tensor([opts.lengthscale]), opts.noise)
    pyramid = {t: p[None] for t, p in m.pyramid.items()}
    ((states, recorded),) = _choose([m], post, m.geo.grid, m.cand_prior[None], pyramid, opts, q=opts.q - 1)
    return [first, *states], [rec, *recorded]


def _choose(members: list[Member], post: Posterior, grid: StateGrid, prior: torch.Tensor, pyramid: dict,
            opts: Options, q: int | None = None) -> list[tuple[list, list]]:
    """q states per member by UCB (all members of one grid in one batched search, ``post`` batched):
    each recorded with jitter, later ones with σ conditioned on the earlier (believer)."""
    out: list[tuple[list, list]] = [([], []) for _ in members]
    q = opts.q if q is None else q
    for j in range(q):
        recs = []
        best = ucb_argmax(post, grid, prior, pyramid, opts.kappa)
        for m, (states, recorded), ((ri, ci, k), _, _) in zip(members, out, best, strict=True):
            state = (int(grid.row_px[ri]), int(grid.col_px[ci]), k)
            rec = m.geo.coords(*state) + m.rng.standard_normal(3) * np.asarray(opts.jitter)
            states.append(state)
            recorded.append(rec)
            recs.append(rec)
        if j + 1 < q:
            post = post.believe(torch.tensor(np.array(recs)))
    return out


def final_map(post: Posterior, prior: np.ndarray, geo: Geometry) -> np.ndarray:
    """Mean over sizes of the box average (half-side m pixels) of P + μ(·, ·, m)."""
    h, w = prior.shape
    rows = torch.arange(h, dtype=F64) / geo.scale
    cols = torch.arange(w, dtype=F64) / geo.scale
    total = np.zeros((h, w))
    for k, half in enumerate(geo.half):
        mu = mean_grid(post, rows, cols, float(geo.grid.sizes[k])).numpy() + prior
        total += box_mean(mu, half)
    return total / len(geo.half)


def _record(prior: Any, prior_params: dict[str, Any], members: list[Member]) -> dict[str, Any]:
    """What the result records besides the call's parameters: the prior and the fitted length scales."""
    if isinstance(prior, str):
        rec: dict[str, Any] = {"prior": prior, **{f"prior.{k}": v for k, v in prior_params.items()}}
    elif prior is None:
        rec = {"prior": "zero"}
    else:
        rec = {"prior": f"map {tuple(np.shape(getattr(prior, 'map', prior)))}"}
    rec["fitted_lengthscale"] = [[round(float(v), 6) for v in m.post.ls] for m in members]
    return rec
