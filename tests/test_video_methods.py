"""Black-box methods in space-time on clips: RISE-3D, occlusion-3D, DiDA-3D and the temporal pass against
known answers (a moving square, one segment that matters, a linear clip model), skimage's trilinear resize,
the dense RISE formula and Captum's 3-D Occlusion; their parameter errors. Toy models only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.transform import resize
from torch import nn
from toy_models import Region, toy
from video_toys import bright_clip, moving_square, square_box

import salient
from salient.errors import SalientError
from salient.item import Item
from salient.kernels import draw_grids_3d, grid_cells, rise_masks_3d, rise_weighted_sum_3d, time_segments
from salient.methods import get_method

T, SIZE = 8, 32


@pytest.fixture(scope="module")
def square():
    return moving_square(frames=T, size=SIZE)


@pytest.fixture(scope="module")
def square_engine(square):
    with salient.Engine(square, batch_size=16) as eng:
        yield eng


def explain_clip(eng, clip, method, **params):
    return eng.explain(Item("c", clip), method=method, target=0, **params)


class Linear3D(nn.Module):
    """logits = <W_k, x> + b_k over a clip (C, T, H, W): occluding a box changes class k by -<W_k, x - fill> there."""

    def __init__(self, frames: int, size: int, n_classes: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_classes, 3, frames, size, size, generator=g) / size)

    def forward(self, x):
        return torch.einsum("ncthw,kcthw->nk", x, self.weight)


class Conv3D(nn.Module):
    """A small seeded nonlinear clip classifier (Conv3d, ReLU, pooling, linear)."""

    def __init__(self, n_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8, n_classes)

    def forward(self, x):
        return self.head(nn.functional.adaptive_avg_pool3d(torch.relu(self.conv(x)), 2).flatten(1))


class OneSegment(nn.Module):
    """Class 0's logit is ``gain`` · channel 0's mean over frames t0:t1 only; class 1's is 0."""

    def __init__(self, t0: int, t1: int, gain: float = 10.0):
        super().__init__()
        self.t0, self.t1, self.gain = t0, t1, gain
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        z = self.gain * x[:, 0, self.t0 : self.t1].mean(dim=(-3, -2, -1))
        return torch.stack([z, torch.zeros_like(z)], dim=1) + 0 * self.dummy


def peaks_in_square(m: np.ndarray) -> list[bool]:
    """Per frame: does the frame's maximum lie inside that frame's square?"""
    out = []
    for t in range(m.shape[0]):
        y0, y1, x0, x1 = square_box(t, m.shape[0], SIZE)
        iy, ix = np.unravel_index(np.argmax(m[t]), m[t].shape)
        out.append(bool(y0 <= iy < y1 and x0 <= ix < x1))
    return out


# ---------------------------------------------------------------- known answer: a square moving over the frames


@pytest.mark.parametrize(("method", "params"), [
    ("rise", dict(n_masks=12000, cells=4, cells_t=8)),
    ("occlusion", dict(window=(1, 8, 8), stride=(1, 4, 4))),
    ("dida", dict(grids=(4, 8), weights=(0.5, 0.5), segments=8)),
])
def test_each_frames_maximum_lies_in_its_square(square_engine, method, params):
    s = explain_clip(square_engine, bright_clip(T, SIZE), method, **params)
    assert s.map.shape == (T, SIZE, SIZE) and s.map.dtype == np.float32
    assert all(peaks_in_square(s.map)), peaks_in_square(s.map)


def test_temporal_puts_the_mass_on_the_segment_that_counts():
    clip = bright_clip(T, SIZE, seed=1)
    model = toy(OneSegment(2, 4), size=SIZE, frames=T)
    with salient.Engine(model, batch_size=4) as eng:
        base = float(model.module(clip[None])[0, 0].detach())
        one = explain_clip(eng, clip, "temporal", segments=4).map  # segments [0,2) [2,4) [4,6) [6,8)
        two = explain_clip(eng, clip, "temporal", segments=4, window=2).map  # windows {0,1} {1,2} {2,3}
        default = explain_clip(eng, clip, "temporal").map  # 8 segments, one frame each
    per_frame = np.array([0, 0, base, base, 0, 0, 0, 0])
    np.testing.assert_allclose(one, np.broadcast_to(per_frame[:, None, None], one.shape), rtol=1e-5, atol=1e-6)
    want = np.array([base, base, base, base, base / 2, base / 2, 0, 0])  # a segment's mean over its windows
    np.testing.assert_allclose(two, np.broadcast_to(want[:, None, None], two.shape), rtol=1e-5, atol=1e-6)
    assert np.abs(default[[0, 1, 4, 5, 6, 7]]).max() < 1e-6 and (default[2:4] > 0.2 * base).all()
    assert get_method("temporal").signed and get_method("temporal").diverging


