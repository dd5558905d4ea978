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
OUTPUTS = ("classes", "reconstruction", "embedding")  # what a model's output is (Model.output)


def resized(image: Image, size: tuple[int, int]) -> torch.Tensor:
    """The image's pixels as (C, H, W) at ``size`` (bilinear, antialiased, whole image, aspect ratio not
    kept: what every model's preprocessing does before normalising), clamped to [0, 1]."""
    x = torch.from_numpy(image.pixels).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].clamp(0.0, 1.0)


@dataclass
class Model:
    """A classifier with its preprocessing, labels and score kind.

    Preprocessing: bilinear (antialiased) resize of the whole image to ``input_size`` (aspect ratio
    not kept, so the map covers the whole photo), then ``(x - mean) / std`` per channel.
    ``score(logits)`` turns raw outputs into the scores that methods explain.
    Video nets have ``frames`` > 0: their input is a clip (C, T, H, W) (``preprocess_clip``).
    ``output``: "classes" (a classifier, (N, K)), "reconstruction" (an autoencoder: its output has its
    input's shape, explained by the ``recon`` method) or "embedding" (a metric-learning net, (N, D)).
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
    frames: int = 0  # > 0: a video net whose input is (C, frames, H, W)
    activation_bytes: int = 0  # the largest activation of one input (measured by load_model; 0: unknown)
    output: str = "classes"

    def __post_init__(self) -> None:
        if self.score_kind not in SCORE_KINDS:
            raise SalientError(f"unknown score kind {self.score_kind!r}; choose one of {', '.join(SCORE_KINDS)}")
        if self.output not in OUTPUTS:
            raise SalientError(f"unknown model output {self.output!r}; choose one of {', '.join(OUTPUTS)}")
        self.module.eval()

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input without the batch axis: (C, H, W), or (C, T, H, W) for a video net."""
        return (self.channels, self.frames, *self.input_size) if self.frames else (self.channels, *self.input_size)

    @property
    def memory_format(self) -> torch.memory_format:
        """Layout for the module and its input batches: channels_last for 2-D nets, plain for video nets."""
        return torch.contiguous_format if self.frames else torch.channels_last

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std over the channel axis (axis -3)."""
        shape = (-1, 1, 1)
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - m) / s

    def black(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Pixel value 0 before normalisation, in normalised space: shape (C, 1, 1) ((C, 1, 1, 1) for video)."""
        black = self.normalize(torch.zeros(self.channels, 1, 1, device=device))
        return black[..., None] if self.frames else black

    def preprocess(self, image: Image | np.ndarray | torch.Tensor | str) -> torch.Tensor:
        """Image -> normalised float32 tensor (C, H, W) at the model's input size."""
        return self.normalize(resized(load_image(image), self.input_size)).contiguous()

    def preprocess_clip(self, clip: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames (a sequence of images, e.g. an array (T, H, W, 3)), each as ``preprocess`` -> (C, T, H, W)."""
        if len(clip) == 0:
            raise SalientError("empty clip: expected frames (T, H, W, 3)")
        return torch.stack([self.preprocess(frame) for frame in clip], dim=1).contiguous()

    def score(self, logits: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """Raw outputs (N, K) -> scores (N, K) of ``kind`` (default: the model's score kind), in float32."""
        logits = logits.float()
        kind = kind or self.score_kind
        if kind == "softmax":
            return logits.softmax(dim=-1)
        if kind == "sigmoid":
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
