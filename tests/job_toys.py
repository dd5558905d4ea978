"""Tiny models for job tests, loadable as ``job_toys:<name>`` specs (tests/ is on sys.path; a
subprocess needs ``PYTHONPATH=tests``). Identity preprocessing at 32 x 32: see :data:`OPTIONS`."""

from __future__ import annotations

import os
import time

import torch
from torch import nn
from toy_models import ConvBnReLU6, Linear

OPTIONS = {"input_size": 32, "mean": "0,0,0", "std": "1,1,1", "score": "logit"}


def spec(name: str) -> str:
    return f"job_toys:{name}?" + "&".join(f"{k}={v}" for k, v in OPTIONS.items())


def linear() -> nn.Module:
    return Linear(n_classes=3, size=32, seed=0)


def conv() -> nn.Module:
    """A small CNN: CAMs find a layer with a feature map in it."""
    return ConvBnReLU6()


class NanOnWhite(Linear):
    """Linear, but NaN logits for an input whose channel-0 mean exceeds 0.95 (a white image)."""

    def forward(self, x):
        out = super().forward(x)
        white = x[:, 0].mean(dim=(-2, -1)) > 0.95
        return torch.where(white[:, None], torch.full_like(out, float("nan")), out)


def nan_on_white() -> nn.Module:
    return NanOnWhite(n_classes=3, size=32, seed=0)


class Slow(Linear):
    """Linear with a sleep per forward call (``SALIENT_TOY_SLEEP`` seconds, default 0.05)."""

    def forward(self, x):
        time.sleep(float(os.environ.get("SALIENT_TOY_SLEEP", "0.05")))
        return super().forward(x)


def slow() -> nn.Module:
    return Slow(n_classes=3, size=32, seed=0)


def kill_when_done(proc, meta, progress, at_least: int, seconds: float = 120) -> int:
    """SIGKILL ``proc`` once ``progress(attributes)`` of the zarr.json at ``meta`` reaches ``at_least``
    (finished bands of a mosaic or a map along t); returns the progress it was killed at (or reached)."""
    import json
    import signal

    t0, done = time.monotonic(), 0
    while time.monotonic() - t0 < seconds and proc.poll() is None:
        try:
            done = progress(json.loads(meta.read_text())["attributes"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= at_least:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    return done
