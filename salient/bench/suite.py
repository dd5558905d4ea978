"""The standard suite of ``salient bench``: what is measured, with which parameters (versioned).

:data:`SUITE_VERSION` names this definition; results of two suite versions are not comparable
(``salient bench --compare`` refuses them). Change it whenever a case, a parameter or a rule that
moves the numbers changes.

A case is (input, size, method, parameters). Pixel sizes are given for a 224-pixel side and scale
with the input's side s: ``round(v · s / 224)`` (at least 1); grid cells, mask counts and BOREx's
sizes (which BOREx scales itself) do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SalientError, short_repr

SUITE_VERSION = "1"
REFERENCE_SIDE = 224

METHODS = ("rise", "dida", "occlusion", "scorecam", "borex")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "horse", "camera", "coins")  # cycled, in this order

# per input kind: method -> parameters (pixel sizes for a 224-pixel side; see the module docstring)
PHOTO_PARAMS: dict[str, dict[str, Any]] = {
    "rise": {"n_masks": 256, "cells": 7, "chunk": 32},  # 8 queries: one item's masks shard over up to 8 workers
    "dida": {"grids": (5, 9, 13), "weights": (0.2, 0.3, 0.5)},
    "occlusion": {"window": (32, 32), "stride": (16, 16)},
    "scorecam": {},
    "borex": {"prior": "rise", "iterations": 30},
}
HUGE_SIDE = 1024  # --huge: the photos resized to HUGE_SIDE x HUGE_SIDE, explained in whole mode
HUGE_PARAMS: dict[str, dict[str, Any]] = {
    "rise": {"n_masks": 32, "cells": 7},
    "occlusion": {"window": (112, 112), "stride": (112, 112)},
}
VIDEO_FRAMES = 4  # --video: clips of this many frames of a sample video through ``frames:<model>``
VIDEO = "carphone"
VIDEO_PARAMS: dict[str, dict[str, Any]] = {
    "rise": {"n_masks": 64, "cells": 7},
    "occlusion": {"window": (2, 56, 56), "stride": (2, 56, 56)},
}
PIXEL_KEYS = ("window", "stride")  # parameters in pixels (the last two values scale with the side)


@dataclass(frozen=True)
class Case:
    """One engine figure: ``method`` with ``params`` on inputs of kind ``input`` ("photo", "huge",
    "video") at side ``size`` (``whole``: at that native size, not the model's)."""

    input: str
    size: int
    method: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    whole: bool = False


def scaled(params: dict[str, Any], side: int) -> dict[str, Any]:
    """``params`` with the pixel sizes (:data:`PIXEL_KEYS`, spatial values) scaled from 224 to ``side``."""
    out = dict(params)
    for key in PIXEL_KEYS:
        if key in out:
            v = tuple(out[key])
            n = len(v) - 2  # a leading temporal value stays as it is
            out[key] = v[:n] + tuple(max(1, round(p * side / REFERENCE_SIDE)) for p in v[n:])
    return out


def parse_methods(text: str | None) -> tuple[str, ...]:
    """``"rise,dida"`` -> the suite's methods in that order; None or "" -> all of :data:`METHODS`."""
    if not text:
        return METHODS
    names = tuple(dict.fromkeys(m.strip().lower() for m in str(text).split(",") if m.strip()))
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise SalientError(f"unknown method {short_repr(bad[0] if bad else text, 40)} for salient bench; "
                           f"choose from {', '.join(METHODS)}")
    return names


def parse_counts(text: str | None, what: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4): positive integers, duplicates dropped, in the order given."""
    try:
        out = tuple(dict.fromkeys(int(v) for v in str(text).split(",") if v.strip()))
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise SalientError(f"{what} expects positive integers separated by commas, got {short_repr(text, 40)}")
    return out


def cases(methods: tuple[str, ...], sizes: tuple[int, ...], model_side: int, huge: bool = False,
          video: bool = False) -> list[Case]:
    """The suite's engine cases, in run order: each size (the model's own side as photos resized to it, others in
    whole mode), then ``huge`` and ``video`` (their methods among ``methods``)."""
    out = [Case("photo", s, m, scaled(PHOTO_PARAMS[m], s), whole=s != model_side) for s in sizes for m in methods]
    if huge:
        out += [Case("huge", HUGE_SIDE, m, scaled(p, HUGE_SIDE), whole=True) for m, p in HUGE_PARAMS.items()
                if m in methods]
    if video:
        out += [Case("video", model_side, m, scaled(p, model_side)) for m, p in VIDEO_PARAMS.items() if m in methods]
    return out
