"""Reading images into one canonical form: float32 RGB in [0, 1], shape (H, W, 3).

Conversion rules (applied to files, arrays and tensors alike):
- grayscale (one channel, Pillow modes L/I/I;16/F) is replicated to three channels;
- an alpha channel (RGBA, LA, palette with transparency) is composited over white;
- palette images are expanded through their palette;
- integers are scaled by their type's maximum (8-bit by 255, 16-bit by 65535), so 16-bit depth
  is kept, not truncated; bool becomes 0/1;
- float arrays must already lie in [0, 1]; anything else is an error rather than a guess.
numpy arrays are (H, W), (H, W, C); torch tensors are (C, H, W) or (H, W); C in {1, 3, 4}.

Memory bound for files: an image of more than ``MAX_PIXELS`` (4096 x 4096, 16.8 MP) is reduced while
it is read, by the smallest integer factor that brings it to at most ``MAX_PIXELS`` (the model sees a
few hundred pixels a side; overlays are drawn on this copy). A JPEG is decoded at reduced scale
(Pillow's ``draft``: DCT scaling by 1/2, 1/4 or 1/8, then reduced the rest of the way); other formats
are decoded once in their own 8- or 16-bit type and box-reduced at once, and Pillow's full copy is
released before the float copy is made: reading costs at most the decoded file in Pillow's layout
(4 bytes per pixel for RGB and RGBA: 400 MB for 100 MP) or the reduced copy as float32 (at most
16.8 MP x 12 bytes = 201 MB), whichever is larger. Pillow refuses images above 179 MP (a decompression
bomb) with a one-line error. Images up to ``MAX_PIXELS`` are read as they are, bit for bit.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import ItemError, short_repr

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
MAX_PIXELS = 4096 * 4096  # larger images are reduced while they are read (see the module docstring)
# Pillow warns from 89 MP on; images that large are reduced here, so the warning tells the user nothing
# (its error, from 179 MP on, stays).
warnings.filterwarnings("ignore", category=PILImage.DecompressionBombWarning)


@dataclass
class Image:
    """An image ready for a model's preprocessing: ``pixels`` float32 (H, W, 3) in [0, 1]."""

    pixels: np.ndarray
    name: str = "image"
    source: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def _from_pil(im: PILImage.Image) -> np.ndarray:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("1", "L", "RGB", "RGBA", "LA"):
        arr = np.asarray(im)
    elif im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im).astype(np.uint16)
    elif im.mode == "I":
        arr = np.asarray(im)
        arr = arr.astype(np.uint16) if arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0 else arr
    elif im.mode == "F":
        arr = np.asarray(im).astype(np.float32)
    else:  # CMYK, YCbCr, LAB, HSV ...
        arr = np.asarray(im.convert("RGB"))
    return arr


def reduce_factor(width: int, height: int, max_pixels: int | None = None) -> int:
    """The smallest integer f with ceil(width / f) x ceil(height / f) <= ``max_pixels`` (default ``MAX_PIXELS``)."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    f = max(1, int((width * height / max_pixels) ** 0.5))
    while -(-width // f) * -(-height // f) > max_pixels:
        f += 1
    return f


def _decode(im: PILImage.Image, max_pixels: int | None = None) -> PILImage.Image:
    """Decode an opened file, reduced to at most ``max_pixels`` (JPEG: at reduced scale while decoding)."""
    f = reduce_factor(*im.size, max_pixels)
    if f > 1 and im.format == "JPEG":
        im.draft(im.mode, (-(-im.width // f), -(-im.height // f)))
    im.load()
    f = reduce_factor(*im.size, max_pixels)
    if f == 1:
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode.startswith("I;16"):
        im = im.convert("I")
    return im.reduce(f)


def _read(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """The file's pixels (reduced by ``_decode``); Pillow's copy is released on return, before any float copy."""
    with PILImage.open(path) as im:
        return _from_pil(_decode(im, max_pixels))


def _to_canonical(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ItemError(f"{name}: expected an image of shape (H, W) or (H, W, C) with C in 1..4, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ItemError(f"{name}: zero-sized image {arr.shape[:2]}")
    if arr.dtype == np.bool_:
        x = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min < 0 and arr.min() < 0:
            raise ItemError(f"{name}: negative pixel values in an integer image")
        x = arr.astype(np.float32)
        x /= float(info.max)  # in place: one float copy of the image, not two
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise ItemError(f"{name}: image contains NaN or infinite values")
        if x.min() < -1e-6 or x.max() > 1 + 1e-6:
            raise ItemError(
                f"{name}: float pixels must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]"
                " (divide 8-bit data by 255)"
            )
        x = np.clip(x, 0.0, 1.0)
    else:
        raise ItemError(f"{name}: unsupported pixel type {arr.dtype}")
    c = x.shape[2]
    if c in (2, 4):  # composite over white
        alpha = x[:, :, -1:]
        x = x[:, :, :-1] * alpha + (1.0 - alpha)
        c -= 1
    if c == 1:
        x = np.repeat(x, 3, axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _png_zero_size(path: Path) -> bool:
    """True for a PNG whose header declares width or height 0 (Pillow refuses to identify those)."""
    with open(path, "rb") as f:
        head = f.read(24)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and (
        int.from_bytes(head[16:20], "big") == 0 or int.from_bytes(head[20:24], "big") == 0)


def load_image(src: str | os.PathLike | np.ndarray | torch.Tensor | Image, name: str | None = None,
               max_pixels: int | None = None) -> Image:
    """Load a path (JPEG, PNG, TIFF, WebP, BMP), numpy array or tensor as an :class:`Image`.

    Raises :class:`ItemError` with a one-line reason for a missing, unreadable, truncated or
    zero-sized image, or an input of another type. Files above ``max_pixels`` (default ``MAX_PIXELS``) are
    reduced while read (whole mode reads larger ones at native size: :mod:`salient.engine.whole`).
    """
    if isinstance(src, Image):
        return src
    if isinstance(src, torch.Tensor):
        t = src.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):  # (C, H, W)
            t = t.permute(1, 2, 0)
        return Image(_to_canonical(t.numpy(), name or "tensor"), name or "tensor", "tensor")
    if isinstance(src, np.ndarray):
        return Image(_to_canonical(src, name or "array"), name or "array", "array")
    if not isinstance(src, (str, os.PathLike)):
        raise ItemError(f"load_image expects a file path, a numpy array, a torch tensor or an Image, "
                        f"got {type(src).__name__} {short_repr(src, 80)}")
    path = Path(src)
    label = name or path.stem
    if not path.exists():
        raise ItemError(f"{path}: no such file")
    if path.is_dir():
        raise ItemError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ItemError(f"{path}: empty file (0 bytes)")
    try:
        arr = _read(path, max_pixels)
    except UnidentifiedImageError:
        if _png_zero_size(path):
            raise ItemError(f"{path}: zero-sized image (its PNG header gives width or height 0)") from None
        raise ItemError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except PILImage.DecompressionBombError as e:
        raise ItemError(f"{path}: corrupt or implausibly large image ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ItemError(f"{path}: corrupt or truncated image ({e})") from None
    return Image(_to_canonical(arr, str(path)), label, str(path))
