"""Localisation metrics: does a map put its relevance on the object? (dataset auditing; Adhikari
et al., "Lost in Context", ICVGIP 2024, arXiv 2411.02833; Zhang et al., ECCV 2016; Arras et al.,
"CLEVR-XAI", Information Fusion 2022).

S is the map (h, w) at the model's input size, M the item's bool object mask on the same grid
(:func:`salient.object_mask.object_mask`; the engine passes it as the ``mask`` option). Maps are
normalised first where a formula says A: A = minmax(ReLU(S)) = (R − min R) / (max R − min R),
R = max(S, 0).

Each metric is registered (:func:`~salient.methods.metric.register_metric`) as a generator that asks
for no forward pass, so it adds no model cost to a job; its value is a results-table column of the
same name. Where a value is undefined it is NaN with a reason (:class:`~salient.methods.metric.
Undefined`), which the table's ``metric_note`` column shows, e.g. ``no object mask (object_share,
pointing_game)``; the reasons are :data:`NO_MASK`, :data:`EMPTY_MASK`, :data:`FULL_MASK`,
:data:`NO_POSITIVE`, :data:`CONSTANT` and a shape mismatch. Such an item is not a hit and not 0:
averages leave it out.

Quantus 0.6 (``quantus.PointingGame``, ``RelevanceRankAccuracy``, ``RelevanceMassAccuracy``, with
``normalise=False, abs=False``) gives the same values where the definitions agree; the differences
are stated in each function's docstring. One more: Quantus 0.6's PointingGame scores an empty mask
as a hit (it writes NaN into a bool array, which reads True); here it is NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import SalientError
from ..methods.metric import Undefined, register_metric

NO_MASK = "no object mask"
EMPTY_MASK = "empty object mask"
FULL_MASK = "object mask covers the whole map"
NO_POSITIVE = "map has no positive value"
CONSTANT = "constant map"
TOLERANCE = 15.0  # pointing game: pixels (of the map's grid) between the maximum and the mask


def _checked(saliency: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | Undefined:
    """(S as float64, M as bool), or the reason the pair has no localisation value."""
    if mask is None:
        return Undefined(NO_MASK)
    s, m = np.asarray(saliency, dtype=np.float64), np.asarray(mask, dtype=bool)
    if s.shape != m.shape:
        return Undefined(f"object mask shape {m.shape} differs from the map's {s.shape}")
    if not m.any():
        return Undefined(EMPTY_MASK)
    return s, m


def _varying(saliency: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | Undefined:
    """As :func:`_checked`, and the map must not be constant (no maximum, no ranking)."""
    got = _checked(saliency, mask)
    if not isinstance(got, Undefined) and float(got[0].max()) <= float(got[0].min()):
        return Undefined(CONSTANT)
    return got


def normalised(saliency: np.ndarray) -> np.ndarray | Undefined:
    """A = minmax(ReLU(S)), float64; Undefined if ReLU(S) is constant (all <= 0, or all equal)."""
    r = np.maximum(np.asarray(saliency, dtype=np.float64), 0.0)
    lo, hi = float(r.min()), float(r.max())
    if hi <= 0:
        return Undefined(NO_POSITIVE)
    if hi <= lo:
        return Undefined(CONSTANT)
    return (r - lo) / (hi - lo)


def _shares(saliency: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | Undefined:
    """(A, M) after the checks and the normalisation, or the reason there is none."""
    got = _checked(saliency, mask)
    if isinstance(got, Undefined):
        return got
    a = normalised(got[0])
    return a if isinstance(a, Undefined) else (a, got[1])


def object_share(saliency: np.ndarray, mask: np.ndarray | None) -> float:
    """Object share Σ A·M / Σ A, A = minmax(ReLU(S)): the fraction of the map's relevance on the object."""
    got = _shares(saliency, mask)
    if isinstance(got, Undefined):
        return got
    a, m = got
    return float(a[m].sum() / a.sum())


def context_share(saliency: np.ndarray, mask: np.ndarray | None) -> float:
    """Context share 1 − Σ A·M / Σ A = Σ A·(1−M) / Σ A, A = minmax(ReLU(S))."""
    got = _shares(saliency, mask)
    if isinstance(got, Undefined):
        return got
    a, m = got
    return float(a[~m].sum() / a.sum())


def object_density(saliency: np.ndarray, mask: np.ndarray | None) -> float:
    """Object density Σ A·M / Σ M: the mean of A = minmax(ReLU(S)) over object pixels, in [0, 1]."""
    got = _shares(saliency, mask)
    if isinstance(got, Undefined):
        return got
    a, m = got
    return float(a[m].mean())


