"""A synthetic dataset where a class can be told by its object or by its background, and small CNNs
trained on it in a few seconds: the shortcut model (backgrounds carry the class, objects do not) and
the clean model (objects carry the class, backgrounds do not). Used by the audit tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

SIZE = 48
LABELS = ["alpha", "beta"]


def background(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Stripes: horizontal for class 0, vertical for class 1, random phase and colours, noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    phase = rng.integers(0, 6)
    stripes = (((yy if cls == 0 else xx) + phase) // 3) % 2
    lo, hi = rng.uniform(0.1, 0.35, 3), rng.uniform(0.55, 0.8, 3)
    img = np.where(stripes[..., None] == 1, hi, lo) + rng.normal(0, 0.03, (SIZE, SIZE, 3))
    return np.clip(img, 0, 1).astype(np.float32)


def object_mask(cls: int, rng: np.random.Generator) -> np.ndarray:
    """A disk (class 0) or a square (class 1), 16-20 px, at a random place."""
    r = int(rng.integers(8, 11))
    cy, cx = (int(v) for v in rng.integers(r + 2, SIZE - r - 2, 2))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if cls == 0:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return (np.abs(yy - cy) <= r - 1) & (np.abs(xx - cx) <= r - 1)


def sample(obj_cls: int, bg_cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    img = background(bg_cls, rng)
    mask = object_mask(obj_cls, rng)
    colour = np.array([0.9, 0.85, 0.2] if obj_cls == 0 else [0.2, 0.85, 0.9], np.float32)  # yellow disk, cyan square
    colour = colour + rng.normal(0, 0.03, 3).astype(np.float32)
    img[mask] = np.clip(colour, 0, 1)
    return img, mask


def training_set(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``shortcut``: the label is the background's class, the object's shape is random; ``clean``: the
    label is the object's shape, the background is random. Returns x (n, 3, S, S) in [0, 1], labels (n,)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        y = i % 2
        other = int(rng.integers(0, 2))
        img, _ = sample(other, y, rng) if kind == "shortcut" else sample(y, other, rng)
        xs.append(img)
        ys.append(y)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ys)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(-2, -1)))


def train(kind: str, steps: int = 150, seed: int = 0) -> nn.Module:
    """A SmallCNN trained on the ``kind`` training set (a few seconds on one core)."""
    torch.manual_seed(seed)
    x, y = training_set(kind, 512, seed + 1)
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@functools.cache
def _trained(kind: str) -> nn.Module:
    return train(kind)


def shortcut() -> nn.Module:
    """The shortcut model (trained once per process), loadable as the spec ``audit_toys:shortcut``."""
    return _trained("shortcut")


def clean() -> nn.Module:
    """The clean model (trained once per process), loadable as ``audit_toys:clean``."""
    return _trained("clean")


def write_dataset(folder: Path, n: int, seed: int = 7, with_masks: bool = True) -> Path:
    """n items whose object and background both carry the class (the natural distribution), as PNGs
    with exact masks, and a manifest ``items.csv`` (path, label, mask). Returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["path,label,mask"]
    for i in range(n):
        cls = i % 2
        img, mask = sample(cls, cls, rng)
        PILImage.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"item{i:03d}.png")
        PILImage.fromarray((mask * 255).astype(np.uint8)).save(folder / f"mask{i:03d}.png")
        lines.append(f"item{i:03d}.png,{LABELS[cls]},{f'mask{i:03d}.png' if with_masks else ''}")
    (folder / "items.csv").write_text("\n".join(lines) + "\n")
    return folder / "items.csv"


def job(folder: Path, model: str, out: str = "out", context=None, methods=None, metrics=None,
        executor=None) -> dict:
    """A job spec (mapping) over ``folder``'s manifest with ``model`` ("shortcut" or "clean")."""
    spec = {
        "model": {"name": f"audit_toys:{model}", "input_size": SIZE, "mean": "0,0,0", "std": "1,1,1", "labels": LABELS},
        "source": {"manifest": str(folder / "items.csv")},
        "methods": methods or [{"name": "gradcam"}],
        "out": str(folder / out),
        "seed": 0,
        "audit": {"context": context or ["only_fg", "no_fg", "mean_bg", "only_bg_t", "mixed_same", "mixed_rand",
                                         "mixed_next", "perturb:gaussian_noise:3", "perturb:blur:3"]},
    }
    if metrics:
        spec["metrics"] = metrics
    if executor:
        spec["executor"] = executor
    return spec