def test_dida_3d_linear_known_answer():
    t, size, grids, weights, n = 6, 12, (2, 3), (0.25, 0.75), 3
    model = toy(Linear3D(t, size), size=size, frames=t)
    clip = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (3, t, size, size)).astype(np.float32))
    with salient.Engine(model, batch_size=8) as eng:
        got = explain_clip(eng, clip, "dida", grids=grids, weights=weights, fill="zero", segments=n).map
    contrib = (model.module.weight[0].detach().double() * clip.double()).sum(0).numpy()  # (T, H, W)
    want = np.zeros((t, size, size))
    for g, w in zip(grids, weights, strict=True):
        for t0, t1 in time_segments(t, n):
            for y0, y1, x0, x1 in grid_cells((size, size), g):
                want[t0:t1, y0:y1, x0:x1] += w * contrib[t0:t1, y0:y1, x0:x1].sum()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- RISE-3D: masks, dense formula, batch sizes


def skimage_masks_3d(grids, shifts, shape, cells, cells_t) -> np.ndarray:
    t, h, w = shape
    up = tuple((c + 1) * math.ceil(m / c) for c, m in ((cells_t, t), (cells, h), (cells, w)))
    out = []
    for g, (dt, dy, dx) in zip(grids, shifts, strict=True):
        big = resize(g.astype(np.float64), up, order=1, mode="reflect", anti_aliasing=False)
        out.append(big[dt : dt + t, dy : dy + h, dx : dx + w])
    return np.stack(out)


@pytest.mark.parametrize(("shape", "cells", "cells_t", "seed"), [
    ((8, 32, 32), 4, 4, 0), ((5, 17, 30), 4, 2, 1), ((16, 12, 20), 3, 5, 2), ((7, 9, 26), 3, 7, 3),
    ((3, 8, 8), 1, 1, 4),
])
def test_rise_3d_masks_match_skimage_trilinear_reflect(shape, cells, cells_t, seed):
    n = 24
    grids, shifts = draw_grids_3d(seed, 1, n, cells, cells_t, 0.5, shape)
    assert grids.shape == (n, cells_t, cells, cells) and shifts.shape == (n, 3)
    ours = rise_masks_3d(seed, 1, n, cells, cells_t, 0.5, shape).numpy()
    assert ours.shape == (n, *shape) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, skimage_masks_3d(grids, shifts, shape, cells, cells_t), atol=1e-5, rtol=0)
    part = rise_masks_3d(seed, 1, n, cells, cells_t, 0.5, shape, start=5, stop=11)
    assert torch.equal(part, torch.from_numpy(ours[5:11]))  # a slice of a draw: the same bits


@pytest.mark.parametrize(("start", "k"), [(0, 20), (100, 150)])  # within one block of factors, and across two
def test_rise_3d_weighted_sum_equals_the_sum_over_masks(start, k):
    shape, n = (6, 10, 14), 300
    w = torch.from_numpy(np.random.default_rng(5).normal(size=(k, 2)).astype(np.float32))
    masks = rise_masks_3d(7, 0, n, 3, 2, 0.4, shape, start=start, stop=start + k).double()
    want = torch.einsum("ik,ithw->kthw", w.double(), masks).numpy()
    got = rise_weighted_sum_3d(7, 0, n, 3, 2, 0.4, shape, w, start).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("debiased", [False, True])
def test_rise_3d_equals_the_dense_formula(debiased):
    t, size, n, chunk, cells, cells_t, p, seed = 6, 16, 70, 30, 4, 3, 0.4, 3
    model = toy(Conv3D(), size=size, frames=t, score="softmax")
    clip = torch.from_numpy(np.random.default_rng(3).uniform(0, 1, (3, t, size, size)).astype(np.float32))
    with salient.Engine(model, batch_size=8) as eng:
        res = eng.explain(Item("c", clip), "rise", target="top2", seed=seed, n_masks=n, chunk=chunk, cells=cells,
                          cells_t=cells_t, p=p, debiased=debiased)
    for s in res:
        total = torch.zeros((t, size, size), dtype=torch.float64)
        for c in range(math.ceil(n / chunk)):
            m = rise_masks_3d(seed, c, min(chunk, n - c * chunk), cells, cells_t, p, (t, size, size))
            with torch.no_grad():
                f = model.score(model.module(clip[None] * m[:, None])).double()[:, s.target]
            total += torch.einsum("i,ithw->thw", f, (m.double() - p) if debiased else m.double())
        want = (total / (n * p * ((1 - p) if debiased else 1.0))).numpy()
        assert s.map.shape == (t, size, size)
        np.testing.assert_allclose(s.map, want, rtol=1e-5, atol=1e-6)
    assert res[0].target != res[1].target


def test_rise_3d_map_does_not_depend_on_the_batch_size(square):
    kw = dict(n_masks=100, chunk=40, cells=4, cells_t=3, seed=2)
    maps = []
    for b in (1, 3, 4):
        with salient.Engine(square, batch_size=b) as eng:
            maps.append(explain_clip(eng, bright_clip(T, SIZE), "rise", **kw).map)
    for m in maps[1:]:
        np.testing.assert_array_equal(m, maps[0])
    with salient.Engine(square, batch_size=4) as eng:
        other = explain_clip(eng, bright_clip(T, SIZE), "rise", **{**kw, "seed": 3}).map
    assert np.abs(other - maps[0]).max() > 1e-3 * np.abs(maps[0]).max()


