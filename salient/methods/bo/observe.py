"""One BOREx observation step, shared by the 2-D and 3-D loops (:mod:`salient.methods.borex`,
:mod:`salient.methods.borex3d`): scores from keep/delete results, residuals against the prior, refit, posterior.

Members are any objects with ``x``, ``y`` (lists of observations), ``prior`` (the normalised prior map,
indexed by a state's leading position coordinates) and ``post``; a state is (position..., size indices...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .gp import F64, Posterior, fit_lengthscales


def observe(members: list, plan: list, results: list, opts: Any, it: int, ls: torch.Tensor, ls0: torch.Tensor,
            trace: list | None = None, fit: Callable = fit_lengthscales) -> tuple[torch.Tensor, Posterior]:
    """Record iteration ``it``: for member j (plan[j] = (states, recorded GP coordinates)), Δ = keep − delete
    scores (results[2j], results[2j+1]), score = tanh(gain·Δ) (Δ itself for gain 0), y = score − P at the
    state's position; refit the length scales by ``fit`` (every ``refit_every`` iterations and at the last,
    from ``ls`` or, without warm start, ``ls0``) and set every member's posterior. Returns the length scales
    (B, D) and the batched posterior. ``trace`` (tests) receives (iteration, member, state, recorded coordinates)."""
    for j, (m, (states, recorded)) in enumerate(zip(members, plan, strict=True)):
        delta = results[2 * j][:, 0].astype(np.float64) - results[2 * j + 1][:, 0].astype(np.float64)
        score = np.tanh(opts.gain * delta) if opts.gain > 0 else delta
        m.x += recorded
        if trace is not None:
            trace += [(it, j, st, rec) for st, rec in zip(states, recorded, strict=True)]
        m.y += [s - m.prior[tuple(st[: m.prior.ndim])] for s, st in zip(score, states, strict=True)]
    x = torch.tensor(np.array([m.x for m in members]), dtype=F64)
    y = torch.tensor(np.array([m.y for m in members]), dtype=F64)
    if it % opts.refit_every == 0 or it == opts.iterations:
        ls, _ = fit(x, y, opts.noise, ls if opts.warm_start else ls0, opts.bounds)
    post = Posterior.fit(x, y, ls, opts.noise)
    for b, m in enumerate(members):
        m.post = post.member(b)
    return ls, post
