"""Reading images into one canonical form: float32 RGB in [0, 1], shape (H, W, 3).

Conversion rules (applied to files, arrays and tensors alike):
- grayscale (one channel, Pillow modes L/I/I;16/F) is replicated to three channels;
- an alpha channel (RGBA, LA, palette with transparency) is composited over white;
- palette images are expanded through their palette;
- integers are scaled by their type's maximum (8-bit by 255, 16-bit by 65535), so 16-bit depth
  is kept, not truncated; bool becomes 0/1;
- float arrays must already lie in [0, 1]; anything else is an error rather than a guess.
numpy arrays are (H, W), (H, W, C); torch tensors are (C, H, W) or (H, W); C in {1, 3, 4}.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import ItemError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


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
        x = arr.astype(np.float32) / float(info.max)
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


def load_image(src: str | os.PathLike | np.ndarray | torch.Tensor | Image, name: str | None = None) -> Image:
    """Load a path (JPEG, PNG, TIFF, WebP, BMP), numpy array or tensor as an :class:`Image`.

    Raises :class:`ItemError` with a one-line reason for a missing, unreadable, truncated or
    zero-sized image.
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
    path = Path(src)
    label = name or path.stem
    if not path.exists():
        raise ItemError(f"{path}: no such file")
    if path.is_dir():
        raise ItemError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ItemError(f"{path}: empty file (0 bytes)")
    try:
        with PILImage.open(path) as im:
            im.load()
            arr = _from_pil(im)
    except UnidentifiedImageError:
        if _png_zero_size(path):
            raise ItemError(f"{path}: zero-sized image (its PNG header gives width or height 0)") from None
        raise ItemError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except PILImage.DecompressionBombError as e:
        raise ItemError(f"{path}: corrupt or implausibly large image ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ItemError(f"{path}: corrupt or truncated image ({e})") from None
    return Image(_to_canonical(arr, str(path)), label, str(path))
