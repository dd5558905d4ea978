"""The result of explaining one item for one target class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Saliency:
    """A saliency map at the model's input resolution.

    ``map`` is float32 of shape (H, W) (or (T, H, W) for video); ``signed`` says whether negative
    values carry meaning (evidence against the class) or the map is a non-negative importance.
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

    def __post_init__(self) -> None:
        self.map = np.asarray(self.map, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.map.shape)
