"""``salient.explain``: one photo through the engine, or a huge image tile by tile.

``explain(model, image, method, target, seed, tiles=False, ...)`` calls
:func:`salient.engine.explain` for an image, and :func:`salient.jobs.tiles.explain_slide` (tile
mode, returning a :class:`~salient.jobs.tiles.TiledSaliency` whose ``map`` is the whole mosaic) when
``tiles`` is true or ``image`` is a :class:`~salient.io.Slide` (from :func:`salient.open_slide`).
"""

from __future__ import annotations

from typing import Any

from .engine import explain as engine_explain
from .errors import SalientError
from .io.slides import Slide


def explain(model: Any, image: Any, method: str = "rise", target: int | str = "top1", seed: int = 0, *,
            tiles: bool = False, tile: int | None = None, overlap: float = 0.0, level: int | None = None,
            skip_background: bool = False, whole: bool = False, **params: Any) -> Any:
    """Explain one image (see :func:`salient.engine.explain`), or a slide in tile mode (``tiles``,
    ``tile``, ``overlap``, ``level``, ``skip_background``: :mod:`salient.jobs.tiles`), or an image or a
    slide's level ``level`` at its native size (``whole``: :mod:`salient.engine.whole`)."""
    if whole:
        if tiles:
            raise SalientError("whole and tiles exclude each other: choose one")
        return engine_explain(model, image, method, target, seed, whole=True, level=level, **params)
    if tiles or isinstance(image, Slide):
        from .jobs.tiles import explain_slide

        return explain_slide(model, image, method, target, seed, tile=tile, overlap=overlap, level=level,
                             skip_background=skip_background, **params)
    return engine_explain(model, image, method, target, seed, **params)
