"""``frames:<image model spec>``: any image classifier lifted to clips, the clip's score being the mean of
its frames' scores.

``load_model("frames:efficientnet-lite0?frames=16")`` (``frames`` default 16, >= 1; every other option
goes to the image model's spec, e.g. ``frames:torchvision:resnet18?weights=r18.pth&frames=8``) gives a
Model with ``frames`` = T, the image model's input size, mean/std, labels and score kind, named
``frames:<image model name>``. Its module (:class:`FramesNet`) runs the image net once on the N·T
frames of a batch (N, C, T, H, W) -> logits z (N, T, K) and outputs, per score kind, the value whose
score is the mean over frames of the frames' scores (exactly, up to rounding):
- softmax: log(mean_t softmax(z_t)) = logsumexp_t(log_softmax(z_t)) − log T (softmax of it is the mean,
  since the mean of distributions sums to 1);
- logit: mean_t z_t;
- sigmoid: logit(p̄) with p̄ = mean_t sigmoid(z_t), as log p̄ − log(1 − p̄) from logsumexp_t of
  logsigmoid(±z_t) (no cancellation near 0 or 1).
White-box methods see that output as the model's raw logits: Grad-CAM differentiates it (for softmax,
log of the clip's mean probability, not a frame's raw logit), Score-CAM scores it. Their layer names
are the image model's (``layer4``, ``_blocks.15``): the wrapper exposes the image net as
``layers_module`` and folds a layer's activations (N·T, C', h, w) to a clip's (N, C', T, h, w)
(``fold_activation``), so the 3-D CAM rule (means and sums over t, i, j) applies
(:mod:`salient.methods.cam_layers`).
Not liftable (one-line SalientError): a video net, a reconstruction or embedding model, frames < 1, and
``frames:frames:...``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SalientError, short_repr
from .model import Model

PREFIX = "frames:"
DEFAULT_FRAMES = 16


def mean_scores(z: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-frame raw outputs z (N, T, K) -> outputs (N, K) whose ``kind`` score is the mean over T of the
    frames' scores (module docstring), in float32."""
    z = z.float()
    log_t = math.log(z.shape[1])
    if kind == "softmax":
        return torch.logsumexp(z.log_softmax(dim=-1), dim=1) - log_t
    if kind == "sigmoid":
        return torch.logsumexp(F.logsigmoid(z), dim=1) - torch.logsumexp(F.logsigmoid(-z), dim=1)
    return z.mean(dim=1)


class FramesNet(nn.Module):
    """An image net over clips: (N, C, T, H, W) -> the image net on (N·T, C, H, W) -> :func:`mean_scores`."""

    def __init__(self, image: nn.Module, frames: int, kind: str):
        super().__init__()
        self.image = image
        self.frames = int(frames)
        self.kind = kind

    @property
    def layers_module(self) -> nn.Module:
        """The module whose submodules name the CAM target layers: the image net."""
        return self.image

    def fold_activation(self, a: torch.Tensor) -> torch.Tensor:
        """A layer's output over the frames (N·T, C', ...) as clips (N, C', T, ...)."""
        return a.unflatten(0, (-1, self.frames)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the frames (N·T, C, H, W) laid out channels-last, in one copy: the image net's convolutions run
        # ~1.4x faster on CPU that way (EfficientNet-Lite0 at 224, measured) than on plain NCHW frames
        n, c, t = x.shape[:3]
        frames = x.permute(0, 2, *range(3, x.ndim), 1).reshape(n * t, *x.shape[3:], c)
        z = self.image(frames.permute(0, frames.ndim - 1, *range(1, frames.ndim - 1)))
        return mean_scores(z.unflatten(0, (-1, self.frames)), self.kind)


def frames_option(value: Any) -> int:
    """The ``frames`` option of a ``frames:`` spec: an integer >= 1."""
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else -1
    except ValueError:
        n = -1
    if n < 1:
        raise SalientError(f"frames: the number of frames must be an integer >= 1, got {short_repr(value)}")
    return n


def lift_spec(spec: str, name: str, opts: dict[str, Any], load: Callable[..., Model]) -> Model:
    """The Model of ``spec`` = ``frames:<inner>`` (``name`` its part before ``?``, ``opts`` its options):
    the inner image model loaded by ``load(inner, **options without frames)`` and lifted."""
    inner = name[len(PREFIX):].strip()
    if not inner:
        raise SalientError("frames: needs an image model spec after 'frames:' (e.g. frames:efficientnet-lite0)")
    if inner.startswith(PREFIX):
        raise SalientError(f"frames: cannot be nested ({short_repr(spec)}); write one frames: prefix")
    rest = dict(opts)
    t = frames_option(rest.pop("frames", DEFAULT_FRAMES))
    image = load(inner, **rest)
    if image.frames:
        raise SalientError(f"frames: lifts an image classifier; {image.name} is a video net "
                           f"(clips of {image.frames} frames): use it without frames:")
    if image.output != "classes":
        article = "an" if image.output[0] in "aeiou" else "a"
        raise SalientError(f"frames: lifts an image classifier; {image.name} is {article} {image.output} model")
    return lift(image, t, spec, {**rest, "frames": t})


def lift(image: Model, frames: int, spec: str = "", options: dict[str, Any] | None = None) -> Model:
    """The image classifier ``image`` as a video Model over clips of ``frames`` frames (module docstring)."""
    return Model(
        module=FramesNet(image.module, frames, image.score_kind), name=f"{PREFIX}{image.name}",
        input_size=tuple(image.input_size), mean=tuple(image.mean), std=tuple(image.std), labels=list(image.labels),
        score_kind=image.score_kind, spec=spec, options=dict(options or {}), frames=int(frames),
        activation_bytes=image.activation_bytes * int(frames), output="classes",
    )
