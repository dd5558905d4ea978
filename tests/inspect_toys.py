"""Autoencoders with known answers for the inspection tests, loadable as ``inspect_toys:<name>`` specs."""

from __future__ import annotations

import torch
from torch import nn

REGION = (8, 16, 10, 20)  # y0, y1, x0, x1 of the region the region AE cannot reproduce


class RegionAE(nn.Module):
    """Reproduces its input exactly, except inside REGION, where it outputs 0."""

    def forward(self, x):
        y0, y1, x0, x1 = REGION
        keep = torch.ones_like(x)
        keep[..., y0:y1, x0:x1] = 0
        return x * keep


class NaNAE(nn.Module):
    """NaN where the input is bright (> 0.9)."""

    def forward(self, x):
        return torch.where(x > 0.9, torch.full_like(x, float("nan")), x)


class Shrinks(nn.Module):
    def forward(self, x):
        return x[..., 1:, 1:]


def region_ae() -> nn.Module:
    return RegionAE()


def nan_ae() -> nn.Module:
    return NaNAE()


def shrinks() -> nn.Module:
    return Shrinks()
