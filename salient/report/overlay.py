"""A saliency map drawn over its photo, at the photo's original size.

overlay = (1 − alpha) · photo + alpha · colour(map resized to the photo), in 8-bit RGB. The map is
resized bilinearly from the model's input resolution to the original (H0, W0) first, then coloured
(:mod:`salient.report.colormaps`), so a diverging map keeps zero = black and its scale is the one of
the map itself. A video map (T, H, W) is shown as its mean over t.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from ..images import Image, load_image
from ..saliency import Saliency
from .colormaps import DEFAULT_CMAP, colorize, signed_scale


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (H, W) float map to ``size`` = (H0, W0)."""
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 3:
        m = m.mean(axis=0)
    if m.ndim != 2:
        raise ValueError(f"expected a (H, W) or (T, H, W) map, got shape {m.shape}")
    if m.shape == tuple(size):
        return m
    out = PILImage.fromarray(np.ascontiguousarray(m)).resize((size[1], size[0]), PILImage.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8 (rounded, clipped)."""
    return _to_uint8_in_place(np.asarray(x, dtype=np.float32) * 255.0)


def _to_uint8_in_place(y: np.ndarray) -> np.ndarray:
    """float32 values already scaled to [0, 255] -> uint8, rounding and clipping ``y`` in place."""
    np.rint(y, out=y)
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8)


def overlay(image: Image | np.ndarray | str | os.PathLike, saliency: Saliency | np.ndarray, alpha: float = 0.5,
            diverging: bool | None = None, scale: float | None = None, cmap: str = DEFAULT_CMAP,
            bounds: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 (H0, W0, 3): the photo blended with the coloured map (see the module docstring).

    ``saliency`` is a :class:`Saliency`, coloured by its ``diverging``: the red/blue scale around 0 for
    maps whose sign means support vs opposition, else the relative sequential scale (``diverging``
    overrides it), or a bare map (then ``diverging`` says which); ``scale`` is the |d| at full brightness
    of a diverging map (default: its 99.5th percentile of |d|); ``bounds`` the (lo, hi) of a sequential
    map's min-max (default: its own).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = load_image(image)
    if isinstance(saliency, Saliency):
        m, diverging = saliency.map, saliency.diverging if diverging is None else diverging
    else:
        m, diverging = np.asarray(saliency, dtype=np.float32), bool(diverging)
    if diverging and scale is None:
        scale = signed_scale(m)
    out = colorize(resize_map(m, img.size), diverging, scale, cmap, bounds)  # a new float32 array, blended here
    out *= alpha
    out += (1.0 - alpha) * img.pixels  # the same sum as (1 - alpha) · photo + alpha · colour, one temporary
    out *= 255.0
    return _to_uint8_in_place(out)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) array as PNG, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG")
    return path


def save_overlay(path: str | os.PathLike, image: Image | np.ndarray | str | os.PathLike,
                 saliency: Saliency | np.ndarray, alpha: float = 0.5, **kw) -> Path:
    """:func:`overlay` written to ``path`` as PNG; returns the path."""
    return save_png(path, overlay(image, saliency, alpha, **kw))
