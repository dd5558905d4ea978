"""Context variants of an item: the object kept and its context changed, removed or perturbed.

After ImageNet-9 (Xiao et al. 2020, arXiv 2006.09994) and ImageNet-CS (Adhikari et al., "Lost in
Context", ICVGIP 2024). With x the item's normalised input (C, H, W), M its binary object mask at the
input size and ``fill(p)`` the normalised image of pixels p:

- ``original``: x (the reference every other variant is compared with);
- ``only_fg``: x·M + black·(1−M) (the object on black); ``no_fg``: x·(1−M) + black·M (object removed);
- ``only_bg_t``: the object's bounding box filled with tiled background (:func:`fill_from_surroundings`);
- ``mean_bg``: x·M + μ·(1−M) with μ the mean pixel of the data the model was trained on, i.e. its
  normalisation mean (0 in normalised space): "no information" for this model;
- ``mixed_same`` / ``mixed_rand`` / ``mixed_next``: x·M + B·(1−M), with B the ``only_bg_t`` image of
  another item (of the same class / of a random other class / of the next class in sorted order;
  chosen by :mod:`.partners`);
- ``perturb:<kind>:<severity>``: corr(I)·(1−M) + I·M, an ImageNet-C corruption (Hendrycks & Dietterich
  2019, its constants for severities 1-5) of the whole image in pixel space [0, 1], kept on the
  background only: ``gaussian_noise`` (σ .08 .12 .18 .26 .38), ``blur`` (Gaussian σ 1 2 3 4 6),
  ``brightness`` (V + .1 … .5 in HSV), ``contrast`` ((p − mean)·c + mean, c .4 .3 .2 .1 .05) and
  ``jpeg`` (quality 25 18 15 10 7).

Object pixels are copied from x itself (``torch.where``), so they are unchanged bit for bit; every
random draw comes from the seed handed in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ItemError, SalientError

MIXED = ("mixed_same", "mixed_rand", "mixed_next")
CHANGES = ("only_fg", "mean_bg", *MIXED)  # the background replaced: context change
REMOVALS = ("no_fg", "only_bg_t")  # the object removed: what the context alone says
VARIANT_KINDS = ("original", *CHANGES, *REMOVALS)
PERTURBATIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "blur": (1.0, 2.0, 3.0, 4.0, 6.0),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "jpeg": (25, 18, 15, 10, 7),
}


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: ``kind`` (one of VARIANT_KINDS or "perturb"), the corruption and severity."""

    name: str
    kind: str
    corruption: str = ""
    severity: int = 0

    @property
    def group(self) -> str:
        """"change" (background replaced), "removal" (object removed), "perturbation" or "original"."""
        if self.kind == "perturb":
            return "perturbation"
        return "change" if self.kind in CHANGES else "removal" if self.kind in REMOVALS else "original"

    @property
    def needs_partner(self) -> bool:
        return self.kind in MIXED


def parse_variant(name: str) -> Variant:
    """A variant name (see the module doc) -> Variant; a one-line SalientError for an unknown one."""
    s = str(name).strip()
    if s in VARIANT_KINDS:
        return Variant(s, s)
    parts = s.split(":")
    if parts[0] == "perturb":
        if len(parts) != 3 or parts[1] not in PERTURBATIONS:
            raise SalientError(f"unknown context perturbation {s!r}; use perturb:KIND:SEVERITY with KIND one of "
                               f"{', '.join(PERTURBATIONS)}")
        if not parts[2].isdigit() or not 1 <= int(parts[2]) <= 5:
            raise SalientError(f"context perturbation {s!r}: severity must be 1..5")
        return Variant(s, "perturb", parts[1], int(parts[2]))
    raise SalientError(f"unknown context variant {s!r}; choose one of {', '.join(VARIANT_KINDS[1:])} "
                       f"or perturb:KIND:SEVERITY")


