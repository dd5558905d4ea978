"""OME-Zarr multiscale maps (huge images): pick and read the level that fits a view.

Contract (ALGORITHMS.md "Huge images"): a group with attrs ``ome.multiscales[0].datasets[i].path``
= "0", "1", ..., full resolution first, each next level down by 2; each level a 2-D (y, x) array
(leading axes, if any, are read at 0). A level's factor is measured from the shapes (full height /
level height), so a level rounded down by one pixel still maps exactly.

Level rule: to show the region [y0, y1) x [x0, x1) of the full-resolution image in ``out_h`` x
``out_w`` display pixels, read the coarsest level whose copy of the region still has at least
``out_h`` x ``out_w`` pixels (factor f with (y1 - y0) / f >= out_h and (x1 - x0) / f >= out_w), or
level 0 when even that is smaller than the view. So a zoomed-out view reads a small level and a
zoomed-in one reads full-resolution pixels, and no read is larger than ~4x the view.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_pyramid(node: Any) -> bool:
    """A zarr group carrying OME multiscales attrs."""
    import zarr

    if not isinstance(node, zarr.Group):
        return False
    ms = (dict(node.attrs).get("ome") or {}).get("multiscales") or dict(node.attrs).get("multiscales")
    return bool(ms) and bool(ms[0].get("datasets"))


class Pyramid:
    """The levels of one multiscale group; ``shapes[i]`` = (H_i, W_i), ``factors[i]`` = H_0 / H_i."""

    def __init__(self, group: Any):
        attrs = dict(group.attrs)
        ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
        self.group = group
        self.paths = [str(d["path"]) for d in ms[0]["datasets"]]
        self.arrays = [group[p] for p in self.paths]
        self.shapes = [tuple(int(n) for n in a.shape[-2:]) for a in self.arrays]
        h0, w0 = self.shapes[0]
        self.factors = [max(h0 / max(h, 1), w0 / max(w, 1)) for h, w in self.shapes]
        self.attrs = attrs

    def level(self, i: int) -> Any:
        return self.arrays[i]

    def choose(self, region_h: float, region_w: float, out_h: int, out_w: int) -> int:
        """The coarsest level whose copy of a (region_h, region_w) full-resolution region has at
        least (out_h, out_w) pixels; 0 if none does."""
        best = 0
        for i, f in enumerate(self.factors):
            if region_h / f >= out_h and region_w / f >= out_w:
                best = i
        return best

    def read(self, y0: float, x0: float, y1: float, x1: float, out_h: int, out_w: int) -> tuple[np.ndarray, int]:
        """The region (full-resolution coordinates, clipped to the image) at the chosen level, as
        float32 (NaN -> 0), and that level's index. The caller resizes it to the view."""
        h0, w0 = self.shapes[0]
        y0, y1 = sorted((float(np.clip(y0, 0, h0)), float(np.clip(y1, 0, h0))))
        x0, x1 = sorted((float(np.clip(x0, 0, w0)), float(np.clip(x1, 0, w0))))
        y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
        i = self.choose(y1 - y0, x1 - x0, out_h, out_w)
        arr, (h, w) = self.arrays[i], self.shapes[i]
        f = self.factors[i]
        r0, r1 = int(np.floor(y0 / f)), min(h, max(int(np.ceil(y1 / f)), int(np.floor(y0 / f)) + 1))
        c0, c1 = int(np.floor(x0 / f)), min(w, max(int(np.ceil(x1 / f)), int(np.floor(x0 / f)) + 1))
        lead = (0,) * (arr.ndim - 2)
        m = np.asarray(arr[(*lead, slice(r0, r1), slice(c0, c1))], dtype=np.float32)
        return np.nan_to_num(m, nan=0.0), i

    def display(self, max_side: int) -> tuple[np.ndarray, int]:
        """The whole image from the coarsest level whose longer side is at least ``max_side`` (level 0
        if the image is smaller): the report's display-size overlay."""
        h0, w0 = self.shapes[0]
        scale = min(1.0, max_side / max(h0, w0))
        return self.read(0, 0, h0, w0, max(1, int(h0 * scale)), max(1, int(w0 * scale)))
