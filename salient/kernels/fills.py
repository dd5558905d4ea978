"""What occluded pixels become, and writing masked inputs into a batch buffer in place.

Fills (all in the model's normalised space):
- ``zero``: 0, i.e. the dataset mean colour (RISE's and BOREx's fill);
- ``black``: pixel value 0 before normalisation (DiDA's fill);
- ``blur``: the image blurred by an 11 x 11 Gaussian with sigma 5, zero padding (RISE's insertion
  substrate, built like the authors' ``gkern``);
- ``mean``: the image's own mean colour;
- a number: that constant (Captum's ``baselines``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

FILL_NAMES = ("zero", "black", "blur", "mean")


@lru_cache(maxsize=4)
def gaussian_kernel(klen: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's ``gkern``: scipy's gaussian_filter of a centred delta, (klen, klen)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1.0
    return gaussian_filter(delta, sigma).astype(np.float32)


def blur(x: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Per-channel Gaussian blur of (C, H, W) or (N, C, H, W), zero padding."""
    squeeze = x.ndim == 3
    xb = x[None] if squeeze else x
    c = xb.shape[1]
    k = torch.from_numpy(gaussian_kernel(klen, sigma)).to(xb.device, xb.dtype)
    weight = k.expand(c, 1, klen, klen).contiguous()
    out = F.conv2d(xb, weight, padding=klen // 2, groups=c)
    return out[0] if squeeze else out


def check_fill(fill: str | float) -> str | float:
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return float(fill)
    if isinstance(fill, str):
        try:
            return float(fill)
        except ValueError:
            pass
        if fill in FILL_NAMES:
            return fill
    raise ValueError(f"fill must be one of {', '.join(FILL_NAMES)} or a number, got {fill!r}")


def fill_tensor(fill: str | float, x: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
    """The substrate for image x (C, H, W): a tensor broadcastable to x."""
    fill = check_fill(fill)
    if isinstance(fill, float):
        return torch.full((x.shape[0], 1, 1), fill, dtype=x.dtype, device=x.device)
    if fill == "zero":
        return torch.zeros((x.shape[0], 1, 1), dtype=x.dtype, device=x.device)
    if fill == "black":
        return black.to(x.device, x.dtype).view(-1, 1, 1)
    if fill == "mean":
        return x.mean(dim=(-2, -1), keepdim=True)
    return blur(x)


def blend_into(out: torch.Tensor, x: torch.Tensor, substrate: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out[k] = substrate + keep[k] · (x - substrate), written in place; keep is (n, H, W) in [0, 1]."""
    diff = x - substrate
    torch.mul(keep[:, None], diff[None], out=out)
    out.add_(substrate)
    return out
