"""Mask kernels against independent references: skimage's resize for RISE masks, scipy for the blur,
plain slicing for boxes and blends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate
from skimage.transform import resize

from salient.errors import SalientError
from salient.kernels import (
    blend_into,
    blend_over,
    blend_terms,
    blur,
    box_masks,
    check_fill,
    draw_grids,
    fill_tensor,
    grid_cells,
    interp_matrix,
    match_layout,
    paste_boxes,
    rise_masks,
    rise_weighted_sum,
    sliding_windows,
    squares,
)
from salient.kernels.fill_kinds import FillError


def skimage_rise_masks(grids: np.ndarray, shifts: np.ndarray, size: tuple[int, int], cells: int) -> np.ndarray:
    """The authors' (eclique/RISE) mask recipe, one mask at a time with skimage."""
    h, w = size
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    up = ((cells + 1) * ch, (cells + 1) * cw)
    out = []
    for g, (dy, dx) in zip(grids, shifts, strict=True):
        big = resize(g.astype(np.float64), up, order=1, mode="reflect", anti_aliasing=False)
        out.append(big[dy : dy + h, dx : dx + w])
    return np.stack(out)


@pytest.mark.parametrize(
    ("size", "cells", "p"),
    [((224, 224), 7, 0.5), ((28, 28), 7, 0.5), ((32, 48), 5, 0.3), ((30, 17), 4, 0.5), ((19, 40), 6, 0.7),
     ((16, 16), 1, 0.5)],
)
def test_rise_masks_match_skimage_reflect_bilinear(size, cells, p):
    n = 12 if size[0] > 100 else 40
    grids, shifts = draw_grids(3, 2, n, cells, p, size)
    ours = rise_masks(3, 2, n, cells, p, size).numpy()
    ref = skimage_rise_masks(grids, shifts, size, cells)
    assert ours.shape == (n, *size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_rise_masks_ranges_and_chunks():
    size, cells = (20, 26), 4
    full = rise_masks(5, 1, 30, cells, 0.5, size)
    np.testing.assert_array_equal(rise_masks(5, 1, 30, cells, 0.5, size, start=7, stop=19), full[7:19])
    big = rise_masks(5, 1, 300, cells, 0.5, size)  # ranges across the blocks of cached factors
    for a, b in ((120, 140), (0, 300), (255, 257), (299, 300)):
        assert torch.equal(rise_masks(5, 1, 300, cells, 0.5, size, start=a, stop=b), big[a:b])
    assert not torch.equal(rise_masks(5, 2, 30, cells, 0.5, size), full)  # another chunk, other masks
    assert not torch.equal(rise_masks(6, 1, 30, cells, 0.5, size), full)  # another seed, other masks
    assert torch.equal(rise_masks(5, 1, 30, cells, 0.5, size), full)  # reproducible
    assert float(full.min()) >= 0.0 and float(full.max()) <= 1.0


def test_rise_masks_written_into_a_batch_in_channels_last_order():
    size, cells = (20, 26), 4
    full = rise_masks(5, 1, 30, cells, 0.5, size)
    for c in (1, 3):  # (k, H, W, C): each value repeated over C, the same bits as the (k, H, W) masks
        out = torch.full((12, *size, c), 7.0)
        assert rise_masks(5, 1, 30, cells, 0.5, size, start=7, stop=19, out=out) is out
        assert torch.equal(out, full[7:19, ..., None].expand(12, *size, c))
    out = torch.empty(12, *size)
    rise_masks(5, 1, 30, cells, 0.5, size, start=7, stop=19, out=out)
    assert torch.equal(out, full[7:19])
    for bad in (torch.empty(11, *size), torch.empty(12, 20, 25, 3), torch.empty(12, 26, 20).transpose(1, 2)):
        with pytest.raises(ValueError, match="contiguous"):
            rise_masks(5, 1, 30, cells, 0.5, size, start=7, stop=19, out=bad)


@pytest.mark.parametrize(("start", "k"), [(0, 300), (4, 190), (120, 20), (299, 1)])
def test_rise_weighted_sum_equals_the_sum_over_masks(start, k):  # within and across blocks of factors
    size, cells = (21, 34), 5
    masks = rise_masks(2, 3, 300, cells, 0.4, size).double()[start : start + k]
    w = torch.randn(k, 3, generator=torch.Generator().manual_seed(0))
    ref = torch.einsum("kt,khw->thw", w.double(), masks)
    got = rise_weighted_sum(2, 3, 300, cells, 0.4, size, w, start)
    assert got.shape == (3, *size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5, rtol=1e-5)


def test_draw_grids_statistics():
    size, cells, p = (30, 45), 5, 0.3
    grids, shifts = draw_grids(0, 0, 4000, cells, p, size)
    assert grids.shape == (4000, cells, cells) and set(np.unique(grids)) <= {0.0, 1.0}
    assert abs(grids.mean() - p) < 0.01
    ch, cw = math.ceil(30 / cells), math.ceil(45 / cells)
    assert shifts[:, 0].min() == 0 and shifts[:, 0].max() == ch - 1
    assert shifts[:, 1].min() == 0 and shifts[:, 1].max() == cw - 1


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 256), (5, 48), (1, 9), (3, 3)])
def test_interp_matrix_is_skimage_resize(n_in, n_out):
    eye = np.eye(n_in)
    ref = np.stack([resize(eye[:, k][:, None], (n_out, 1), order=1, mode="reflect", anti_aliasing=False)[:, 0]
                    for k in range(n_in)], axis=1)
    np.testing.assert_allclose(interp_matrix(n_in, n_out), ref, atol=1e-12)


