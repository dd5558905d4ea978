"""``salient.explain``: one photo through the engine, a huge image tile by tile, or a video clip by clip.

``explain(model, image, method, target, seed, tiles=False, ...)`` calls
:func:`salient.engine.explain` for an image, :func:`salient.jobs.tiles.explain_slide` (tile
mode, returning a :class:`~salient.jobs.tiles.TiledSaliency` whose ``map`` is the whole mosaic) when
``tiles`` is true or ``image`` is a :class:`~salient.io.Slide` (from :func:`salient.open_slide`), and
:func:`salient.jobs.video.explain_video` (a :class:`~salient.jobs.video.VideoSaliency` whose ``map`` is
the whole map along t) when ``image`` is a :class:`~salient.io.Video` (from :func:`salient.open_video`)
or a video file's path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import explain as engine_explain
from .errors import SalientError
from .io.slides import Slide
from .io.video import Video, is_video_path


def explain(model: Any, image: Any, method: str = "rise", target: int | str = "top1", seed: int = 0, *,
            tiles: bool = False, tile: int | None = None, overlap: float = 0.0, level: int | None = None,
            skip_background: bool = False, whole: bool = False, clip_stride: int | None = None,
            fps: float | None = None, frame_step: int | None = None, top_clips: int | None = None,
            **params: Any) -> Any:
    """Explain one image (see :func:`salient.engine.explain`), or a slide in tile mode (``tiles``,
    ``tile``, ``overlap``, ``level``, ``skip_background``: :mod:`salient.jobs.tiles`), or an image or a
    slide's level ``level`` at its native size (``whole``: :mod:`salient.engine.whole`), or a video clip
    by clip with a video net or a ``frames:`` model (``clip_stride``, ``fps``, ``frame_step``, ``top_clips``:
    :mod:`salient.jobs.video`)."""
    if isinstance(image, Video) or isinstance(image, (str, Path)) and is_video_path(str(image)):
        if whole or tiles:
            raise SalientError("whole and tiles apply to images; a video is explained clip by clip")
        from .jobs.video import explain_video

        return explain_video(model, image, method, target, seed, clip_stride=clip_stride, fps=fps,
                             frame_step=frame_step, top_clips=top_clips, **params)
    if any(v is not None for v in (clip_stride, fps, frame_step, top_clips)):
        raise SalientError("clip_stride, fps, frame_step and top_clips apply to videos")
    if whole:
        if tiles:
            raise SalientError("whole and tiles exclude each other: choose one")
        return engine_explain(model, image, method, target, seed, whole=True, level=level, **params)
    if tiles or isinstance(image, Slide):
        from .jobs.tiles import explain_slide

        return explain_slide(model, image, method, target, seed, tile=tile, overlap=overlap, level=level,
                             skip_background=skip_background, **params)
    return engine_explain(model, image, method, target, seed, **params)
