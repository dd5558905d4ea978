"""Candidate defect regions of an anomaly map: a threshold calibrated on normal references,
morphological opening, connected components.

- Threshold (``rule``): ``percentile``: the q-th percentile (default 99.5) of every pixel of the normal
  references' maps; ``sigma``: their mean + k·σ (default k = 3). Either way a normal map exceeds it on
  few pixels, and what exceeds it on an inspected item is a candidate.
- Candidates: the pixels above the threshold, opened with a square of ``opening`` px (scipy's
  ``binary_opening``; 0 or 1: none) to drop specks, then 8-connected components
  (``scipy.ndimage.label``) of at least ``min_area`` pixels, each with its box (y0, y1, x0, x1; ends
  exclusive), area, and the peak and mean score inside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import SalientError

RULES = ("percentile", "sigma")


@dataclass(frozen=True)
class Candidate:
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1), ends exclusive
    area: int
    peak: float
    mean: float


def calibrate_threshold(normal_maps: Iterable[np.ndarray], rule: str = "percentile", q: float = 99.5,
                        k: float = 3.0) -> float:
    """The candidate threshold from the normal references' maps (see the module docstring)."""
    if rule not in RULES:
        raise SalientError(f"threshold rule must be one of {', '.join(RULES)}, got {rule!r}")
    values = [np.asarray(m, dtype=np.float64).ravel() for m in normal_maps]
    if not values:
        raise SalientError("no normal reference maps to calibrate the threshold on")
    v = np.concatenate(values)
    if not np.isfinite(v).all():
        raise SalientError("a normal reference's map holds NaN or infinite values")
    if rule == "percentile":
        if not 0 < q < 100:
            raise SalientError(f"percentile q must be in (0, 100), got {q}")
        return float(np.percentile(v, q))
    return float(v.mean() + k * v.std())


def find_candidates(anomaly: np.ndarray, threshold: float, opening: int = 3, min_area: int = 16) -> list[Candidate]:
    """The candidate regions of one map, in the order of their top-left pixel (raster order)."""
    a = np.asarray(anomaly, dtype=np.float64)
    above = a > threshold
    if opening > 1:
        above = ndimage.binary_opening(above, structure=np.ones((opening, opening), bool))
    labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = labels[sl] == i
        area = int(region.sum())
        if area < min_area:
            continue
        vals = a[sl][region]
        out.append(Candidate((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), area, float(vals.max()),
                             float(vals.mean())))
    return out

