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
- ``rise_blend(ctx, seed, draw, n, cells, p, start, stop, out, fill)``: the batch ``out`` (n, C, H, W), any
  layout, = S + M_i ⊙ (x - S) for masks ``start:stop`` of the draw (x = ``ctx.x``, S = ``ctx.fill(fill)``);
  ``rise_blend_3d(ctx, seed, draw, n, cells, cells_t, p, start, stop, out, fill)``: the same for a clip batch
  (n, C, T, H, W) and its space-time masks;
- ``curve_blend(out, top, base, rank, counts)``: insertion/deletion frames, out[k] = base + [rank < counts[k]] ⊙
  (top - base), ``rank`` (H, W) the pixels' order on the device, ``counts`` (k,) int64 on any device;
- ``paste_boxes(out, base, inner, boxes)``: ``base`` with one box of ``inner`` per input;
- ``fill_tensor(kind, x, black)``, ``blend_terms(x, fill, out)``, ``blend_into(out, x, fill, keep)``,
  ``blend_over(out, fill, diff)``, ``is_channels_last(out)``: substrates and in-place blends;
- ``batch_dtype(dtype)``: the dtype of a worker's input batches when the model runs at ``dtype`` (the torch
  kernels build float32 batches, and autocast casts them; the CuPy kernels write the model's dtype).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .torch.backend import TORCH

BACKENDS = ("auto", "torch", "cupy")
log = logging.getLogger("salient.kernels")


def parse_kernels(name: str | None) -> str:
    """``auto`` (None too), ``torch`` or ``cupy``; a one-line error for anything else."""
    from ..errors import SalientError, short_repr

    key = "auto" if name is None else str(name).strip().lower()
    if key not in BACKENDS:
        raise SalientError(f"kernels {short_repr(name, 40)}: unknown; use one of {', '.join(BACKENDS)}")
    return key


def kernels_for(device: torch.device | str, name: str | None = "auto") -> Any:
    """The backend for ``device``: ``torch`` (the reference, everywhere), ``cupy`` (the fused CUDA kernels of
    :mod:`salient.kernels.cupy`; a one-line error names what is missing: CuPy, or a CUDA device), or
    ``auto`` (None too): CuPy on a CUDA device when it is usable, else torch, with one log line saying why."""
    from ..errors import SalientError

    name = parse_kernels(name)
    device = torch.device(device)
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TORCH
    from . import cupy as cupy_backend  # imports CuPy only when asked

    missing = cupy_backend.available() if device.type == "cuda" else f"this worker runs on {device}, not a CUDA device"
    if missing is None:
        return cupy_backend.cupy_kernels()
    if name == "cupy":
        raise SalientError(f"kernels: cupy needs CuPy on a CUDA device: {missing}")
    log.info("salient: torch kernels on %s (the CuPy kernels are not usable: %s)", device, missing)
    return TORCH
