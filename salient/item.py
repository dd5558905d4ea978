"""An item: one input the engine explains (a photo today; a tile or a clip of a larger source later)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Item:
    """One input: a stable id, the preprocessed tensor (C, H, W) (a clip: (C, T, H, W)), and where it came from."""

    id: str
    x: torch.Tensor
    image: Any = None  # the original salient.images.Image, for overlays
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    @property
    def frames(self) -> int:
        """T for a clip (C, T, H, W), 0 for an image."""
        return int(self.x.shape[1]) if self.x.ndim == 4 else 0
