"""Sample photos bundled with scikit-image (no download)."""

from __future__ import annotations

import skimage.data

from .images import Image, load_image

SAMPLE_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "horse")


def sample_images(names: tuple[str, ...] | list[str] | None = None) -> list[Image]:
    """scikit-image's bundled photos as :class:`Image` objects named after their loader."""
    out = []
    for n in names or SAMPLE_NAMES:
        arr = getattr(skimage.data, n)()
        out.append(load_image(arr, name=n))
    return out
