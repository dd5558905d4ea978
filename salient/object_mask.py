"""An item's object mask at the map's resolution, from a mask image or a box.

A map is at the model's input size (h, w); ``Model.preprocess`` resizes the whole image to it
without keeping the aspect ratio, so image pixel (y, x) lands at (y·h/H, x·w/W). The object mask
follows the same mapping by **area coverage**: each input cell [i, i+1) x [j, j+1) (in input
coordinates) gets the fraction c_ij of its area, traced back onto the image, that the object
covers, and is an object cell if c_ij >= 1/2. Coverage is exact for any ratio H/h (downscaling and
upscaling, fractional box edges), separable: C = W_y · M · W_xᵀ with W[i, k] = |[k, k+1) ∩ [i·s,
(i+1)·s)| / s, s = n_in / n_out. An object smaller than half a cell everywhere is not lost: if no
cell reaches 1/2 but some have coverage > 0, the cells of largest coverage are the mask.

Mask images (read with PIL, size must equal the image's):
- mode ``1``: its bits; mode ``P``: palette index != 0 (index masks);
- integer grey values (other modes are converted to ``L``): a 0/1 label image (every value 0 or 1)
  is taken as is; otherwise the grey value is scaled to [0, 1] (by 255 for 8-bit, 65535 for 16/32-bit)
  and the object is where it is **> threshold** (default 0.5, i.e. 8-bit values >= 128);
- float (mode ``F``): the value itself > threshold.
A box is (x0, y0, x1, y1) in image pixels (edges, x1/y1 exclusive), 0 <= x0 < x1 <= W and
0 <= y0 < y1 <= H. Given both, the mask image is used and the box is still checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ItemError, SalientError

ROW_BLOCK = 1024  # image rows resized at a time (bounds the float copy of a huge mask)


def object_mask(mask_path: str | None, box: Sequence[float] | None, image_size: tuple[int, int],
                size: tuple[int, int], threshold: float = 0.5) -> np.ndarray | None:
    """The object mask (bool, shape ``size`` = (h, w), the model's input grid) of an image of
    ``image_size`` (H, W), from the mask image at ``mask_path`` or else from ``box`` (see the module
    docstring for the thresholds and the area-coverage resize). None if neither is given. An empty
    mask gives an all-False array (metrics on it are NaN). A bad mask or box raises a one-line
    ItemError; a threshold outside [0, 1) a SalientError."""
    if not 0 <= threshold < 1:
        raise SalientError(f"mask threshold must be in [0, 1), got {threshold}")
    image_size = (int(image_size[0]), int(image_size[1]))
    size = (int(size[0]), int(size[1]))
    if box is not None:
        check_box(box, image_size)
    if mask_path:
        return _decide(area_coverage(read_mask(mask_path, image_size, threshold), size))
    if box is not None:
        return _decide(box_coverage(box, image_size, size))
    return None


def read_mask(path: str, image_size: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """A mask image as bool (H, W) at its own size, which must be ``image_size``; thresholds as in
    the module docstring."""
    from PIL import Image as PILImage

    p = Path(path)
    if not p.is_file():
        raise ItemError(f"mask {path}: no such file")
    try:
        with PILImage.open(p) as im:
            w, h = im.size
            if (h, w) != tuple(image_size):
                raise ItemError(f"mask {path}: size {h}x{w} differs from its image's {image_size[0]}x{image_size[1]}")
            if im.mode == "1":
                return np.asarray(im, dtype=bool)
            if im.mode == "P":
                return np.asarray(im) != 0
            if im.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                im = im.convert("L")
            arr = np.asarray(im)
    except ItemError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is the item's
        raise ItemError(f"mask {path}: not a readable image ({str(e).splitlines()[0]})") from None
    if arr.dtype.kind == "f":
        return np.nan_to_num(arr.astype(np.float64), nan=0.0) > threshold
    if arr.size and int(arr.max()) <= 1 and int(arr.min()) >= 0:  # a 0/1 label image
        return arr == 1
    scale = 255.0 if arr.dtype == np.uint8 else 65535.0
    return arr.astype(np.float64) / scale > threshold


def check_box(box: Sequence[float], image_size: tuple[int, int]) -> None:
    """A box (x0, y0, x1, y1) must lie inside an image of ``image_size`` (H, W) and be non-empty."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = image_size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ItemError(f"box {list(box)}: expected 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")


def coverage_weights(n_in: int, n_out: int) -> np.ndarray:
    """W (n_out, n_in), float64: W[i, k] = |[k, k+1) ∩ [i·s, (i+1)·s)| / s with s = n_in / n_out;
    each row sums to 1 (the area average over output cell i)."""
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    k = np.arange(n_in)[None, :]
    return np.clip(np.minimum(k + 1, lo + s) - np.maximum(k, lo), 0, None) / s


def area_coverage(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The fraction of each cell of the (h, w) grid that the bool mask (H, W) covers, float64 (h, w)."""
    big_h, big_w = mask.shape
    wy, wx = coverage_weights(big_h, size[0]), coverage_weights(big_w, size[1])
    cov = np.zeros((size[0], big_w))
    for r in range(0, big_h, ROW_BLOCK):  # C = W_y · M · W_xᵀ, M a block of rows at a time
        cov += wy[:, r : r + ROW_BLOCK] @ mask[r : r + ROW_BLOCK].astype(np.float64)
    return cov @ wx.T


def box_coverage(box: Sequence[float], image_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The fraction of each cell of the (h, w) grid that the box covers, float64 (h, w): the box
    scaled to the grid, c_ij = |[i, i+1) ∩ [y0', y1')| · |[j, j+1) ∩ [x0', x1')|."""
    x0, y0, x1, y1 = (float(v) for v in box)
    (big_h, big_w), (h, w) = image_size, size

    def along(a: float, b: float, n: int) -> np.ndarray:
        i = np.arange(n)
        return np.clip(np.minimum(i + 1, b) - np.maximum(i, a), 0, None)

    return along(y0 * h / big_h, y1 * h / big_h, h)[:, None] * along(x0 * w / big_w, x1 * w / big_w, w)[None, :]


def _decide(cov: np.ndarray) -> np.ndarray:
    """Cells covered at least half; if none is, the cells of largest non-zero coverage."""
    out = cov >= 0.5 - 1e-9
    if not out.any() and cov.max(initial=0.0) > 0:
        out = cov >= cov.max() - 1e-12
    return out