# -- pixel space
def to_pixels(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised (C, H, W) -> pixels float32 (H, W, C) in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def from_pixels(p: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Pixels (H, W, C) in [0, 1] -> normalised float32 (C, H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=t.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=t.dtype).view(-1, 1, 1)
    return ((t - m) / s).contiguous()


def fill_from_surroundings(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ImageNet-9's ``only_bg_t``: the mask's bounding box filled by tiling the largest full-width or
    full-height strip of the image outside it (above, below, left or right; ties in that order). A box
    that leaves no strip is filled with the mean of the pixels outside the mask (the image's mean if
    the mask covers everything). An empty mask returns the pixels unchanged."""
    out = np.array(pixels, dtype=np.float32, copy=True)
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return out
    h, w = mask.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    strips = [(y0 * w, "top"), ((h - y1) * w, "bottom"), (x0 * h, "left"), ((w - x1) * h, "right")]
    area, side = max(strips, key=lambda s: s[0])  # max keeps the first of equal areas
    if area == 0:
        bg = pixels[~mask] if (~mask).any() else pixels.reshape(-1, pixels.shape[-1])
        out[y0:y1, x0:x1] = bg.mean(axis=0)
        return out
    rows, cols = np.arange(y0, y1), np.arange(x0, x1)
    if side == "top":
        src = pixels[:y0][(rows % y0)[:, None], cols[None, :]]
    elif side == "bottom":
        src = pixels[y1:][(rows % (h - y1))[:, None], cols[None, :]]
    elif side == "left":
        src = pixels[:, :x0][rows[:, None], (cols % x0)[None, :]]
    else:
        src = pixels[:, x1:][rows[:, None], (cols % (w - x1))[None, :]]
    out[y0:y1, x0:x1] = src
    return out


def corrupt(pixels: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """ImageNet-C corruption ``corruption`` at ``severity`` (1-5) of pixels (H, W, 3) in [0, 1]."""
    c = PERTURBATIONS[corruption][severity - 1]
    p = pixels.astype(np.float64)
    if corruption == "gaussian_noise":
        out = p + np.random.default_rng(seed).normal(0.0, c, size=p.shape)
    elif corruption == "blur":
        from skimage.filters import gaussian

        out = gaussian(p, sigma=c, channel_axis=-1)
    elif corruption == "brightness":
        from skimage.color import hsv2rgb, rgb2hsv

        hsv = rgb2hsv(np.clip(p, 0, 1))
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        out = hsv2rgb(hsv)
    elif corruption == "contrast":
        means = p.mean(axis=(0, 1), keepdims=True)
        out = (p - means) * c + means
    else:  # jpeg
        from PIL import Image as PILImage

        buf = io.BytesIO()
        PILImage.fromarray(np.round(np.clip(p, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=int(c))
        buf.seek(0)
        out = np.asarray(PILImage.open(buf).convert("RGB"), dtype=np.float64) / 255.0
    return np.clip(out, 0, 1).astype(np.float32)


def make_variant(variant: Variant, x: torch.Tensor, mask: np.ndarray | None, mean: tuple[float, ...],
                 std: tuple[float, ...], seed: int = 0, partner: tuple[torch.Tensor, np.ndarray] | None = None
                 ) -> torch.Tensor:
    """The normalised input (C, H, W) of ``variant`` of the item ``x`` with object mask ``mask`` (bool
    (H, W) at x's size); ``partner`` = (x, mask) of the other item for the mixed variants. Raises
    ItemError (a one-line reason) when the item lacks what the variant needs."""
    if variant.kind == "original":
        return x.clone()
    if mask is None:
        raise ItemError(f"context variant {variant.name} needs an object mask (or box); the item has none")
    if mask.shape != tuple(x.shape[-2:]):
        raise ItemError(f"object mask {mask.shape} differs from the input size {tuple(x.shape[-2:])}")
    if not mask.any():
        raise ItemError(f"context variant {variant.name}: the object mask is empty")
    m = torch.from_numpy(np.ascontiguousarray(mask))[None]
    black = from_pixels(np.zeros((1, 1, x.shape[0]), np.float32), mean, std)  # (C, 1, 1)
    if variant.kind == "only_fg":
        return torch.where(m, x, black.expand_as(x)).contiguous()
    if variant.kind == "no_fg":
        return torch.where(m, black.expand_as(x), x).contiguous()
    if variant.kind == "mean_bg":
        mu = from_pixels(np.asarray(mean, np.float32).reshape(1, 1, -1), mean, std)
        return torch.where(m, x, mu.expand_as(x)).contiguous()
    if variant.kind == "only_bg_t":
        return from_pixels(fill_from_surroundings(to_pixels(x, mean, std), mask), mean, std)
    if variant.kind == "perturb":
        bg = from_pixels(corrupt(to_pixels(x, mean, std), variant.corruption, variant.severity, seed), mean, std)
        return torch.where(m, x, bg).contiguous()
    if partner is None:
        raise ItemError(f"context variant {variant.name}: no other item to take a background from")
    px, pmask = partner
    if pmask is None or not pmask.any():
        raise ItemError(f"context variant {variant.name}: the other item has no object mask")
    if tuple(px.shape) != tuple(x.shape):
        raise ItemError(f"context variant {variant.name}: the other item's input {tuple(px.shape)} differs "
                        f"from this item's {tuple(x.shape)}")
    bg = from_pixels(fill_from_surroundings(to_pixels(px, mean, std), pmask), mean, std)
    return torch.where(m, x, bg).contiguous()
