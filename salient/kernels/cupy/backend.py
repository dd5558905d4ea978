"""The CuPy backend: the fused kernels of :mod:`.source` behind the :class:`~salient.kernels.backend.TorchKernels`
contract, on a launcher (:mod:`.launch` on a GPU, :mod:`.twin` on the CPU).

RISE masks are computed inside the kernels from the draw's cached grids, shifts and interpolation
matrices (the torch module's ``_draw``/``_draw_3d``) and blended straight into the batch, written in its
dtype (float32, bfloat16 or float16; batches of another dtype go to the torch reference) at its
strides (channels_last or contiguous). Masks are the blend with x = 1, fill = 0. Weighted sums are
Σ_j w[j, t]·M_{start+j} accumulated per pixel in index order (they do not depend on any batch size). The
other operations (fills, blend_terms, ...) are the torch reference's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..torch.backend import TorchKernels
from ..torch.rise_masks import _draw
from ..torch.rise_masks_3d import _draw_3d
from .launch import Launcher
from .source import TARGETS_PER_THREAD

STORAGE = {torch.float32: "float", torch.bfloat16: "bf16", torch.float16: "f16"}  # kernel storage type per dtype


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def _batch(out: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sizes and strides of a batch as (k, C, T, H, W): an image batch (k, C, H, W) has T = 1."""
    if out.ndim == 4:
        (k, c, h, w), s = out.shape, out.stride()
        return (k, c, 1, h, w), (s[0], s[1], 0, s[2], s[3])
    return tuple(out.shape), out.stride()


