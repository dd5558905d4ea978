"""Exact Gaussian-process machinery of BOREx: fitting, closed-form posteriors, and an exact UCB argmax.

Model of one member (one item and target): y = f(x) + ε with f ~ GP(0, k), ε ~ N(0, noise) fixed,
k(x, x') = (1 + √3·d)·exp(−√3·d), d = ‖(x − x') / ℓ‖ (Matern ν = 3/2 with ARD length scales ℓ and
no output scale), as the BOREx authors' scikit-learn ``Matern(nu=1.5)`` with ``alpha=noise``.

- Fitting (:func:`fit_lengthscales`): ℓ maximises log p(y | X, ℓ), computed by a gpytorch ExactGP
  (``batch_shape=(B,)``, FixedNoiseGaussianLikelihood, exact Cholesky: gpytorch's Cholesky size limit
  is raised above n; distances from the coordinate differences, as :class:`Posterior` computes
  them). The optimiser (:func:`minimize_box`) works in log ℓ within the bounds, as
  scikit-learn's L-BFGS-B: a projected quasi-Newton method with L-BFGS-B's model (θI and the last 10
  secant pairs; first step z − ∇f), a line search along the projected path that extrapolates until
  the weak Wolfe conditions hold (so warm starts on flat or concave ground take long steps, not a
  hundred short ones), and L-BFGS-B's tolerances (projected gradient 1e-5, relative decrease
  2.2e-9). Members of a batch share the forward/backward passes but never the optimiser state:
  every per-member quantity (direction, line search, convergence) is elementwise, so a member's
  length scales do not depend on the other members of its batch as far as the likelihood's own
  arithmetic does not (below).
- Posterior (:class:`Posterior`): L = chol(K + noise·I), α = (K + noise·I)⁻¹ y; at any point
  μ(x) = k(x)ᵀα and σ²(x) = 1 − ‖L⁻¹k(x)‖², the latent variance (noise excluded, as scikit-learn's
  ``predict``). :meth:`Posterior.believe` conditions σ on pending points (kriging believer: the
  mean does not move). One posterior may hold B members with the same number of observations
  (leading batch dimension), fitted and searched together.
- UCB argmax over a grid of states (:func:`ucb_argmax`): a(x) = P(x) + μ(x) + κ·σ(x) over every
  (row, column, size), exactly, without evaluating every state (the authors predict all 200,704
  states at 224 px each iteration). The grid is cut into blocks of 16 x 16 positions per size;
  each block gets an upper bound of a (:func:`_block_bounds`: from the distance range of each
  observation to the block and the exact a at its centre) and the exact a at its centre; blocks
  whose bound is below the best centre are dropped, the others halved (8, then 4), and the
  surviving 4 x 4 blocks are evaluated state by state in decreasing order of their bound until no
  bound reaches the best value. The bounds carry a margin above rounding, so the result is the
  argmax of the dense computation (ties: the first state in the authors' candidate order, column,
  then row, then size); a few per cent of the states are evaluated. The blocks of all members of a
  batch form one list, so each step is a few tensor operations for all of them; a state's value is
  computed by the same arithmetic in any batch (the same maps batched or one at a time). Work runs
  in chunks (large temporaries cost page faults).
Everything is float64, on one intra-op thread (:func:`one_thread`: the tensors are small, and the
caller's thread count then changes no bit).

Batched and alone: a member's result batched with others equals its result alone to rounding (the
tests allow 1e-12 relative for a posterior, 1e-9 for fitted length scales, whose optimiser can
amplify a last-bit difference), not by construction bit for bit. Every batched operation here computes
each member from that member's data only, but the last bits of a batched BLAS/LAPACK call (MKL's
small matrix products, Cholesky and triangular solves) and of vectorised elementwise loops (a
vector lane or a scalar tail) may depend on where a member sits in the batch. gpytorch's distance
(|a|² − 2a·b + |b|² as one batched matrix product) did differ with the batch at 2 threads on AVX-512
and AVX2 machines; it is replaced by the differences themselves, after which batched and single
members agree bit for bit on the machines we test (AVX2, AVX-512; 1 and 2 threads), which is what
keeps ``--target top3`` maps equal to one-target runs there; elsewhere they may differ in the last
bits, and a BOREx run that meets an exact tie in the argmax could then take another state.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

SQRT3 = math.sqrt(3.0)
F64 = torch.float64


def matern32(d: torch.Tensor) -> torch.Tensor:
    """k = (1 + √3·d)·exp(−√3·d) for scaled distances d >= 0."""
    s = SQRT3 * d
    return (1.0 + s) * torch.exp(-s)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch work on one intra-op thread; the caller's count is restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@cache
def _gpytorch():
    """gpytorch, imported on first use (its import warns about torch.jit.script on this torch)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        import gpytorch
    return gpytorch


