"""Tiny models for CLI tests, loadable as ``cli_toys:<name>`` specs (tests/ is on sys.path).

Use with identity preprocessing at 32 x 32, e.g. ``cli_toys:linear?input_size=32&mean=0,0,0&std=1,1,1``
(see :func:`spec`)."""

from __future__ import annotations

import torch
from torch import nn
from toy_models import ConvBnReLU6, Linear, Region

TOY_OPTIONS = "input_size=32&mean=0,0,0&std=1,1,1&score=logit"


def spec(name: str, **extra: str) -> str:
    """The model spec of toy ``name`` with identity preprocessing at 32 x 32 (plus ``extra`` options)."""
    more = "".join(f"&{k}={v}" for k, v in extra.items())
    return f"cli_toys:{name}?{TOY_OPTIONS}{more}"


def linear() -> nn.Module:
    return Linear(n_classes=3, size=32, seed=0)


def region() -> nn.Module:
    return Region(box=(8, 16, 20, 28))


def relu6() -> nn.Module:
    """Conv -> batch norm -> ReLU6 chains: the CPU fast paths (fusion, incremental) apply to it."""
    return ConvBnReLU6()


class Spatial(nn.Module):
    """Outputs (N, 2, H, W), not (N, classes)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def spatial() -> nn.Module:
    return Spatial()


class NaNWhen(nn.Module):
    """Linear logits, but NaN for every sample (``always``) or for samples holding an exact 0."""

    def __init__(self, always: bool):
        super().__init__()
        self.inner, self.always = Linear(n_classes=3, size=32, seed=0), always

    def forward(self, x):
        z = self.inner(x)
        bad = torch.ones_like(z[:, :1], dtype=torch.bool) if self.always else (x == 0).flatten(1).any(1, keepdim=True)
        return torch.where(bad, torch.full_like(z, float("nan")), z)


def nan_always() -> nn.Module:
    return NaNWhen(always=True)


def nan_masked() -> nn.Module:
    """Finite on photos without exact zeros; NaN once a window is occluded with baseline 0."""
    return NaNWhen(always=False)
