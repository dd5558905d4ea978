"""The Gaussian process of BOREx: its likelihood and maximum-likelihood fit, closed-form posteriors,
and the posterior mean on a pixel grid.

Model of one member (one item and target): y = f(x) + ε with f ~ GP(0, k), ε ~ N(0, noise) fixed,
k(x, x') = (1 + √3·d)·exp(−√3·d), d = ‖(x − x') / ℓ‖ (Matern ν = 3/2 with ARD length scales ℓ and
no output scale), as the BOREx authors' scikit-learn ``Matern(nu=1.5)`` with ``alpha=noise``.

- Fitting (:func:`fit_lengthscales`): ℓ maximises log p(y | X, ℓ), computed by a gpytorch ExactGP
  (``batch_shape=(B,)``, FixedNoiseGaussianLikelihood, exact Cholesky: gpytorch's Cholesky size limit
  is raised above n; distances from the coordinate differences, as :class:`Posterior` computes
  them). The optimiser (:func:`.optimise.minimize_box`, its docstring states the method) works in
  log ℓ within the bounds, as scikit-learn's L-BFGS-B. Members of a batch share the likelihood's
  forward/backward passes but never the optimiser state, so a member's length scales do not depend
  on the other members of its batch as far as the likelihood's own arithmetic does not (below).
- Posterior (:class:`Posterior`): L = chol(K + noise·I), α = (K + noise·I)⁻¹ y; at any point
  μ(x) = k(x)ᵀα and σ²(x) = 1 − ‖L⁻¹k(x)‖², the latent variance (noise excluded, as scikit-learn's
  ``predict``). :meth:`Posterior.believe` conditions σ on pending points (kriging believer: the
  mean does not move). One posterior may hold B members with the same number of observations
  (leading batch dimension), fitted and searched together (the search: :mod:`.search`).
- Mean grid (:func:`mean_grid`): μ at one size for every pixel row × column, the part of the final map
  that the GP adds to the prior.
Everything is float64, on one intra-op thread (:func:`one_thread`: the tensors are small, and the
caller's thread count then changes no bit).

Batched and alone (this module and :mod:`.search`): a member's result batched with others equals its
result alone to rounding (the tests allow 1e-12 relative for a posterior, 1e-9 for fitted length
scales, whose optimiser can amplify a last-bit difference), not by construction bit for bit. Every
batched operation here and in the search computes each member from that member's data only, but the
last bits of a batched BLAS/LAPACK call (MKL's small matrix products, Cholesky and triangular solves)
and of vectorised elementwise loops (a vector lane or a scalar tail) may depend on where a member sits
in the batch. gpytorch's distance (|a|² − 2a·b + |b|² as one batched matrix product) did differ with
the batch at 2 threads on AVX-512 and AVX2 machines; it is replaced by the differences themselves,
after which batched and single members agree bit for bit on the machines we test (AVX2, AVX-512; 1
and 2 threads), which is what keeps ``--target top3`` maps equal to one-target runs there; elsewhere
they may differ in the last bits, and a BOREx run that meets an exact tie in the argmax could then
take another state.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch

from .optimise import minimize_box

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