@pytest.mark.parametrize(("size", "g"), [((224, 224), 7), ((224, 224), 13), ((30, 17), 4), ((10, 10), 10)])
def test_grid_cells_tile_the_image(size, g):
    cells = grid_cells(size, g)
    assert cells.shape == (g * g, 4)
    cover = np.zeros(size, dtype=int)
    for y0, y1, x0, x1 in cells:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    # DiDA's bounds: cell (i, j) starts at floor(i·H/g), floor(j·W/g)
    i, j = g - 1, g // 2
    assert tuple(cells[i * g + j][[0, 2]]) == ((i * size[0]) // g, (j * size[1]) // g)
    heights = cells[::g, 1] - cells[::g, 0]
    assert heights.max() - heights.min() <= 1


@pytest.mark.parametrize(("size", "window", "stride"), [((224, 224), (32, 32), (16, 16)), ((30, 17), (5, 7), (3, 4)),
                                                        ((224, 224), (64, 64), (64, 64)), ((8, 8), (8, 8), (1, 1))])
def test_sliding_windows_captum_positions(size, window, stride):
    boxes = sliding_windows(size, window, stride)
    ny = math.ceil((size[0] - window[0]) / stride[0]) + 1
    nx = math.ceil((size[1] - window[1]) / stride[1]) + 1
    assert len(boxes) == ny * nx
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        i, j = divmod(k, nx)
        assert (y0, x0) == (i * stride[0], j * stride[1])
        assert (y1, x1) == (min(y0 + window[0], size[0]), min(x0 + window[1], size[1]))
    cover = np.zeros(size, dtype=int)
    for y0, y1, x0, x1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert (cover > 0).all()


def test_squares_are_clipped():
    sq = squares((20, 30), np.array([[0, 0], [10, 15], [19, 29]]), np.array([5, 3, 4]))
    np.testing.assert_array_equal(sq, [[0, 5, 0, 5], [7, 13, 12, 18], [15, 20, 25, 30]])


def test_box_masks_equal_slicing():
    boxes = np.array([[0, 3, 1, 4], [2, 7, 0, 9], [5, 5, 2, 3]])
    m = box_masks(boxes, (7, 9)).numpy()
    for b, (y0, y1, x0, x1) in zip(m, boxes, strict=True):
        ref = np.zeros((7, 9), np.float32)
        ref[y0:y1, x0:x1] = 1
        np.testing.assert_array_equal(b, ref)


def test_blur_is_the_authors_gkern_convolution():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(3, 21, 17, generator=torch.Generator().manual_seed(0))
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    k = gaussian_filter(delta, 5.0)
    ref = np.stack([correlate(c.double().numpy(), k, mode="constant", cval=0.0) for c in x])
    np.testing.assert_allclose(blur(x).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(blur(x[None])[0].numpy(), ref, atol=1e-5)


def test_fills():
    x = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(1))
    black = torch.tensor([-1.0, -2.0, -3.0]).view(3, 1, 1)
    full = lambda f: torch.broadcast_to(fill_tensor(f, x, black), x.shape)  # noqa: E731
    assert torch.equal(full("zero"), torch.zeros_like(x))
    assert torch.equal(full("black"), black.expand_as(x))
    assert torch.equal(full(0.25), torch.full_like(x, 0.25))
    assert torch.equal(full("0.25"), torch.full_like(x, 0.25))
    np.testing.assert_allclose(full("mean").numpy(), x.mean(dim=(1, 2), keepdim=True).expand_as(x).numpy())
    np.testing.assert_allclose(full("blur").numpy(), blur(x).numpy())
    for bad in ("purple", None, True, [0.1]):
        with pytest.raises(SalientError, match="fill must be one of"):
            check_fill(bad)
    assert issubclass(FillError, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_blend_into_writes_in_place(layout):
    g = torch.Generator().manual_seed(2)
    x, sub = torch.rand(3, 8, 6, generator=g), torch.rand(3, 8, 6, generator=g)
    keep = torch.rand(4, 8, 6, generator=g)
    buf = torch.full((6, 3, 8, 6), 7.0).contiguous(memory_format=layout)
    view = buf[1:5]
    out = blend_into(view, x, sub, keep)
    assert out.data_ptr() == view.data_ptr()
    ref = sub[None] + keep[:, None] * (x - sub)[None]
    np.testing.assert_allclose(buf[1:5].numpy(), ref.numpy(), atol=1e-6)
    assert (buf[0] == 7).all() and (buf[5] == 7).all()  # nothing outside the slice
    # keep 1 gives x, keep 0 gives the substrate
    blend_into(view, x, sub, torch.stack([torch.ones(8, 6), torch.zeros(8, 6)] * 2))
    np.testing.assert_allclose(buf[1].numpy(), x.numpy(), atol=1e-6)
    np.testing.assert_allclose(buf[2].numpy(), sub.numpy(), atol=1e-6)
    # constant images or substrates (C, 1, 1) broadcast over the picture (fills, curve substrates)
    for a, b in ((x[:, :1, :1], sub), (x, sub[:, :1, :1]), (x[:, :1, :1], sub[:, :1, :1])):
        blend_into(view, a, b, keep)
        ref = b[None] + keep[:, None] * (a - b)[None]
        np.testing.assert_allclose(buf[1:5].numpy(), ref.expand(4, 3, 8, 6).numpy(), atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kind", ["zero", "constant", "full"])
def test_blend_over_equals_blend_into(layout, kind):
    g = torch.Generator().manual_seed(4)
    x, keep = torch.rand(3, 8, 6, generator=g), torch.rand(4, 8, 6, generator=g)
    sub = {"zero": torch.zeros(3, 1, 1), "constant": torch.rand(3, 1, 1, generator=g),
           "full": torch.rand(3, 8, 6, generator=g)}[kind]
    ref = blend_into(torch.empty(4, 3, 8, 6).contiguous(memory_format=layout), x, sub, keep)
    buf = torch.full((6, 3, 8, 6), 7.0).contiguous(memory_format=layout)
    view = buf[1:5]
    view.copy_(keep[:, None].expand(4, 3, 8, 6))  # out holds the keep values
    terms = blend_terms(x, sub, view)
    assert (terms[0] is None) == (kind == "zero")
    assert blend_over(view, *terms).data_ptr() == view.data_ptr()
    assert torch.equal(buf[1:5], ref) and (buf[0] == 7).all() and (buf[5] == 7).all()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_paste_boxes_delete_and_keep(layout):
    g = torch.Generator().manual_seed(3)
    x, full = torch.rand(3, 9, 11, generator=g), torch.rand(3, 9, 11, generator=g)
    flat = torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1)
    boxes = np.array([[0, 3, 1, 4], [2, 9, 0, 11], [5, 6, 10, 11], [4, 4, 2, 5]])  # the last is empty
    inside = box_masks(boxes, (9, 11))[:, None]
    for sub in (full, flat):
        for base, inner in ((x, sub), (sub, x)):  # delete, keep
            out = torch.full((4, 3, 9, 11), 9.0).contiguous(memory_format=layout)
            paste_boxes(out, base, inner, boxes)
            ref = inner[None] * inside + base[None] * (1 - inside)
            np.testing.assert_array_equal(out.numpy(), ref.numpy())


def test_match_layout():
    x = torch.rand(3, 5, 4)
    cl = torch.zeros(2, 3, 5, 4).contiguous(memory_format=torch.channels_last)
    y = match_layout(x, cl)
    assert torch.equal(y, x) and y.permute(1, 2, 0).is_contiguous()
    assert match_layout(x, torch.zeros(2, 3, 5, 4)) is x
    flat = torch.zeros(3, 1, 1)
    assert match_layout(flat, cl) is flat


def test_queries_reach_the_kernels_only_through_the_workers_backend():
    """The worker hands its backend to every item; a backend that records its calls sees every mask the
    queries build, and (computing the reference's values) the results are the reference's."""
    from toy_models import TinyConv, toy

    from salient.engine.worker import Worker
    from salient.kernels import TORCH, TorchKernels
    from salient.queries import BoxQuery, RiseQuery

    calls: list[str] = []

    class Recording(TorchKernels):
        name = "recording"

    for op in ("rise_masks", "rise_weighted_sum", "paste_boxes", "blend_over", "blend_into", "fill_tensor"):
        def wrapped(*a, _op=op, **k):
            calls.append(_op)
            return getattr(TORCH, _op)(*a, **k)
        setattr(Recording, op, staticmethod(wrapped))

    model = toy(TinyConv(), size=24)
    x = torch.rand(3, 24, 24)
    queries = [RiseQuery("a", (0, 1), seed=1, draw=0, n=6, cells=3), BoxQuery("a", (0,), boxes=((0, 8, 0, 8),))]
    ref = Worker(model, "cpu", 2)
    ref.put("a", x)
    want = ref.run(queries)
    w = Worker(model, "cpu", 2)
    w.kernels = Recording()
    w.put("a", x)
    got = w.run(queries)
    assert {"rise_masks", "rise_weighted_sum", "paste_boxes", "fill_tensor"} <= set(calls)
    assert np.array_equal(got[0][0], want[0][0]) and np.array_equal(got[1], want[1])
