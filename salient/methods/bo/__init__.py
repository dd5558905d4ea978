"""Exact Gaussian-process machinery of BOREx: fitting, closed-form posteriors, and an exact UCB argmax,
one concept per module:

- :mod:`.optimise`: a generic bounded quasi-Newton minimiser of many functions at once (L-BFGS-B's method);
- :mod:`.gp`: the Gaussian process: likelihood, maximum-likelihood length scales, closed-form posteriors,
  the posterior mean on a pixel grid;
- :mod:`.search`: the exact UCB argmax over a grid of states (branch and bound).

The methods that use them (``borex``, ``gp``) live in :mod:`salient.methods.borex`.
"""

from .gp import F64, NegLogLikelihood, Posterior, fit_lengthscales, matern32, mean_grid, one_thread
from .optimise import minimize_box
from .search import StateGrid, ucb_argmax

__all__ = ["F64", "NegLogLikelihood", "Posterior", "StateGrid", "fit_lengthscales", "matern32", "mean_grid",
           "minimize_box", "one_thread", "ucb_argmax"]
