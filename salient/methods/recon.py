"""Reconstruction anomaly maps: an autoencoder's error per pixel (visual inspection)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import SalientError
from ..queries.inspection import ReconQuery
from .base import Request, register

RECON_KINDS = ("abs", "ssim")


@register("recon", signed=False, output="reconstruction")
def recon(req: Request, sigma: float = 4.0, kind: str = "abs"):
    """Anomaly map of an autoencoder A (a model with ``output=reconstruction``): with x the item's input,
    map = G_σ * Σ_c |x_c − A(x)_c| (``kind="abs"``), or G_σ * (1 − SSIM(x, A(x))) (``kind="ssim"``),
    G_σ a Gaussian of σ pixels (scipy's ``gaussian_filter``, reflect borders; σ = 0: none). One forward
    pass; unsigned. The candidates and the Siamese re-check on top of it are :mod:`salient.inspect`."""
    if kind not in RECON_KINDS:
        raise SalientError(f"recon: kind must be one of {', '.join(RECON_KINDS)}, got {kind!r}")
    if not sigma >= 0:
        raise SalientError(f"recon: sigma must be >= 0, got {sigma}")
    (err,) = yield [ReconQuery(req.item, kind=kind)]
    err = np.asarray(err, dtype=np.float64)
    if sigma > 0:
        err = gaussian_filter(err, sigma=float(sigma), mode="reflect")
    return err[None].astype(np.float32)