# ---------------------------------------------------------------- occlusion-3D equals Captum


@pytest.mark.parametrize(("window", "stride", "captum_window", "captum_stride"), [
    ((3, 5, 4), (2, 3, 4), (3, 5, 4), (2, 3, 4)),
    ((4, 6), (3, 5), (4, 4, 6), (2, 3, 5)),  # spatial only: the temporal default min(T, 4), stride 4 // 2
])
def test_occlusion_3d_equals_captum(window, stride, captum_window, captum_stride):
    from captum.attr import Occlusion

    t, size, baseline = 7, 12, 0.3
    model = toy(Linear3D(t, size), size=size, frames=t)
    clip = torch.from_numpy(np.random.default_rng(4).uniform(-1, 1, (3, t, size, size)).astype(np.float32))
    with salient.Engine(model, batch_size=8) as eng:
        res = eng.explain(Item("c", clip), "occlusion", target="top2", window=window, stride=stride, baseline=baseline)
    occ = Occlusion(model.module)
    for s in res:
        ref = occ.attribute(clip[None], sliding_window_shapes=(3, *captum_window), strides=(3, *captum_stride),
                            baselines=baseline, target=s.target, perturbations_per_eval=16)
        np.testing.assert_allclose(s.map, ref[0, 0].detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("frames", "method", "params", "used"), [
    (8, "rise", {"n_masks": 16}, {"cells_t": 4}), (3, "rise", {"n_masks": 16}, {"cells_t": 3}),
    (8, "dida", {"grids": (2,), "weights": (1.0,)}, {"segments": 4}),
    (3, "dida", {"grids": (2,), "weights": (1.0,)}, {"segments": 3}),
    (8, "temporal", {}, {"segments": 8}), (3, "temporal", {}, {"segments": 3}),
    (8, "occlusion", {}, {"window": (4, 32, 32), "stride": (2, 16, 16)}),
    (3, "occlusion", {"window": (16,), "stride": (8,)}, {"window": (3, 16, 16), "stride": (1, 8, 8)}),
])
def test_temporal_defaults_are_clipped_to_the_clip_and_recorded(frames, method, params, used):
    with salient.Engine(moving_square(frames=frames, size=SIZE), batch_size=8) as eng:
        s = explain_clip(eng, bright_clip(frames, SIZE), method, **params)
    assert s.map.shape == (frames, SIZE, SIZE)
    assert {k: s.params[k] for k in used} == used


# ---------------------------------------------------------------- bad values: one line, before any work


@pytest.mark.parametrize(("method", "params", "pattern"), [
    ("rise", {"cells_t": 9}, r"rise: cells_t must lie in \[1, 8\] \(the clip's frames\), got 9"),
    ("rise", {"cells_t": 0}, r"rise: cells_t must lie in \[1, 8\]"),
    ("occlusion", {"window": (9, 8, 8)}, r"occlusion: window \(9, 8, 8\) larger than the input \(8, 32, 32\)"),
    ("occlusion", {"window": (2, 0, 8)}, r"occlusion: window must be one to three positive integers on a clip"),
    ("dida", {"segments": 0}, r"dida: segments must lie in \[1, 8\]"),
    ("dida", {"segments": 9}, r"dida: segments must lie in \[1, 8\]"),
    ("temporal", {"segments": 0}, r"temporal: segments must lie in \[1, 8\]"),
    ("temporal", {"segments": 9}, r"temporal: segments must lie in \[1, 8\]"),
    ("temporal", {"segments": 4, "window": 5}, r"temporal: window must lie in \[1, 4\]"),
    ("temporal", {"segments": 2.5}, r"temporal: segments must be an integer"),
])
def test_bad_clip_values_fail_before_any_work(square_engine, method, params, pattern):
    before = square_engine.n_forward
    with pytest.raises(SalientError, match=pattern) as e:
        explain_clip(square_engine, bright_clip(T, SIZE), method, **params)
    assert "\n" not in str(e.value) and square_engine.n_forward == before


@pytest.mark.parametrize(("method", "params", "pattern"), [
    ("temporal", {}, r"^temporal explains clips; this input is an image$"),
    ("rise", {"cells_t": 2}, r"rise: cells_t apply to clips only"),
    ("dida", {"segments": 2}, r"dida: segments apply to clips only"),
    ("occlusion", {"window": (2, 8, 8)}, r"occlusion: window must be one or two positive integers"),
])
def test_clip_only_values_on_an_image(method, params, pattern):
    with salient.Engine(toy(Region()), batch_size=4) as eng, pytest.raises(SalientError, match=pattern):
        eng.explain(np.zeros((32, 32, 3), dtype=np.float32), method, target=0, **params)
