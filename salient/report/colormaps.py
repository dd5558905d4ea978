"""Colour rules for saliency maps (no resizing, no photo): values in, RGB floats in [0, 1] out.

- Diverging maps (signed maps whose sign means support vs opposition of the class: DiDA's display,
  occlusion; ``Saliency.diverging``): red for d >= 0, blue for d < 0, black for 0. Brightness
  a(d) = min(|d| / scale, 1): increasing in |d| and clipped at full. ``scale`` defaults to the
  99.5th percentile of |d| over the map, so a few outliers saturate instead of dimming the rest.
- All other maps, unsigned ones and signed ones whose sign means nothing of the kind (BOREx, GP):
  min-max normalised to [0, 1] (relative: only the order of the values counts), then looked up in a
  sequential matplotlib colour map sampled at 256 levels (``inferno`` by default: dark = low, bright =
  high, lightness monotone in the value).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DEFAULT_CMAP = "inferno"
SIGNED_PERCENTILE = 99.5


def signed_scale(d: np.ndarray, percentile: float = SIGNED_PERCENTILE) -> float:
    """The |d| that maps to full brightness: a high percentile of |d| (0 when the map is all zero)."""
    a = np.abs(np.asarray(d, dtype=np.float64))
    if a.size == 0:
        return 0.0
    s = float(np.percentile(a, percentile))
    return s if s > 0 else float(a.max())


def signed_colors(d: np.ndarray, scale: float | None = None) -> np.ndarray:
    """(H, W) signed values -> (H, W, 3) RGB: (a, 0, 0) where d >= 0, (0, 0, a) where d < 0,
    a = min(|d| / scale, 1). A zero map (or scale 0) is all black."""
    d = np.asarray(d, dtype=np.float32)
    s = signed_scale(d) if scale is None else float(scale)
    a = np.clip(np.abs(d) / s, 0.0, 1.0) if s > 0 else np.zeros_like(d)
    rgb = np.zeros((*d.shape, 3), dtype=np.float32)
    rgb[..., 0] = np.where(d >= 0, a, 0.0)
    rgb[..., 2] = np.where(d < 0, a, 0.0)
    return rgb


def normalize_unsigned(v: np.ndarray, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max to [0, 1] (``bounds`` = (lo, hi) given: those instead of the map's own, values clipped);
    a constant map becomes all zeros."""
    v = np.asarray(v, dtype=np.float64)
    lo, hi = (float(v.min()), float(v.max())) if bounds is None else (float(bounds[0]), float(bounds[1]))
    if bounds is not None:
        v = np.clip(v, lo, hi)
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def sequential_colors(v: np.ndarray, cmap: str = DEFAULT_CMAP,
                      bounds: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) non-negative importance -> (H, W, 3) RGB through a sequential colour map (min-max over
    ``bounds`` when given: one scale for many maps, e.g. the frames of a video)."""
    return colormap_lut(cmap)[np.rint(normalize_unsigned(v, bounds) * 255.0).astype(np.intp)]


@lru_cache(maxsize=8)
def colormap_lut(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """The colour map sampled at 256 levels: float32 (256, 3)."""
    from matplotlib import colormaps

    return colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


def colorize(m: np.ndarray, signed: bool, scale: float | None = None, cmap: str = DEFAULT_CMAP,
             bounds: tuple[float, float] | None = None) -> np.ndarray:
    """The colour rule of a map: red/blue on black when ``signed`` (a diverging map), else sequential
    (min-max over ``bounds`` when given)."""
    return signed_colors(m, scale) if signed else sequential_colors(m, cmap, bounds)
