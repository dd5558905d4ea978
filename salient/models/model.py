"""A loaded classifier: the module plus everything needed to feed it and read its output."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SalientError
from ..images import Image, load_image

SCORE_KINDS = ("softmax", "logit", "sigmoid")


@dataclass
class Model:
    """A classifier with its preprocessing, labels and score kind.

    Preprocessing: bilinear (antialiased) resize of the whole image to ``input_size`` (aspect ratio
    not kept, so the map covers the whole photo), then ``(x - mean) / std`` per channel.
    ``score(logits)`` turns raw outputs into the scores that methods explain.
    """

    module: nn.Module
    name: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: list[str]
    score_kind: str = "softmax"
    spec: str = ""
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.score_kind not in SCORE_KINDS:
            raise SalientError(f"unknown score kind {self.score_kind!r}; choose one of {', '.join(SCORE_KINDS)}")
        self.module.eval()

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std over the channel axis (axis -3)."""
        shape = (-1, 1, 1)
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - m) / s

    def black(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Pixel value 0 before normalisation, in normalised space: shape (C, 1, 1)."""
        return self.normalize(torch.zeros(self.channels, 1, 1, device=device))

    def preprocess(self, image: Image | np.ndarray | torch.Tensor | str) -> torch.Tensor:
        """Image -> normalised float32 tensor (C, H, W) at the model's input size."""
        image = load_image(image)
        x = torch.from_numpy(image.pixels).permute(2, 0, 1)[None]
        if tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return self.normalize(x[0].clamp(0.0, 1.0)).contiguous()

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw outputs (N, K) -> scores (N, K) of the model's score kind, in float32."""
        logits = logits.float()
        if self.score_kind == "softmax":
            return logits.softmax(dim=-1)
        if self.score_kind == "sigmoid":
            return logits.sigmoid()
        return logits

    def label(self, target: int) -> str:
        return self.labels[target] if 0 <= target < len(self.labels) else str(target)

    def resolve_target(self, target: int | str) -> int:
        """A class id or a label name (case-insensitive) -> class id."""
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            t = int(target)
            if not 0 <= t < self.n_classes:
                raise SalientError(f"target class id {t} out of range [0, {self.n_classes - 1}]")
            return t
        if isinstance(target, str):
            s = target.strip()
            if s.lstrip("-").isdigit():
                return self.resolve_target(int(s))
            low = s.lower()
            for i, name in enumerate(self.labels):
                if name.lower() == low:
                    return i
            close = [n for n in self.labels if low in n.lower()][:5]
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise SalientError(f"unknown target label {target!r}{hint}")
        raise SalientError(f"target must be a class id, a label, or topK; got {target!r}")