@cache
def _exact_gp_class() -> type:
    gpytorch = _gpytorch()

    class Matern(gpytorch.kernels.MaternKernel):
        """gpytorch's Matern kernel with distances ‖x1 − x2‖ from the differences: gpytorch expands
        |a|² − 2a·b + |b|² into one batched matrix product, which cancels, and whose per-member bits MKL
        lets depend on the batch and the thread count."""

        def covar_dist(self, x1, x2, diag=False, last_dim_is_batch=False, square_dist=False, **params):
            if diag or last_dim_is_batch:
                return super().covar_dist(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch,
                                          square_dist=square_dist, **params)
            d2 = (x1[..., :, None, :] - x2[..., None, :, :]).square().sum(-1)
            return d2 if square_dist else d2.clamp_min(1e-30).sqrt()  # gpytorch's clamp: no NaN gradient at 0

    class ExactGP(gpytorch.models.ExactGP):
        """Zero mean, Matern 3/2 ARD kernel with ℓ = exp(raw) (bounds are the optimiser's), no output scale."""

        def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float):
            batch = torch.Size([x.shape[0]])
            lik = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(
                noise=torch.full(y.shape, float(noise), dtype=F64), learn_additional_noise=False, batch_shape=batch
            )
            super().__init__(x, y, lik)
            self.mean = gpytorch.means.ZeroMean(batch_shape=batch)
            self.kernel = Matern(
                nu=1.5, ard_num_dims=x.shape[-1], batch_shape=batch,
                lengthscale_constraint=gpytorch.constraints.Positive(transform=torch.exp, inv_transform=torch.log),
            )
            self.double()

        def forward(self, x: torch.Tensor):
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.kernel(x))

    return ExactGP


def _settings(n: int):
    """Exact Cholesky up to n (gpytorch's limit raised above the observation count), no debug checks."""
    gpytorch = _gpytorch()
    return (gpytorch.settings.max_cholesky_size(max(n, 1) + 1), gpytorch.settings.debug(False),
            gpytorch.settings.fast_computations(False, False, False))


