"""Parameters of the space-time (clip) forms of the methods: counts along t checked against the clip, and
the values used, recorded with the maps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import SalientError
from ..saliency import Maps
from .base import Request


def frame_count(method: str, name: str, value: Any, auto: int, frames: int) -> int:
    """A count along t for a clip of ``frames`` frames: ``value`` (an integer in [1, T]), or min(auto, T)
    when None; anything else is a one-line SalientError."""
    if value is None:
        return min(auto, frames)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise SalientError(f"{method}: {name} must be an integer, got {value!r}")
    if not 1 <= int(value) <= frames:
        raise SalientError(f"{method}: {name} must lie in [1, {frames}] (the clip's frames), got {int(value)}")
    return int(value)


def clip_only(req: Request, method: str, **given: Any) -> None:
    """Refuse clip-only parameters that were set on an image (``given``: name -> value, None = not set)."""
    if not req.frames:
        bad = [k for k, v in given.items() if v is not None]
        if bad:
            raise SalientError(f"{method}: {', '.join(bad)} apply to clips only; this input is an image")


def on_clip(req: Request, maps: np.ndarray, **used: Any) -> np.ndarray:
    """The float32 maps; on a clip, as :class:`Maps` carrying the parameter values ``used`` (defaults
    resolved against the clip), which the engine records in each map's parameters."""
    maps = maps.astype(np.float32)
    return Maps(maps, used) if req.frames else maps