def context_density(saliency: np.ndarray, mask: np.ndarray | None) -> float:
    """Context density Σ A·(1−M) / Σ(1−M): the mean of A = minmax(ReLU(S)) over the context pixels
    (NaN if the mask covers the whole map)."""
    got = _shares(saliency, mask)
    if isinstance(got, Undefined):
        return got
    a, m = got
    if m.all():
        return Undefined(FULL_MASK)
    return float(a[~m].mean())


def pointing_hit(saliency: np.ndarray, mask: np.ndarray | None, tolerance: float = TOLERANCE) -> float:
    """Pointing game (Zhang et al., ECCV 2016): 1.0 if the map's maximum p = argmax S lies within
    ``tolerance`` pixels (Euclidean, on the map's grid, pixel centres) of a mask pixel, else 0.0;
    per class, accuracy = hits / (hits + misses) = the column's mean.

    The maximum is the raw map's (a signed map's most positive pixel); ties go to the first maximum
    in row-major order (np.argmax), so a plateau counts once; a constant map is NaN. Quantus 0.6
    instead counts a hit if *any* pixel tied for the maximum is in the mask, and has no tolerance:
    with tolerance 0 and a unique maximum the two agree."""
    t = float(tolerance)
    if not t >= 0:
        raise SalientError(f"pointing game tolerance must be >= 0 pixels, got {tolerance}")
    got = _varying(saliency, mask)
    if isinstance(got, Undefined):
        return got
    s, m = got
    y, x = np.unravel_index(int(np.argmax(s)), s.shape)
    if m[y, x]:
        return 1.0
    r = int(np.floor(t))
    y0, x0 = max(0, y - r), max(0, x - r)
    near = np.argwhere(m[y0 : y + r + 1, x0 : x + r + 1])
    if not len(near):
        return 0.0
    d2 = (near[:, 0] + y0 - y) ** 2 + (near[:, 1] + x0 - x) ** 2
    return float(d2.min() <= t * t)


def rank_accuracy(saliency: np.ndarray, mask: np.ndarray | None) -> float:
    """Relevance rank accuracy (Arras et al. 2022): |top-K pixels of S ∩ M| / K with K = |M|. Pixels
    ranked by decreasing S, ties by row-major index (stable sort); a constant map is NaN. Quantus 0.6
    ranks with an unstable sort (ties in arbitrary order): equal where no tie straddles rank K."""
    got = _varying(saliency, mask)
    if isinstance(got, Undefined):
        return got
    s, m = got
    k = int(m.sum())
    top = np.argsort(-s.ravel(), kind="stable")[:k]
    return float(m.ravel()[top].sum() / k)


def mass_accuracy(saliency: np.ndarray, mask: np.ndarray | None) -> float:
    """Relevance mass accuracy (Arras et al. 2022): Σ R·M / Σ R with R = ReLU(S), the positive
    relevance (NaN if there is none). Quantus 0.6 sums the signed map (Σ S·M / Σ S), which for a
    signed map can leave [0, 1] or divide by ~0; the two agree on non-negative maps. It equals
    :func:`object_share` when min ReLU(S) = 0 (minmax then only scales)."""
    got = _checked(saliency, mask)
    if isinstance(got, Undefined):
        return got
    s, m = got
    r = np.maximum(s, 0.0)
    total = float(r.sum())
    if total <= 0:
        return Undefined(NO_POSITIVE)
    return float(r[m].sum() / total)


# -- registered metrics: generators that ask for no queries (``return value; yield``)
def _registered(name: str, fn: Callable[[np.ndarray, np.ndarray | None], float], higher_is_better: bool) -> None:
    def metric(item: str, size: tuple[int, int], saliency: np.ndarray, target: int, mask: np.ndarray | None = None):
        return fn(saliency, mask)
        yield  # a generator that returns at once: no forward pass

    metric.__name__ = metric.__qualname__ = f"{name}_metric"
    metric.__doc__ = fn.__doc__
    register_metric(name, higher_is_better=higher_is_better)(metric)


_registered("object_share", object_share, True)
_registered("context_share", context_share, False)
_registered("object_density", object_density, True)
_registered("context_density", context_density, False)


@register_metric("pointing_game", higher_is_better=True)
def pointing_game(item: str, size: tuple[int, int], saliency: np.ndarray, target: int, mask: np.ndarray | None = None,
                  tolerance: float | None = None):
    """Pointing game: 1.0 if argmax S lies within ``tolerance`` px (default 15) of the object mask, else 0.0."""
    return pointing_hit(saliency, mask, TOLERANCE if tolerance is None else tolerance)
    yield  # no forward pass


_registered("rank_accuracy", rank_accuracy, True)
_registered("mass_accuracy", mass_accuracy, True)
