"""A bounded quasi-Newton minimiser of many independent functions at once (:func:`minimize_box`). Generic:
it knows only ``fun(z) -> (f (B,), ∇f (B, D))`` and the box, nothing of what it minimises (BOREx's GP fits
its log length scales with it, :func:`.gp.fit_lengthscales`).

The method is scikit-learn's L-BFGS-B's: a projected quasi-Newton method with L-BFGS-B's model (θI and the
last 10 secant pairs; first step z − ∇f), a line search along the projected path that extrapolates until
the weak Wolfe conditions hold (so warm starts on flat or concave ground take long steps, not a hundred
short ones), and L-BFGS-B's tolerances (projected gradient 1e-5, relative decrease 2.2e-9). Members of a
batch share the forward/backward passes (one call of ``fun``) but never the optimiser state: every
per-member quantity (direction, line search, convergence) is elementwise, so a member's minimiser does not
depend on the other members of its batch as far as ``fun``'s own arithmetic does not.
Everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

F64 = torch.float64

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
