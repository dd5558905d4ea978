"""Insertion and deletion curves (RISE's causal metrics), as query generators.

Pixels are ordered by decreasing saliency (ties by index). Deletion starts from I and moves
``step`` pixels at a time to the substrate (default fill 0); insertion starts from the substrate
(default blur(I), Gaussian 11 x 11, sigma 5, in normalised space) and moves pixels to I.
step = H·W / 224 pixels (224 at 224²), n = ceil(H·W / step) steps, scores at n + 1 points.
AUC = (Σ a − a_0/2 − a_n/2) / n. Higher insertion and lower deletion are better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import SalientError
from ..kernels import check_fill
from ..methods.metric import register_metric
from ..queries import CurveQuery

CURVE_KINDS = ("insertion", "deletion")


@dataclass
class Curve:
    kind: str
    target: int
    counts: np.ndarray  # pixels moved at each point, (n + 1,)
    scores: np.ndarray  # (n + 1,)
    auc: float

    @property
    def fractions(self) -> np.ndarray:
        return self.counts / self.counts[-1]


def auc(scores: np.ndarray) -> float:
    """Trapezoid area under n + 1 equally spaced points on [0, 1]."""
    a = np.asarray(scores, dtype=np.float64)
    if a.size < 2:
        raise SalientError("a curve needs at least two points")
    return float((a.sum() - a[0] / 2 - a[-1] / 2) / (a.size - 1))


def curve_counts(size: tuple[int, int], step: int | None = None) -> np.ndarray:
    total = size[0] * size[1]
    step = max(1, round(total / 224)) if step is None else int(step)
    if step < 1:
        raise SalientError(f"step must be >= 1, got {step}")
    n = math.ceil(total / step)
    return np.minimum(np.arange(n + 1) * step, total)


def curve(item: str, size: tuple[int, int], saliency: np.ndarray, target: int, kind: str,
          step: int | None = None, substrate: str | float | None = None, chunk: int = 64):
    """Generator: the ``kind`` curve of ``saliency`` (H, W) for class ``target``; returns a Curve."""
    if kind not in CURVE_KINDS:
        raise SalientError(f"unknown curve {kind!r}; choose insertion or deletion")
    sal = np.asarray(saliency, dtype=np.float32)
    if sal.shape != tuple(size):
        raise SalientError(f"saliency map shape {sal.shape} differs from the input size {tuple(size)}")
    counts = curve_counts(size, step)
    if kind == "insertion":
        base, top = check_fill(substrate if substrate is not None else "blur"), "image"
    else:
        base, top = "image", check_fill(substrate if substrate is not None else "zero")
    parts = [tuple(int(c) for c in counts[i : i + chunk]) for i in range(0, len(counts), chunk)]
    results = yield [CurveQuery(item, (int(target),), saliency=sal, counts=p, base=base, top=top) for p in parts]
    scores = np.concatenate(results)[:, 0].astype(np.float64)
    return Curve(kind, int(target), counts, scores, auc(scores))


@register_metric("insertion", column="insertion_auc", higher_is_better=True)
def insertion_auc(item: str, size: tuple[int, int], saliency: np.ndarray, target: int, step: int | None = None,
                  substrate: str | float | None = None):
    """Insertion AUC: pixels moved from the substrate (blur(I) by default) to I in order of saliency."""
    return (yield from curve(item, size, saliency, target, "insertion", step=step, substrate=substrate)).auc


@register_metric("deletion", column="deletion_auc", higher_is_better=False)
def deletion_auc(item: str, size: tuple[int, int], saliency: np.ndarray, target: int, step: int | None = None,
                 substrate: str | float | None = None):
    """Deletion AUC: pixels moved from I to the substrate (fill 0 by default) in order of saliency."""
    return (yield from curve(item, size, saliency, target, "deletion", step=step, substrate=substrate)).auc
