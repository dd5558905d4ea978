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

from ..fill_kinds import check_fill


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


def fill_tensor(fill: str | float, x: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
    """The substrate for image x (C, H, W) (or clip (C, T, H, W)): a tensor broadcastable to x."""
    fill = check_fill(fill)
    const = (x.shape[0],) + (1,) * (x.ndim - 1)
    if isinstance(fill, float):
        return torch.full(const, fill, dtype=x.dtype, device=x.device)
    if fill == "zero":
        return torch.zeros(const, dtype=x.dtype, device=x.device)
    if fill == "black":
        return black.to(x.device, x.dtype).reshape(const)
    if fill == "mean":
        return x.mean(dim=(-2, -1), keepdim=True)
    return blur(x)


def is_channels_last(out: torch.Tensor) -> bool:
    """A 4-D batch stored channels-last (and not also plain contiguous, as when C = 1)."""
    return out.ndim == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last)


def match_layout(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``t`` (C, H, W) stored like one sample of the batch ``out``: an HWC-ordered copy when ``out`` is
    channels_last (element-wise writes into it then read and write memory in order, ~3x faster on
    CPU), ``t`` itself otherwise (also when ``t`` broadcasts over H and W)."""
    if t.ndim == 3 and t.shape[-2:] != (1, 1) and is_channels_last(out):
        return t.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return t


def blend_into(out: torch.Tensor, x: torch.Tensor, substrate: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out[k] = substrate + keep[k] · (x - substrate), written in place in one pass; keep is (n, H, W)
    in [0, 1], broadcast over channels (and frames for a clip), or (n, T, H, W) for a clip's space-time
    masks."""
    if is_channels_last(out):
        # channels_last: one pass per channel (a mask broadcast over the innermost C = 3 does not
        # vectorise; this is 2x faster and gives the same bits)
        shape = torch.broadcast_shapes(x.shape, substrate.shape, (out.shape[1], 1, 1))
        diff, sub, nhwc = (x - substrate).expand(shape), substrate.expand(shape), out.permute(0, 2, 3, 1)
        for c in range(out.shape[1]):
            torch.addcmul(sub[c], keep, diff[c], out=nhwc[..., c])
        return out
    diff = match_layout(x - substrate, out)
    k = keep.reshape(keep.shape[0], *([1] * (out.ndim - keep.ndim)), *keep.shape[1:])
    torch.addcmul(match_layout(substrate, out), k, diff[None], out=out)
    return out


def blend_terms(x: torch.Tensor, substrate: torch.Tensor,
                out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(substrate, x - substrate) for :func:`blend_over` into the batch ``out``, each stored like one of
    its samples (full-size HWC-ordered copies under channels_last: a substrate broadcast over the
    innermost axis does not vectorise); the substrate is None where it is 0 everywhere."""
    diff = match_layout(x - substrate, out)
    if substrate.numel() <= substrate.shape[0] and not bool(substrate.any()):
        return None, diff
    return match_layout(substrate.expand(diff.shape), out) if is_channels_last(out) else substrate, diff


def blend_over(out: torch.Tensor, substrate: torch.Tensor | None, diff: torch.Tensor) -> torch.Tensor:
    """out[k] = substrate + out[k] · (x - substrate) in place, where ``out`` already holds the keep
    values (e.g. written by ``rise_masks(out=...)``) and the terms come from :func:`blend_terms`: one
    pass over memory in order."""
    if substrate is None:
        return out.mul_(diff)
    return torch.addcmul(substrate, out, diff, out=out)
