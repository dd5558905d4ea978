"""Results: the map of one item for one target class (:class:`Saliency`), and a method's maps as it
returns them (:class:`Maps`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Saliency:
    """A saliency map at the model's input resolution.

    ``map`` is float32 of shape (H, W) (or (T, H, W) for video); ``signed`` says whether it may hold
    negative values or is a non-negative importance. ``diverging`` (default: ``signed``) says whether
    the sign means support (+) vs opposition (−) of the class: such maps are shown on the diverging
    red/blue scale around 0 (DiDA, occlusion); all others, BOREx's and GP's signed maps included, on
    the relative (min-max) sequential scale, where only the order of the values counts.
    """

    map: np.ndarray
    signed: bool
    method: str
    target: int
    label: str = ""
    base_score: float = float("nan")
    n_forward: int = 0
    seconds: float = 0.0
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    item_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    diverging: bool | None = None

    def __post_init__(self) -> None:
        self.map = np.asarray(self.map, dtype=np.float32)
        if self.diverging is None:
            self.diverging = bool(self.signed)
        elif self.diverging and not self.signed:
            raise ValueError("a diverging map is signed")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.map.shape)


class Maps(np.ndarray):
    """Float32 maps (T, ...) that also carry resolved parameters (``params``, e.g. the CAM layer
    actually used); the engine merges them into each Saliency's parameters. Behaves as an array."""

    def __new__(cls, maps: Any, params: dict[str, Any]) -> Maps:
        obj = np.asarray(maps, dtype=np.float32).view(cls)
        obj.params = dict(params)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.params = getattr(obj, "params", {})