def _sample(t: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t`` as float32 broadcast to one sample ``shape`` (C, [T,] H, W), and its strides as (C, T, H, W)."""
    v = _f32(t).expand(shape)
    s = v.stride()
    return v, (s if len(shape) == 4 else (s[0], 0, s[1], s[2]))


def _check_range(start: int, stop: int, n: int) -> None:
    if not 0 <= start <= stop <= n:
        raise ValueError(f"masks {start}:{stop} are not within the draw's {n}")


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without blocking the host (a pageable copy to a GPU would wait for the
    forward in flight: the worker builds the next batch while it runs)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _constant(value: float, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.full((), value, dtype=torch.float32, device=device).expand(shape)


class CupyKernels(TorchKernels):
    """The fused kernels on ``launcher`` (a :class:`.launch.Launcher`); same values as the torch reference
    (within float32 rounding: sums in another order), same signatures."""

    name = "cupy"

    def __init__(self, launcher: Launcher):
        self.launch = launcher

    @staticmethod
    def batch_dtype(dtype: torch.dtype) -> torch.dtype:
        """The model's dtype where the kernels can write it (float32, bfloat16, float16), else float32."""
        return dtype if dtype in STORAGE else torch.float32

    def _blend_2d(self, out: torch.Tensor, x: torch.Tensor, u: torch.Tensor, seed: int, draw: int, n: int,
                  cells: int, p: float, size: tuple[int, int], start: int) -> None:
        """out (k, C, H, W) = u + M_{start+j} ⊙ (x - u); x, u float32 (C, H, W) at any strides."""
        k, c, h, w = out.shape
        _check_range(start, start + k, n)
        grids, shifts, wy, wx = _draw(seed, draw, n, cells, p, tuple(size), str(out.device))
        self.launch(f"rise_blend_2d<{STORAGE[out.dtype]}>", k * h * w,
                    (out, x, u, grids, shifts, wy, wx, k, c, h, w, cells, start, *out.stride(), *x.stride(),
                     *u.stride()))

    def _blend_3d(self, out: torch.Tensor, x: torch.Tensor, u: torch.Tensor, seed: int, draw: int, n: int,
                  cells: int, cells_t: int, p: float, shape: tuple[int, int, int], start: int) -> None:
        """out (k, C, T, H, W) = u + M_{start+j} ⊙ (x - u); x, u float32 (C, T, H, W) at any strides."""
        k, c, t, h, w = out.shape
        _check_range(start, start + k, n)
        grids, shifts, wt, wy, wx = _draw_3d(seed, draw, n, cells, cells_t, p, tuple(shape), str(out.device))
        self.launch(f"rise_blend_3d<{STORAGE[out.dtype]}>", k * t * h * w,
                    (out, x, u, grids, shifts, wt, wy, wx, k, c, t, h, w, cells_t, cells, start, *out.stride(),
                     *x.stride(), *u.stride()))

    def rise_blend(self, ctx: Any, seed: int, draw: int, n: int, cells: int, p: float, start: int, stop: int,
                   out: torch.Tensor, fill: str | float) -> None:
        if out.dtype not in STORAGE:
            return super().rise_blend(ctx, seed, draw, n, cells, p, start, stop, out, fill)
        x = _f32(ctx.x)
        self._blend_2d(out, x, _f32(ctx.fill(fill)).expand(x.shape), seed, draw, n, cells, p, ctx.size, start)

    def rise_blend_3d(self, ctx: Any, seed: int, draw: int, n: int, cells: int, cells_t: int, p: float, start: int,
                      stop: int, out: torch.Tensor, fill: str | float) -> None:
        if out.dtype not in STORAGE:
            return super().rise_blend_3d(ctx, seed, draw, n, cells, cells_t, p, start, stop, out, fill)
        x = _f32(ctx.x)
        self._blend_3d(out, x, _f32(ctx.fill(fill)).expand(x.shape), seed, draw, n, cells, cells_t, p, ctx.shape,
                       start)

    def rise_masks(self, seed: int, draw: int, n: int, cells: int, p: float, size: tuple[int, int],
                   device: torch.device | str = "cpu", start: int = 0, stop: int | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """Masks ``start:stop`` as (k, H, W) float32, or into ``out`` (k, H, W) or (k, H, W, C) (each value
        repeated over C) of any strides and a storage dtype."""
        stop = n if stop is None else stop
        k, (h, w) = stop - start, size
        out = torch.empty((k, h, w), dtype=torch.float32, device=device) if out is None else out
        if tuple(out.shape[:3]) != (k, h, w) or out.ndim not in (3, 4):
            raise ValueError(f"out must be a ({k}, {h}, {w}[, C]) tensor, got {tuple(out.shape)}")
        if out.dtype not in STORAGE:
            return super().rise_masks(seed, draw, n, cells, p, size, device, start, stop, out)
        batch = out[:, None] if out.ndim == 3 else out.permute(0, 3, 1, 2)
        one, zero = (_constant(v, batch.shape[1:], out.device) for v in (1.0, 0.0))
        self._blend_2d(batch, one, zero, seed, draw, n, cells, p, size, start)
        return out

    def rise_masks_3d(self, seed: int, draw: int, n: int, cells: int, cells_t: int, p: float,
                      shape: tuple[int, int, int], device: torch.device | str = "cpu", start: int = 0,
                      stop: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Masks ``start:stop`` as (k, T, H, W) float32, or into ``out`` of that shape (any strides, a storage
        dtype)."""
        stop = n if stop is None else stop
        k = stop - start
        out = torch.empty((k, *shape), dtype=torch.float32, device=device) if out is None else out
        if tuple(out.shape) != (k, *shape):
            raise ValueError(f"out must be a ({k}, {', '.join(map(str, shape))}) tensor, got {tuple(out.shape)}")
        if out.dtype not in STORAGE:
            return super().rise_masks_3d(seed, draw, n, cells, cells_t, p, shape, device, start, stop, out)
        batch = out[:, None]
        one, zero = (_constant(v, batch.shape[1:], out.device) for v in (1.0, 0.0))
        self._blend_3d(batch, one, zero, seed, draw, n, cells, cells_t, p, shape, start)
        return out

    def rise_weighted_sum(self, seed: int, draw: int, n: int, cells: int, p: float, size: tuple[int, int],
                          weights: torch.Tensor, start: int = 0) -> torch.Tensor:
        w = _f32(weights)
        (k, nt), (h, wd) = w.shape, size
        _check_range(start, start + k, n)
        grids, shifts, wy, wx = _draw(seed, draw, n, cells, p, tuple(size), str(w.device))
        total = torch.empty((nt, h, wd), dtype=torch.float32, device=w.device)
        self.launch("rise_wsum_2d", -(-nt // TARGETS_PER_THREAD) * h * wd,
                    (total, w, grids, shifts, wy, wx, k, nt, h, wd, cells, start, *w.stride()))
        return total

    def rise_weighted_sum_3d(self, seed: int, draw: int, n: int, cells: int, cells_t: int, p: float,
                             shape: tuple[int, int, int], weights: torch.Tensor, start: int = 0) -> torch.Tensor:
        w = _f32(weights)
        (k, nq), (t, h, wd) = w.shape, shape
        _check_range(start, start + k, n)
        grids, shifts, wt, wy, wx = _draw_3d(seed, draw, n, cells, cells_t, p, tuple(shape), str(w.device))
        total = torch.empty((nq, t, h, wd), dtype=torch.float32, device=w.device)
        self.launch("rise_wsum_3d", -(-nq // TARGETS_PER_THREAD) * t * h * wd,
                    (total, w, grids, shifts, wt, wy, wx, k, nq, t, h, wd, cells_t, cells, start, *w.stride()))
        return total

    def paste_boxes(self, out: torch.Tensor, base: torch.Tensor, inner: torch.Tensor, boxes) -> torch.Tensor:
        if out.dtype not in STORAGE:
            return super().paste_boxes(out, base, inner, boxes)
        rows = [tuple(b) for b in boxes]
        (k, c, t, h, w), strides = _batch(out)
        d = len(rows[0]) // 2 if rows else 2
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 2 * d)
        if len(table) != k:
            raise ValueError(f"{len(table)} boxes for a batch of {k}")
        if d == 2:  # a 2-D box covers every frame
            table = np.concatenate([np.tile(np.array([[0, t]], dtype=np.int64), (k, 1)), table], axis=1)
        b, bs = _sample(base, out.shape[1:])
        i, ins = _sample(inner, out.shape[1:])
        self.launch(f"paste_boxes<{STORAGE[out.dtype]}>", k * t * h * w,
                    (out, b, i, _to_device(torch.from_numpy(table), out.device), k, c, t, h, w, *strides, *bs, *ins))
        return out

    def curve_blend(self, out: torch.Tensor, top: torch.Tensor, base: torch.Tensor, rank: torch.Tensor,
                    counts: torch.Tensor) -> None:
        if out.dtype not in STORAGE:
            return super().curve_blend(out, top, base, rank, counts)
        (k, c, t, h, w), strides = _batch(out)
        if counts.shape != (k,):
            raise ValueError(f"counts must be ({k},), got {tuple(counts.shape)}")
        p, ps = _sample(top, out.shape[1:])
        b, bs = _sample(base, out.shape[1:])
        rank, counts = rank.to(out.device, torch.int64), _to_device(counts.to(torch.int64), out.device)
        self.launch(f"curve_blend<{STORAGE[out.dtype]}>", k * t * h * w,
                    (out, p, b, rank, counts, k, c, t, h, w, *strides, *ps, *bs, *rank.stride(), *counts.stride()))

    def __repr__(self) -> str:
        return f"<{self.name} kernels on {self.launch!r}>"
