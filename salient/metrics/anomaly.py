"""Dataset metrics of anomaly maps against ground-truth defect masks (visual inspection).

- Pixel AUROC: the ROC AUC of every pixel's score against its mask value, over all images
  (scikit-learn's ``roc_auc_score``).
- AUPRO (Bergmann et al., MVTec AD): for a threshold t, FPR(t) = |{p ∉ M : s(p) >= t}| / |{p ∉ M}|
  over all images, and PRO(t) = the mean over every connected defect region R (8-connectivity, per
  image) of |{p ∈ R : s(p) >= t}| / |R|. The PRO-over-FPR curve is integrated (trapezoids) from
  FPR 0 to ``fpr_limit`` (0.3; the curve is interpolated linearly at the limit) and divided by
  ``fpr_limit``, as anomalib's ``AUPRO`` does, so that a perfect map scores 1. Thresholds are all the
  distinct scores (exact, no binning).
- Image AUROC: the ROC AUC of each image's score against whether its mask has any defect.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import SalientError


def _stack(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(maps) != len(masks):
        raise SalientError(f"{len(maps)} maps but {len(masks)} masks")
    out_m, out_k = [], []
    for i, (m, k) in enumerate(zip(maps, masks, strict=True)):
        m, k = np.asarray(m, dtype=np.float64), np.asarray(k).astype(bool)
        if m.shape != k.shape:
            raise SalientError(f"mask {i} has shape {k.shape}, its map {m.shape}")
        out_m.append(m)
        out_k.append(k)
    return out_m, out_k


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """ROC AUC of all pixels' scores against the masks (NaN when every pixel is normal or every one defective)."""
    from sklearn.metrics import roc_auc_score

    m, k = _stack(maps, masks)
    y = np.concatenate([a.ravel() for a in k])
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.concatenate([a.ravel() for a in m])))


def image_auroc(scores: Sequence[float], defective: Sequence[bool]) -> float:
    """ROC AUC of image scores against image labels (NaN with one class only)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(defective, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score as threshold, in increasing FPR, starting at (0, 0)."""
    from scipy import ndimage

    m, k = _stack(maps, masks)
    scores = np.concatenate([a.ravel() for a in m])
    normal = np.concatenate([~a.ravel() for a in k])
    weight = np.zeros(scores.size)  # per defective pixel: 1 / (its region's size · number of regions)
    offset, regions = 0, 0
    labels = []
    for a in k:
        lab, n = ndimage.label(a, structure=np.ones((3, 3), bool))
        labels.append((lab, n, offset))
        regions += n
        offset += a.size
    if regions == 0 or not normal.any():
        raise SalientError("AUPRO needs at least one defect region and one normal pixel")
    for lab, n, off in labels:
        if n:
            sizes = np.bincount(lab.ravel())
            flat = lab.ravel()
            inside = flat > 0
            weight[off + np.nonzero(inside)[0]] = 1.0 / (sizes[flat[inside]] * regions)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    fpr = np.cumsum(normal[order]) / normal.sum()
    pro = np.cumsum(weight[order])
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the end of each run of equal scores
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by it (see the module docstring)."""
    if not 0 < fpr_limit <= 1:
        raise SalientError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:  # interpolate the curve at the limit
        j = int(np.searchsorted(fpr, fpr_limit))
        y_lim = pro[j - 1] + (pro[j] - pro[j - 1]) * (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    from scipy.integrate import trapezoid

    return float(trapezoid(y, x) / fpr_limit)
