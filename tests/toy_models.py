"""Tiny known-answer models for fast tests (built here, never downloaded)."""

from __future__ import annotations

import torch
from torch import nn

import salient


class Linear(nn.Module):
    """logits = <W_k, x> + b_k: occlusion of a window changes class k by exactly -<W_k, x - fill> there."""

    def __init__(self, n_classes: int = 3, size: int = 32, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_classes, channels, size, size, generator=g) / size)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.weight) + self.bias


class Region(nn.Module):
    """Class 0's logit is gain · mean of channel 0 over rows y0:y1, cols x0:x1 (nothing else matters);
    optional ``neg`` box lowers it by the same rule. Class 1's logit is 0."""

    def __init__(self, box=(8, 16, 20, 28), gain: float = 20.0, neg=None):
        super().__init__()
        self.box, self.gain, self.neg = box, gain, neg
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x):
        y0, y1, x0, x1 = self.box
        z = self.gain * x[:, 0, y0:y1, x0:x1].mean(dim=(-2, -1))
        if self.neg is not None:
            a0, a1, b0, b1 = self.neg
            z = z - self.gain * x[:, 0, a0:a1, b0:b1].mean(dim=(-2, -1))
        return torch.stack([z, torch.zeros_like(z)], dim=1) + 0 * self.dummy


def toy(module: nn.Module, size: int = 32, score: str = "logit", **opts) -> salient.Model:
    """Wrap a toy module as a salient Model with identity preprocessing (mean 0, std 1)."""
    return salient.load_model(module, input_size=size, mean="0,0,0", std="1,1,1", score=score, **opts)


class TinyConv(nn.Module):
    """A small seeded nonlinear net (conv, ReLU, pooling, linear) for tests that need more than a
    linear response; any input size."""

    def __init__(self, n_classes: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6 * 16, n_classes)

    def forward(self, x):
        z = torch.relu(self.conv(x))
        return self.head(nn.functional.adaptive_avg_pool2d(z, 4).flatten(1))


class NaNWhenBright(nn.Module):
    """``Linear`` logits, but NaN for every input whose top-left pixel (channel 0) exceeds ``limit``."""

    def __init__(self, limit: float = 0.9, size: int = 32):
        super().__init__()
        self.limit = limit
        self.linear = Linear(size=size)

    def forward(self, x):
        out = self.linear(x)
        bad = (x[:, 0, 0, 0] > self.limit)[:, None]
        return torch.where(bad, torch.full_like(out, float("nan")), out)


class FeatureMap(nn.Module):
    """Outputs (N, 3, H, W): not a classifier."""

    def forward(self, x):
        return x * 2


class ConvBnReLU6(nn.Module):
    """A small MobileNet-like net whose conv -> batch norm -> ReLU6 chains the CPU fusion rewrites
    (salient.engine.fuse) and the incremental plan splits: a stride-2 stem, two 3 x 3 blocks (one with
    a residual sum), pooling, a linear head. Seeded; any input size."""

    def __init__(self, n_classes: int = 3, width: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn0, self.bn1, self.bn2 = (nn.BatchNorm2d(width) for _ in range(3))
        self.act0, self.act1, self.act2 = nn.ReLU6(), nn.ReLU6(), nn.ReLU6()
        self.head = nn.Linear(width, n_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            for bn in (self.bn0, self.bn1, self.bn2):
                bn.running_mean.copy_(torch.randn(width, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(width, generator=g) + 0.5)
        self.eval()

    def forward(self, x):
        x = self.act0(self.bn0(self.stem(x)))
        x = x + self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def make_linear(n_classes: int = 3) -> nn.Module:
    """A ``pkg.module:callable`` entry point for model-spec tests."""
    return Linear(n_classes=n_classes, seed=7)
