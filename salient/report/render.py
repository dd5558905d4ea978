"""A row of a store drawn as an image, for the report's gallery and the viewer's panels.

- :func:`render_row`: the row's map coloured by its rule (diverging: red/blue on black; else
  relative, sequential; :mod:`salient.report.colormaps`) and, with ``alpha`` > 0 and a readable
  photo, blended over the photo: (1 − alpha) · photo + alpha · colour. The colour scale comes from
  a reference: the whole video for a frame (so the frame slider never rescales; a video of more than
  :data:`MAX_FRAMES` frames: that many evenly strided frames, also for its mean over t), the coarsest
  pyramid level for a region of a huge image (so tiles of one view match), else the map itself.
- Sizes: the photo (or the map, without one) is shrunk to at most ``max_side`` pixels a side and
  the map resized bilinearly to it. A pyramid is read at the level that fits
  (:mod:`salient.report.pyramid`): the whole image for the report, a region for the viewer.
- :func:`photo_of`: the item's photo (its ``source``), or None when it cannot be read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from .colormaps import colormap_lut, signed_colors, signed_scale
from .overlay import resize_map, to_uint8
from .store_view import MapMissing, StoreView

MAX_SIDE = 512
MAX_FRAMES = 256  # a video map's mean over t and colour scale come from at most this many frames


@dataclass
class Rendered:
    """A drawn map: uint8 (H, W, 3), the pyramid level read (None: not a pyramid), the frame shown."""

    rgb: np.ndarray
    level: int | None = None
    frame: int | None = None


def colour(m: np.ndarray, diverging: bool, ref: np.ndarray | None = None) -> np.ndarray:
    """(H, W) -> (H, W, 3) float RGB with the scale of ``ref`` (default ``m``): diverging maps
    red/blue with full brightness at the 99.5th percentile of |ref|; others min-max of ``ref``."""
    ref = m if ref is None else ref
    if diverging:
        return signed_colors(m, signed_scale(ref))
    lo, hi = float(np.min(ref)), float(np.max(ref))
    v = np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)
    return colormap_lut()[np.rint(v * 255.0).astype(np.intp)]


def shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Resize uint8 RGB so that its longer side is at most ``max_side`` (aspect kept)."""
    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return rgb
    im = PILImage.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), PILImage.Resampling.LANCZOS)
    return np.asarray(im)


def photo_of(row: Any, max_side: int = MAX_SIDE, view: StoreView | None = None) -> np.ndarray | None:
    """The item's photo as uint8 RGB at most ``max_side`` a side, or None if it cannot be read. With
    ``view``, None for a huge image (a pyramid map): its source, a slide, is not read whole."""
    from ..images import load_image

    if view is not None:
        try:
            if view.pyramid(row) is not None:
                return None
        except MapMissing:
            pass
    try:
        return shrink(to_uint8(load_image(str(row["source"])).pixels), max_side)
    except Exception:  # noqa: BLE001 - a moved, deleted or non-image source (video, slide): map only
        return None


def render_row(view: StoreView, row: Any, alpha: float = 0.5, t: int | None = None, max_side: int = MAX_SIDE,
               region: tuple[float, float, float, float] | None = None, size: tuple[int, int] | None = None,
               photo: np.ndarray | None | bool = True) -> Rendered:
    """Draw ``row`` (see the module docstring). ``t``: a video frame (None: the mean over t);
    ``region`` = (y0, x0, y1, x1) of a pyramid in full-resolution pixels, drawn at ``size`` = (h, w);
    ``photo``: True to read it, False for the map alone, or an array to reuse. Raises MapMissing."""
    diverging = view.diverging(row)
    pyr = view.pyramid(row)
    level = frame = None
    if pyr is not None:
        ref, coarse = pyr.read(0, 0, *pyr.shapes[0], 1, 1)
        if region is None:
            m, level = pyr.display(max_side)
        else:
            h, w = size or (MAX_SIDE, MAX_SIDE)
            m, level = pyr.read(*region, h, w)
        photo = None
    else:
        ref = view.map_of(row, max_frames=MAX_FRAMES)  # a long video: its mean and scale from strided frames
        if ref.ndim == 3:
            frame = None if t is None else int(np.clip(t, 0, view.frames(row) - 1))
            m = ref.mean(axis=0) if frame is None else view.map_of(row, t=frame)
        else:
            m = ref
    if photo is True:
        photo = photo_of(row, max_side) if alpha > 0 and pyr is None else None
    elif photo is False:
        photo = None
    if size is not None:
        out = tuple(size)
    elif photo is not None:
        out = photo.shape[:2]
    else:
        s = min(1.0, max_side / max(m.shape[-2:]))
        out = (max(1, round(m.shape[-2] * s)), max(1, round(m.shape[-1] * s)))
    rgb = colour(resize_map(m, out), diverging, ref if ref.ndim == 2 else ref.reshape(-1, ref.shape[-1]))
    if photo is not None and alpha > 0:
        ph = photo if photo.shape[:2] == out else np.asarray(PILImage.fromarray(photo).resize(out[::-1]))
        rgb = alpha * rgb + (1.0 - alpha) * (ph.astype(np.float32) / 255.0)
    return Rendered(to_uint8(rgb), level, frame)


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 RGB -> PNG bytes."""
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()
