"""Tiny models for tile-mode tests, loadable as ``slide_toys:<name>`` specs (tests/ is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn
from toy_models import Linear, TinyConv

OPTIONS = "mean=0,0,0&std=1,1,1&score=logit"
CHANNEL_WEIGHTS = (0.5, -1.25, 2.0)


def spec(name: str, size: int = 16) -> str:
    return f"slide_toys:{name}?input_size={size}&{OPTIONS}"


class ChannelSum(nn.Module):
    """logit_k = (k + 1) · Σ_c w_c Σ_p x_c(p): a linear patch model whose weight does not depend on the
    position in the tile, so the 1-pixel occlusion map is (k + 1) · Σ_c w_c (x_c(p) − baseline) in every tile."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor(CHANNEL_WEIGHTS))

    def forward(self, x):
        z = torch.einsum("nchw,c->n", x, self.w)
        return torch.stack([z, 2 * z], dim=1)


def channel_sum() -> nn.Module:
    return ChannelSum()


def linear16() -> nn.Module:
    return Linear(n_classes=3, size=16, seed=1)


def conv() -> nn.Module:
    return TinyConv(n_classes=3, seed=0)
