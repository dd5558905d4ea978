"""Model factories that go wrong, loadable as ``error_toys:<name>`` specs (tests/ is on sys.path)."""

from __future__ import annotations

import sys

import torch
from torch import nn
from toy_models import Linear


def raises() -> nn.Module:
    raise RuntimeError("the weights server is down")


def needs(depth: int, width: int = 8) -> nn.Module:
    return Linear(n_classes=3, size=32, seed=depth)


def exits() -> nn.Module:
    sys.exit(3)


class Video(nn.Module):
    """A tiny video net: (N, 3, T, H, W) -> (N, 2); a still image (N, 3, H, W) makes conv3d fail."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3, 4))


def video() -> nn.Module:
    return Video()


class Failing(nn.Module):
    def forward(self, x):
        raise RuntimeError("this net cannot run")


def warns() -> nn.Module:
    """Makes torch warn (as a real model's loading code may), then returns a net that fails on any input."""
    torch.meshgrid(torch.arange(2), torch.arange(2))  # torch: "pass the indexing argument" (a UserWarning)
    return Failing()
