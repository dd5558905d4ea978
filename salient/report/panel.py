"""The DiDA-View panel: the original photo and one overlay per class, side by side, each titled.

Every tile keeps the photo's aspect ratio at a common height (``tile_height``); the original's title
is the image name, each overlay's is "label (id)  score". Tiles are separated by ``gap`` white pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from ..images import Image, load_image
from ..saliency import Saliency
from .overlay import overlay, save_png, to_uint8

TITLE_HEIGHT = 22
FONT_SIZE = 14


def title_of(s: Saliency) -> str:
    return f"{s.label or s.target} ({s.target})  {s.base_score:.3f}"


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _tile(rgb: np.ndarray, title: str, height: int, font) -> PILImage.Image:
    im = PILImage.fromarray(rgb)
    width = max(1, round(im.width * height / im.height))
    if (width, height) != im.size:
        im = im.resize((width, height), PILImage.Resampling.LANCZOS)
    tile = PILImage.new("RGB", (width, height + TITLE_HEIGHT), "white")
    tile.paste(im, (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(tile)
    draw.text((3, 3), _fit(draw, title, font, width - 6), fill="black", font=font)
    return tile


def panel(image: Image | np.ndarray | str | os.PathLike, saliencies: Sequence[Saliency], alpha: float = 0.5,
          tile_height: int = 256, gap: int = 4, **overlay_kw) -> np.ndarray:
    """uint8 (tile_height + 22, W, 3): the original, then :func:`overlay` of each saliency, titled."""
    if not saliencies:
        raise ValueError("panel needs at least one saliency map")
    img = load_image(image)
    tiles = [(to_uint8(img.pixels), img.name)]
    tiles += [(overlay(img, s, alpha, **overlay_kw), title_of(s)) for s in saliencies]
    return strip(tiles, tile_height, gap)


def strip(images: Sequence[tuple[np.ndarray, str]], tile_height: int = 256, gap: int = 4) -> np.ndarray:
    """uint8 (tile_height + 22, W, 3): (RGB, title) tiles side by side at a common height, titled."""
    font = ImageFont.load_default(size=FONT_SIZE)
    tiles = [_tile(rgb, title, tile_height, font) for rgb, title in images]
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    out = PILImage.new("RGB", (width, tiles[0].height), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + gap
    return np.asarray(out)


def save_panel(path: str | os.PathLike, image: Image | np.ndarray | str | os.PathLike,
               saliencies: Sequence[Saliency], **kw) -> Path:
    """:func:`panel` written to ``path`` as PNG; returns the path."""
    return save_png(path, panel(image, saliencies, **kw))