class NegLogLikelihood:
    """f(log ℓ) = −log p(y | X, ℓ) per member (B,) and its gradient (B, D), by a batched gpytorch ExactGP."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float):
        self.model = _exact_gp_class()(x.to(F64), y.to(F64), noise)
        self.mll = _gpytorch().mlls.ExactMarginalLogLikelihood(self.model.likelihood, self.model)
        self.n = int(y.shape[-1])
        self.evaluations = 0

    def __call__(self, log_ls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.model.kernel.raw_lengthscale
        with torch.no_grad():
            raw.copy_(log_ls[:, None, :])
        s1, s2, s3 = _settings(self.n)
        with s1, s2, s3, torch.enable_grad():
            out = self.model(*self.model.train_inputs)
            nll = -self.mll(out, self.model.train_targets) * self.n
            (grad,) = torch.autograd.grad(nll.sum(), raw)
        self.evaluations += 1
        return nll.detach(), grad[:, 0, :]


def fit_lengthscales(x: torch.Tensor, y: torch.Tensor, noise: float, start: torch.Tensor,
                     bounds: tuple[float, float], max_iter: int = 100, gtol: float = 1e-5,
                     ftol: float = 2.2e-9) -> tuple[torch.Tensor, int]:
    """Maximum-likelihood ℓ (B, D) for observations x (B, n, D), y (B, n), from ``start`` (B, D):
    :func:`minimize_box` of −log p on log ℓ within log ``bounds``, the space and the tolerances of
    scikit-learn's L-BFGS-B (projected gradient ``gtol``, relative decrease ``ftol``).

    Returns (ℓ, number of batched likelihood evaluations)."""
    with one_thread():
        objective = NegLogLikelihood(x, y, noise)
        z = minimize_box(objective, start.to(F64).log(), math.log(bounds[0]), math.log(bounds[1]),
                         max_iter=max_iter, gtol=gtol, ftol=ftol)
    return z.exp(), objective.evaluations


WOLFE = (1e-4, 0.9)  # sufficient decrease and curvature constants of the line search (c1, c2)
EPS_ACTIVE = 1e-3  # the largest ε of the ε-active set (log ℓ)
MEMORY = 10  # secant pairs kept (L-BFGS-B's default m)


def minimize_box(fun: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], z: torch.Tensor, lo: float,
                 hi: float, max_iter: int = 100, gtol: float = 1e-5, ftol: float = 2.2e-9, max_search: int = 20
                 ) -> torch.Tensor:
    """Minimise B independent functions over the box [lo, hi]^D from z (B, D): ``fun(z) -> (f (B,), ∇f (B, D))``
    evaluates all members at once. Returns the minimisers (B, D).

    Model (L-BFGS-B's): the Hessian approximation B is θI updated by BFGS with the last ``MEMORY`` pairs
    (s, y) of steps with sᵀy > 0, θ = yᵀy / sᵀy of the newest pair (θ = 1 without pairs: the first step
    is z − ∇f). Step: variables within ε = min(``EPS_ACTIVE``, ‖z − P(z − ∇f)‖∞) of a bound with their
    gradient pointing out (Bertsekas' ε-active set) move straight to it, reached at t = 1; the free
    variables take d = −B_FF⁻¹·g_F (the reduced model's minimiser, L-BFGS-B's subspace step), a variable
    within ε of a bound that d would push out being fixed too; d falls back to −g when it is not downhill.
    Line search on the projected path x(t) = P(z + t·d) up to its last breakpoint, for the weak Wolfe
    conditions f(x(t)) <= f(z) + c1·∇fᵀ(x(t) − z) and φ'(t) >= c2·φ'(0) (φ' the right derivative of the
    free variables' part): from t = 1, extrapolate by safeguarded cubic steps (Moré & Thuente's bounds)
    while the slope stays steep; once a trial fails the first condition, zoom between the last steep
    point and it (Nocedal & Wright 3.6) by safeguarded cubic interpolation, or, after a steep trial inside,
    at the first breakpoint between them (φ has a kink there that the zoom creeps up on, and often its
    minimum). A search out of tries takes its best point; one without decrease drops the pairs and the
    ε-active set and starts again from −g, and stops the member if it already was that. Stops at a
    projected gradient <= gtol when the model's predicted decrease −φ'(0)/2 is below ftol's too (or there
    are no pairs), at a relative decrease <= ftol (L-BFGS-B's tests), at a trial whose projected gradient
    is <= gtol and whose value f cannot tell from the current one (4 ulps: the decrease tests would only
    read rounding there), or after ``max_iter`` steps.

    Every member has its own state (iterate, pairs, line search, stopping) and advances by one trial per
    call of ``fun``; a stopped member is evaluated at its own point and ignored, so a member's result does
    not depend on the other members of the batch (as far as ``fun`` computes each member alone)."""
    c1, c2 = WOLFE
    z = z.to(F64).clamp(lo, hi)
    f, g = fun(z)
    nb, dim = z.shape
    eye = torch.eye(dim, dtype=F64)
    pairs_s, pairs_y = torch.zeros((nb, MEMORY, dim), dtype=F64), torch.zeros((nb, MEMORY, dim), dtype=F64)
    pairs = torch.zeros(nb, dtype=torch.long)  # valid pairs: the last `pairs` of the MEMORY slots, newest last
    steps = torch.zeros(nb, dtype=torch.long)
    active = torch.ones(nb, dtype=torch.bool)
    d = torch.zeros((nb, dim), dtype=F64)
    eact = torch.zeros((nb, dim), dtype=torch.bool)  # ε-active variables of the current step
    brk = torch.full((nb, dim), math.inf, dtype=F64)  # t at which each variable reaches its bound
    dphi0, t, tmax = (torch.zeros(nb, dtype=F64) for _ in range(3))
    zoom, safe, plain = (torch.zeros(nb, dtype=torch.bool) for _ in range(3))
    tries = torch.zeros(nb, dtype=torch.long)
    # the search interval: a = the best point with sufficient decrease so far (x, f, g kept), b = the other end
    a_t, a_f, a_d, a_x, a_g = t.clone(), f.clone(), t.clone(), z.clone(), g.clone()
    b_t, b_f, b_d = t.clone(), f.clone(), t.clone()

    def begin(m: torch.Tensor) -> None:
        """New direction and first trial for members m; members at a stationary point stop."""
        nonlocal active
        if not m.any():
            return
        at_lo, at_hi = z <= lo, z >= hi
        pg = torch.where((at_lo & (g > 0)) | (at_hi & (g < 0)), 0.0, g)  # projected gradient
        # ε-active (Bertsekas): within ε = min(EPS_ACTIVE, ‖z − P(z − g)‖∞) of a bound, gradient pointing out;
        # none after a failed search (the path of −g without them always descends)
        eps = torch.where(plain, 0.0, (z - (z - g).clamp(lo, hi)).abs().amax(-1).clamp_max(EPS_ACTIVE))[:, None]
        near_lo, near_hi = z <= lo + eps, z >= hi - eps
        out = (near_lo & (g > 0)) | (near_hi & (g < 0))
        model = _bfgs_matrix(pairs_s, pairs_y, pairs, eye)
        fixed = out.clone()
        for _ in range(dim + 1):
            fr = ~fixed
            dm = torch.linalg.solve(torch.where(fr[:, :, None] & fr[:, None, :], model, eye),
                                    torch.where(fr, -g, 0.0)[:, :, None])[:, :, 0]
            push = fr & ((near_lo & (dm < 0)) | (near_hi & (dm > 0)))
            if not (m[:, None] & push).any():
                break
            fixed |= push
        slope = (dm * g).sum(-1)
        tiny = max(ftol, torch.finfo(F64).eps) * f.abs().clamp_min(1.0)  # a decrease below it is not worth a step
        stop = m & (pg.abs().amax(-1) <= gtol) & ((pairs == 0) | (-0.5 * slope <= tiny))
        active = active & ~stop
        m = m & ~stop
        reset = m & ~(slope < 0) & (torch.where(out, 0.0, g).abs().amax(-1) > 0)  # not downhill: from −g
        dm = torch.where(reset[:, None], -torch.where(out, 0.0, g), dm)
        pairs[reset] = 0
        safe[m] = ((pairs == 0) & ~(out & ~at_lo & ~at_hi).any(-1))[m]
        dphi0[m] = (dm * g).sum(-1)[m]  # the slope of the model's part (the ε-active variables' is extra)
        dm = torch.where(out, torch.where(g > 0, lo, hi) - z, dm)  # the ε-active reach their bound at t = 1
        d[m], eact[m] = dm[m], out[m]
        dist = torch.where(dm > 0, (hi - z) / dm, torch.where(dm < 0, (lo - z) / dm, math.inf))
        brk[m] = dist[m]
        tmax[m] = torch.where(dm != 0, dist, 0.0).amax(-1)[m]
        t[m] = tmax.clamp_max(1.0)[m]
        zoom[m], tries[m] = False, 0
        a_t[m], a_f[m], a_d[m], a_x[m], a_g[m] = 0.0, f[m], dphi0[m], z[m], g[m]

    begin(active.clone())
    while active.any():
        moving = t[:, None] < brk
        path = torch.where(moving, z + t[:, None] * d, torch.where(d > 0, hi, torch.where(d < 0, lo, z)))
        trial = torch.where(active[:, None], path.clamp(lo, hi), z)
        ft, gt = fun(trial)
        tries += active.long()
        dt = (gt * torch.where(moving & ~eact, d, 0.0)).sum(-1)  # φ'(t) from the right, the model's part
        high = ~(ft <= f + c1 * (g * (trial - z)).sum(-1)) | (ft >= a_f)  # no sufficient decrease, or above a
        # a trial that f cannot tell from z (within a few ulps) but that is stationary (projected gradient
        # <= gtol) ends the search: below f's resolution the decrease tests only read rounding
        pg_t = torch.where(((trial <= lo) & (gt > 0)) | ((trial >= hi) & (gt < 0)), 0.0, gt).abs().amax(-1)
        level = (ft - f).abs() <= 4.0 * torch.finfo(F64).eps * f.abs()
        accept = active & ((~high & (dt >= c2 * dphi0)) | (level & (pg_t <= gtol)))  # the weak Wolfe conditions
        # below a and still steep: t becomes a, and the next trial lies further out (bracketing) or inside (zoom);
        # high: t becomes b, and the next trial lies between a and b (zoom)
        steep = active & ~high & ~accept
        to_b = active & high & ~accept
        further = _extrapolate(a_t, a_f, a_d, t, ft, dt, tmax)
        a_t, a_f, a_d = (torch.where(steep, v, u) for v, u in ((t, a_t), (ft, a_f), (dt, a_d)))
        a_x, a_g = torch.where(steep[:, None], trial, a_x), torch.where(steep[:, None], gt, a_g)
        b_t, b_f, b_d = (torch.where(to_b, v, u) for v, u in ((t, b_t), (ft, b_f), (dt, b_d)))
        # zoom trial: the cubic interpolation; after a steep trial inside the zoom, the first breakpoint inside
        # (a, b) if any: φ is not smooth there, and a zoom that creeps up on one has its minimum there
        kink = torch.where((brk > a_t[:, None]) & (brk < b_t[:, None]), brk, math.inf).amin(-1)
        kink = torch.where(steep & zoom, kink, math.inf)
        zoom |= to_b
        inner = active & zoom & ~accept
        inside = torch.where(kink.isfinite(), kink, _interpolate(a_t, a_f, a_d, b_t, b_f, b_d))
        t = torch.where(inner, inside, torch.where(steep, further, t))
        # a search out of tries or of interval takes a if it is a step, else it failed
        spent = active & ~accept & ((tries >= max_search) | (tmax <= 0) | (inner & ((b_t - a_t).abs() <= 1e-10 * t)))
        take_a = spent & (a_t > 0)
        failed = spent & ~take_a
        done = accept | take_a
        z_new = torch.where(accept[:, None], trial, a_x)
        f_new, g_new = torch.where(accept, ft, a_f), torch.where(accept[:, None], gt, a_g)
        s, yv = z_new - z, g_new - g
        keep = done & ((s * yv).sum(-1) > 1e-10 * (g * s).sum(-1).abs())  # a pair with positive curvature
        pairs_s = torch.where(keep[:, None, None], torch.cat([pairs_s[:, 1:], s[:, None]], 1), pairs_s)
        pairs_y = torch.where(keep[:, None, None], torch.cat([pairs_y[:, 1:], yv[:, None]], 1), pairs_y)
        pairs = torch.where(keep, (pairs + 1).clamp_max(MEMORY), pairs)
        small = (f - f_new) <= ftol * torch.maximum(torch.maximum(f.abs(), f_new.abs()), torch.ones_like(f))
        steps += done.long()
        active &= ~(done & (small | (steps >= max_iter))) & ~(failed & safe)
        z, g = torch.where(done[:, None], z_new, z), torch.where(done[:, None], g_new, g)
        f = torch.where(done, f_new, f)
        retry = failed & active  # no decrease along the model's step: drop the pairs, start again from −g
        pairs[retry] = 0
        plain = (plain | retry) & ~done
        begin(active & (done | retry))
    return z


def _bfgs_matrix(pairs_s: torch.Tensor, pairs_y: torch.Tensor, pairs: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """Hessian approximations (B, D, D): θI with θ = yᵀy / sᵀy of the newest pair (1 without pairs), then
    B+ = B − B·s·sᵀ·B / sᵀBs + y·yᵀ / yᵀs for the valid pairs, oldest first (the last ``pairs`` slots)."""
    sn, yn = pairs_s[:, -1], pairs_y[:, -1]
    theta = torch.where(pairs > 0, (yn * yn).sum(-1) / (sn * yn).sum(-1).where(pairs > 0, 1.0), 1.0)
    model = eye * theta[:, None, None]
    slots = pairs_s.shape[1]
    for j in range(slots):
        use = pairs >= slots - j
        if not use.any():
            continue
        s, y = pairs_s[:, j, :, None], pairs_y[:, j, :, None]
        bs = model @ s
        new = (model - bs @ bs.mT / (s.mT @ bs).where(use[:, None, None], 1.0)
               + y @ y.mT / (y.mT @ s).where(use[:, None, None], 1.0))
        model = torch.where(use[:, None, None], new, model)
    return model


def _cubic_min(a: torch.Tensor, fa: torch.Tensor, da: torch.Tensor, b: torch.Tensor, fb: torch.Tensor,
               db: torch.Tensor) -> torch.Tensor:
    """Minimiser of the cubic with values and slopes (fa, da) at a and (fb, db) at b (Nocedal & Wright 3.59);
    NaN where it has none."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    d2 = torch.sign(b - a) * torch.sqrt(d1 * d1 - da * db)
    return b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2)


def _extrapolate(a, fa, da, t, ft, dt, tmax):
    """Next bracketing trial beyond t (a < t, both descending): the cubic's minimiser within
    [t + 1.1·(t − a), t + 4·(t − a)] (Moré & Thuente's bounds), else the far end; at most tmax."""
    near, far = t + 1.1 * (t - a), t + 4.0 * (t - a)
    c = _cubic_min(a, fa, da, t, ft, dt)
    return torch.minimum(torch.where(c.isfinite() & (c > t), c.clamp(near, far), far), tmax)


def _interpolate(a, fa, da, b, fb, db):
    """Zoom trial between a and b: the cubic's minimiser, kept 10 % of the interval away from either end."""
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    w = hi - lo
    c = _cubic_min(a, fa, da, b, fb, db)
    return torch.where(c.isfinite(), c, 0.5 * (a + b)).clamp(lo + 0.1 * w, hi - 0.1 * w)


@dataclass
class Posterior:
    """The GP of one member given observations x (n, D) with residuals y (n,), see the module docstring;
    or of B members at once: every field with a leading batch dimension (x (B, n, D), ls (B, D), ...)."""

    x: torch.Tensor
    ls: torch.Tensor
    noise: float
    chol: torch.Tensor
    chol_inv: torch.Tensor
    alpha: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, ls: torch.Tensor, noise: float) -> Posterior:
        """Single (x (n, D), y (n,), ls (D,)) or batched (leading dimension B); a member's arithmetic is the
        same in both (batched Cholesky and triangular solve, α by matrix-vector products per member)."""
        x, y, ls = x.to(F64), y.to(F64), ls.to(F64)
        eye = torch.eye(x.shape[-2], dtype=F64)
        k = matern32(_scaled_dist(x, x, ls)) + noise * eye
        chol = torch.linalg.cholesky(k)
        chol_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
        if x.dim() == 2:
            alpha = chol_inv.T @ (chol_inv @ y)
        else:
            alpha = torch.stack([li.T @ (li @ yi) for li, yi in zip(chol_inv, y, strict=True)])
        return cls(x, ls, noise, chol, chol_inv, alpha)

    @classmethod
    def stack(cls, posts: Sequence[Posterior]) -> Posterior:
        """One batched posterior of single members with the same number of observations."""
        return cls(*(torch.stack([getattr(p, f) for p in posts]) for f in ("x", "ls")), posts[0].noise,
                   *(torch.stack([getattr(p, f) for p in posts]) for f in ("chol", "chol_inv", "alpha")))

    def member(self, b: int) -> Posterior:
        """Member b of a batched posterior (views)."""
        return Posterior(self.x[b], self.ls[b], self.noise, self.chol[b], self.chol_inv[b], self.alpha[b])

    def take(self, idx: torch.Tensor) -> Posterior:
        """The members ``idx`` of a batched posterior."""
        return Posterior(self.x[idx], self.ls[idx], self.noise, self.chol[idx], self.chol_inv[idx], self.alpha[idx])

    def cross(self, xc: torch.Tensor) -> torch.Tensor:
        """k(xc, X): (m, n)."""
        return matern32(_scaled_dist(xc.to(F64), self.x, self.ls))

    def predict(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of f at xc (m, D) (single member)."""
        kc = self.cross(xc)
        v = kc @ self.chol_inv.T
        return kc @ self.alpha, (1.0 - (v * v).sum(-1)).clamp_min(0.0).sqrt()

    def believe(self, xp: torch.Tensor) -> Posterior:
        """Condition σ on a pending point xp (D,) observed at its own mean (μ is unchanged); batched: xp (B, D)."""
        if self.x.dim() == 3:
            return Posterior.stack([self.member(b).believe(xp[b]) for b in range(len(xp))])
        xp = xp.to(F64).view(1, -1)
        kp = self.cross(xp)[0]
        lrow = self.chol_inv @ kp
        diag = torch.sqrt(torch.clamp(1.0 + self.noise - lrow @ lrow, min=1e-12))
        n = self.x.shape[0]
        chol = torch.zeros((n + 1, n + 1), dtype=F64)
        chol[:n, :n], chol[n, :n], chol[n, n] = self.chol, lrow, diag
        inv = torch.zeros_like(chol)
        inv[:n, :n], inv[n, :n], inv[n, n] = self.chol_inv, -(lrow @ self.chol_inv) / diag, 1.0 / diag
        alpha = torch.cat([self.alpha, torch.zeros(1, dtype=F64)])
        return Posterior(torch.cat([self.x, xp]), self.ls, self.noise, chol, inv, alpha)


def _scaled_dist(a: torch.Tensor, b: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    diff = (a[..., :, None, :] - b[..., None, :, :]) / ls[..., None, None, :]
    return torch.sqrt((diff * diff).sum(-1))


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


def mean_grid(post: Posterior, rows: torch.Tensor, cols: torch.Tensor, size: float, max_elems: int = 1 << 15
              ) -> torch.Tensor:
    """Posterior mean μ(row, col, size) for every row × col (H, W), in row chunks (in-place float64)."""
    x, ls = post.x, post.ls
    ar = ((rows[:, None] - x[None, :, 0]) / ls[0]).square()
    ac = ((cols[:, None] - x[None, :, 1]) / ls[1]).square() + ((size - x[:, 2]) / ls[2]).square()
    out = torch.empty((len(rows), len(cols)), dtype=F64)
    step = max(1, max_elems // max(1, len(cols) * x.shape[0]))
    for s in range(0, len(rows), step):
        d = torch.add(ar[s : s + step, None, :], ac[None, :, :]).sqrt_().mul_(SQRT3)
        e = torch.neg(d).exp_()
        out[s : s + step] = d.add_(1.0).mul_(e) @ post.alpha  # (1 + √3d)·exp(−√3d)
    return out
