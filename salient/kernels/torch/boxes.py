"""Boxes on the device (torch): paste a box of one tensor into another, and box masks.

A box is (y0, y1, x0, x1), half-open, already clipped to the image (:mod:`salient.kernels.geometry`);
a space-time box on a clip is (t0, t1, y0, y1, x0, x1): one interval per axis, the last axes of the input.
"""

from __future__ import annotations

import numpy as np
import torch

from .fills import match_layout


def paste_boxes(out: torch.Tensor, base: torch.Tensor, inner: torch.Tensor, boxes) -> torch.Tensor:
    """out[k] = ``base`` everywhere except box k, which shows ``inner``; in place. A box holds one
    half-open interval per axis for the last axes: (y0, y1, x0, x1), or (t0, t1, y0, y1, x0, x1) on a
    clip. ``base`` and ``inner`` are (C, H, W) or broadcastable ((C, 1, 1) fills), clips alike; a box
    covers all channels (a 2-D box on a clip: all frames too). Occlusion "delete" is (x, fill), "keep"
    is (fill, x). One copy of ``base`` plus a small copy per box: no masks are built."""
    out.copy_(match_layout(base, out).expand(out.shape))
    src = inner.expand(out.shape[1:])  # a view: a fill broadcasts, slices of it stay views
    rows = [tuple(b) for b in boxes]
    d = len(rows[0]) // 2 if rows else 2
    for k, box in enumerate(np.asarray(rows, dtype=np.int64).reshape(-1, 2 * d).tolist()):
        sl = (Ellipsis, *(slice(box[2 * i], box[2 * i + 1]) for i in range(d)))
        out[(k, *sl)] = src[sl]
    return out


def box_masks(
    boxes: np.ndarray | torch.Tensor, size: tuple[int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(n, H, W) float32 masks, 1 inside each box."""
    b = torch.as_tensor(np.asarray(boxes), device=device).view(-1, 4)
    ys = torch.arange(size[0], device=device)
    xs = torch.arange(size[1], device=device)
    iny = (ys[None] >= b[:, 0:1]) & (ys[None] < b[:, 1:2])
    inx = (xs[None] >= b[:, 2:3]) & (xs[None] < b[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).float()
