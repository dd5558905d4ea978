"""Kernel backends: the mask math a worker runs on its device, as one object it picks at start.

A query never imports kernels: it calls ``ctx.kernels.<name>`` (``ItemContext.kernels``), so the
worker decides, per device, which implementation builds its inputs. Every backend computes the same
values as :class:`TorchKernels` (the reference; a GPU backend is checked against it). The
operations:

- ``rise_masks(seed, draw, n, cells, p, size, device, start, stop, out)``: RISE masks into ``out``;
- ``rise_weighted_sum(seed, draw, n, cells, p, size, weights, start)``: Σ_i w_i·M_i without masks;
- ``rise_masks_3d(seed, draw, n, cells, cells_t, p, shape, device, start, stop, out)``,
  ``rise_weighted_sum_3d(seed, draw, n, cells, cells_t, p, shape, weights, start)``: the same for clips'
  space-time masks (T, H, W);
- ``paste_boxes(out, base, inner, boxes)``: ``base`` with one box of ``inner`` per input;
- ``fill_tensor(kind, x, black)``, ``blend_terms(x, fill, out)``, ``blend_into(out, x, fill, keep)``,
  ``blend_over(out, fill, diff)``, ``is_channels_last(out)``: substrates and in-place blends.
"""

from __future__ import annotations

from typing import Any

import torch

from . import torch as torch_kernels


class TorchKernels:
    """The reference backend: the kernels of :mod:`salient.kernels.torch`, on any torch device."""

    name = "torch"
    rise_masks = staticmethod(torch_kernels.rise_masks)
    rise_weighted_sum = staticmethod(torch_kernels.rise_weighted_sum)
    rise_masks_3d = staticmethod(torch_kernels.rise_masks_3d)
    rise_weighted_sum_3d = staticmethod(torch_kernels.rise_weighted_sum_3d)
    paste_boxes = staticmethod(torch_kernels.paste_boxes)
    fill_tensor = staticmethod(torch_kernels.fill_tensor)
    blend_terms = staticmethod(torch_kernels.blend_terms)
    blend_into = staticmethod(torch_kernels.blend_into)
    blend_over = staticmethod(torch_kernels.blend_over)
    is_channels_last = staticmethod(torch_kernels.is_channels_last)

    def __repr__(self) -> str:
        return f"<{self.name} kernels>"


TORCH = TorchKernels()
BACKENDS: dict[str, Any] = {"torch": TORCH}


def kernels_for(device: torch.device | str, name: str | None = None) -> Any:
    """The backend for ``device``: ``name`` if given (one of :data:`BACKENDS`), else the torch reference,
    which runs everywhere (the GPU path registers a CuPy backend here)."""
    if name is None:
        return TORCH
    if name not in BACKENDS:
        from ..errors import SalientError

        raise SalientError(f"unknown kernel backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]
