"""Overlays of tile mode, at a display size, never from full resolution:

- the mosaic over the slide: the slide at the coarsest pyramid level whose longer side is still >=
  ``size`` (box-reduced band by band to about ``size``, :meth:`~salient.io.slides.Slide.thumbnail`),
  the map from the finest mosaic level that is not larger than that (OME-Zarr levels, resized to the
  thumbnail), blended as :func:`salient.report.overlay.overlay` does; NaN (skipped, failed) is shown
  as the map's minimum (no colour).
- the tile-score heat map: the target's score per tile (``items/<key>/score``), sequential colours,
  each tile a block of pixels (nearest), skipped and failed tiles black.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from ..images import Image
from ..io.slides import open_slide
from ..store.mosaic import display_level, read_level
from ..store.schema import ZARR_NAME, item_key
from .colormaps import colorize
from .overlay import overlay, save_png


def _group(out: str | os.PathLike, item_id: str) -> zarr.Group:
    return zarr.open_group(Path(out) / ZARR_NAME / "items" / item_key(item_id), mode="r")


def mosaic_overlay(out: str | os.PathLike, item_id: str, method: str, slide_path: str, size: int = 1024,
                   alpha: float = 0.5) -> np.ndarray:
    """uint8 (h, w, 3): the mosaic of ``item_id`` / ``method`` over its slide, longer side about ``size``."""
    node = _group(out, item_id)[method]
    with open_slide(slide_path) as slide:
        thumb = slide.thumbnail(size)
    m = read_level(node, display_level(node, max(thumb.shape[:2])))
    if np.isnan(m).all():
        m = np.zeros_like(m)
    m = np.where(np.isnan(m), np.nanmin(m), m)
    diverging = bool(node.attrs.get("diverging", False))
    return overlay(Image(thumb, item_id, slide_path), m, alpha=alpha, diverging=diverging)


def score_map(out: str | os.PathLike, item_id: str, size: int = 1024) -> np.ndarray:
    """uint8 (h, w, 3): the target's tile scores as a heat map, longer side about ``size``."""
    arr = _group(out, item_id)["score"]
    scores = np.asarray(arr[:])[..., int(arr.attrs["target"])]
    good = ~np.isnan(scores)
    rgb = colorize(np.where(good, scores, np.nanmin(scores) if good.any() else 0.0), False)
    rgb[~good] = 0.0
    f = max(1, size // max(scores.shape))
    rgb = np.repeat(np.repeat(rgb, f, axis=0), f, axis=1)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_mosaic_overlay(path: str | os.PathLike, out: str | os.PathLike, item_id: str, method: str,
                        slide_path: str, size: int = 1024) -> Path:
    return save_png(path, mosaic_overlay(out, item_id, method, slide_path, size))


def save_score_map(path: str | os.PathLike, out: str | os.PathLike, item_id: str, size: int = 1024) -> Path:
    return save_png(path, score_map(out, item_id, size))
