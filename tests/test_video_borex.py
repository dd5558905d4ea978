"""BOREx-3D and GP-3D on clips: the moving-square known answer, a Grad-CAM++ 3-D prior, the space-time
geometry (boxes, box means, first state, final map), determinism, q > 1, batched = one at a time, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import toy
from video_toys import MovingSquare, bright_clip, square_box

import salient
from salient.engine import Item
from salient.errors import SalientError
from salient.kernels.geometry import box_mean_3d, boxes_3d
from salient.methods import Request, get_method
from salient.methods import borex as bx
from salient.methods import borex3d as b3
from salient.methods import drive as driver
from salient.methods.bo import gp as gpm

T, SIZE, SIDE = 8, 32, 12
# The toy's clip score is the mean over 8 frames, so a box of a few frames moves it little and the
# authors' 2-D defaults (κ = 10, ℓ <= 20) spend 50 iterations exploring 5-D: these tests search harder.
SEARCH = {"kappa": 2.0, "bounds": (1.0, 100.0)}


@pytest.fixture(scope="module")
def square():
    """Class 0's softmax probability rests on a 12-px square moving down the diagonal over 8 frames (softmax of
    logits up to 3.75, so that keep/delete scores do not saturate; a 12-px side, so that the final map's
    windows of 3 and 5 frames blur the square's track by less than its side)."""
    model = toy(MovingSquare(T, SIZE, SIDE, gain=5.0), size=SIZE, frames=T, score="softmax")
    with salient.Engine(model, batch_size=8) as eng:
        yield eng


def off_square(maps: np.ndarray) -> list[int]:
    """Per frame: how many pixels (L1, 0 inside) the frame's maximum lies from that frame's square."""
    out = []
    for t in range(maps.shape[0]):
        y0, y1, x0, x1 = square_box(t, T, SIZE, SIDE)
        r, c = np.unravel_index(int(np.argmax(maps[t])), maps.shape[1:])
        out.append(int(max(0, y0 - r, r - y1 + 1) + max(0, x0 - c, c - x1 + 1)))
    return out


def test_gp_3d_puts_every_frames_maximum_on_that_frames_square(square):
    s = square.explain(Item("clip", bright_clip(T, SIZE)), method="gp", target=0, iterations=50, **SEARCH)
    assert s.map.shape == (T, SIZE, SIZE) and s.map.dtype == np.float32 and s.signed and not s.diverging
    assert max(off_square(s.map)) <= 2, off_square(s.map)
    assert s.n_forward == 1 + 2 * 50
    assert s.params["durations"] == [1, 2] and s.params["clip_stride"] == 1  # T // 8, T // 4; 32 px: every pixel
    assert len(s.params["fitted_lengthscale"][0]) == 5


def test_borex_3d_finds_when_the_square_is_where_given_a_prior_of_where_only(square):
    """A 2-D prior (broadcast over t) says "on the diagonal", not when: BOREx-3D must find each frame's place."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    diagonal = np.exp(-((yy - xx) ** 2) / (2 * 6.0**2))
    s = square.explain(Item("clip", bright_clip(T, SIZE, seed=1)), method="borex", target=0, seed=1,
                       prior=diagonal, iterations=60, **SEARCH)
    assert max(off_square(s.map)) <= 2, off_square(s.map)
    assert s.params["prior"] == f"map {diagonal.shape}"


class TinyVideoNet(nn.Module):
    """A seeded Conv3d -> ReLU -> pooling -> linear net (any clip size)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def test_borex_3d_with_a_gradcampp_3d_prior_runs_and_is_seeded():
    x = torch.rand(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with salient.Engine(toy(TinyVideoNet(), size=16, frames=4), batch_size=4) as eng:
        runs = [eng.explain(Item("clip", x), method="borex", target=1, prior="gradcampp", iterations=4, seed=seed)
                for seed in (0, 0, 1)]
        prior = eng.explain(Item("clip", x), method="gradcampp", target=1).map
    a, b, c = runs
    assert a.map.shape == (4, 16, 16) and np.isfinite(a.map).all()
    assert a.params["prior"] == "gradcampp" and a.params["durations"] == [1]  # T = 4: max(1, 4 // 8) = max(1, 4 // 4)
    assert a.n_forward == 1 + 1 + 2 * 4  # unmasked, the prior's forward-backward, 2 per iteration
    assert np.array_equal(a.map, b.map) and not np.array_equal(a.map, c.map)
    # the first state is the 3-D prior's argmax (its first maximum over (t, r, c)), smallest m and τ
    first = []
    req = Request("clip", (16, 16), (1,), np.ones(1, np.float32), frames=4)
    gen = bx.borex(req, prior=prior, iterations=1)
    driver.drive(gen, lambda qs: first.extend(qs) or [np.zeros((len(q.boxes), 1), np.float32) for q in qs])
    t, r, c = np.unravel_index(int(np.argmax(prior)), prior.shape)
    half = max(1, round(30 * 16 / 224))
    assert first[0].boxes == (tuple(int(v) for v in (max(t - 1, 0), min(t + 1, 4), max(r - half, 0),
                                                      min(r + half, 16), max(c - half, 0), min(c + half, 16))),)
    assert [q.mode for q in first] == ["keep", "delete"]


def test_gp_3d_is_bit_identical_under_a_seed_and_q_states_are_distinct(square):
    clip = Item("clip", bright_clip(T, SIZE, seed=2))
    a, b = (square.explain(clip, method="gp", target=0, iterations=5, seed=4, q=3) for _ in range(2))
    assert np.array_equal(a.map, b.map)
    assert a.n_forward == 1 + 2 * 3 * 5
    states = []
    orig = b3._choose

    def spy(m, post, opts, jitter, q=None):
        out = orig(m, post, opts, jitter, q)
        states.append(out[0])
        return out

    b3._choose, saved = spy, b3._choose
    try:
        square.explain(clip, method="gp", target=0, iterations=3, q=3)
    finally:
        b3._choose = saved
    later = [chosen for chosen in states if len(chosen) == 3]  # after iterations 1 and 2 (the start picks 2)
    assert len(later) == 2 and all(len(set(chosen)) == 3 for chosen in later), later  # the believer keeps them apart


def test_batched_clip_gps_equal_one_at_a_time(square):
    clips = [Item(f"c{i}", bright_clip(T, SIZE, seed=10 + i)) for i in range(2)]
    params = {"iterations": 4, "seed": 0}
    singles = [square.explain(c, method="gp", target=0, **params).map for c in clips]
    for c in clips:
        square.executor.hold(c)
    try:
        reqs = [Request(c.id, (SIZE, SIZE), (0,), np.ones(1, np.float32), 0, frames=T) for c in clips]
        maps = bx.run_batch(square.executor.evaluate, reqs, method="gp", iterations=4)
    finally:
        for c in clips:
            square.executor.release(c.id)
    for single, batched in zip(singles, maps, strict=True):
        np.testing.assert_allclose(batched[0], single, rtol=1e-6, atol=1e-7)
    assert not np.allclose(maps[0], maps[1])


# -- geometry ------------------------------------------------------------------------------------------------------


def test_box_mean_3d_equals_the_brute_force_mean():
    a = np.random.default_rng(0).normal(size=(2, 5, 7, 6))
    for ht, h in ((0, 0), (1, 2), (2, 1), (6, 9)):
        got = box_mean_3d(a, ht, h)
        want = np.empty_like(a)
        for t, y, x in itertools.product(range(5), range(7), range(6)):
            want[:, t, y, x] = a[:, max(0, t - ht) : t + ht + 1, max(0, y - h) : y + h + 1,
                                 max(0, x - h) : x + h + 1].mean(axis=(1, 2, 3))
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_space_time_boxes_and_defaults():
    boxes = boxes_3d((8, 32, 32), np.array([[0, 5, 30], [7, 16, 16]]), np.array([4, 6]), np.array([2, 1]))
    assert boxes.tolist() == [[0, 2, 1, 9, 26, 32], [6, 8, 10, 22, 10, 22]]  # [t−τ, t+τ) x squares, clipped
    assert b3.auto_durations(8) == (1, 2) and b3.auto_durations(16) == (2, 4) and b3.auto_durations(2) == (1,)
    assert b3.auto_stride((112, 112)) == 4 and b3.auto_stride((224, 224)) == 8 and b3.auto_stride((32, 32)) == 1
    assert bx.first_state(np.zeros((4, 6, 8))) == (2, 3, 4)  # constant prior: the clip's centre


def test_final_map_3d_is_the_mean_of_box_means_of_prior_plus_mu():
    opts = bx.Options(1, (30.0, 60.0), 10.0, 5.0, (1, 1, 0.5), (12, 12, 10), (1, 20), 0.01, 0.1, 1, 1, 1, True,
                      0.0, (1, 2))
    geo = b3.ClipGeometry.of((6, 20, 24), opts)
    assert geo.half == (3, 5) and geo.dur == (1, 2)
    p = np.random.default_rng(1).uniform(size=(6, 20, 24))
    x = torch.tensor([[50.0, 40.0, 70.0, 30.0, 37.3], [120.0, 100.0, 10.0, 60.0, 74.7]])
    post = gpm.Posterior.fit(x, torch.tensor([0.5, -0.2], dtype=torch.float64),
                             torch.tensor([12.0, 11.0, 13.0, 10.0, 9.0]), 0.01)
    want = np.zeros(p.shape)
    coords = np.stack(np.meshgrid(np.arange(6) / geo.tscale, np.arange(20) / geo.scale, np.arange(24) / geo.scale,
                                  indexing="ij"), -1).reshape(-1, 3)
    for (k, half), (j, tau) in itertools.product(enumerate(geo.half), enumerate(geo.dur)):
        xc = np.concatenate([coords, np.tile([geo.sizes[k], geo.durs[j]], (len(coords), 1))], 1)
        mu = post.predict(torch.tensor(xc))[0].numpy().reshape(p.shape)
        want += box_mean_3d(p + mu, tau, half) / 4
    np.testing.assert_allclose(b3.final_map_3d(post, p, geo), want, atol=1e-12)


def test_dense_ucb_is_the_argmax_of_every_state():
    opts = bx.Options(1, (30.0, 60.0), 10.0, 5.0, (1, 1, 0.5), (12, 12, 10), (1, 20), 0.01, 0.1, 1, 1, 1, True,
                      0.0, (), 3)
    geo = b3.ClipGeometry.of((4, 16, 16), opts)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 5, generator=g, dtype=torch.float64) * torch.tensor([220.0, 220.0, 220.0, 60.0, 60.0])
    post = gpm.Posterior.fit(x, torch.randn(6, generator=g, dtype=torch.float64),
                             torch.tensor([15.0, 12.0, 12.0, 10.0, 10.0]), 0.01)
    prior = torch.rand(4, len(geo.rows), len(geo.cols), generator=g, dtype=torch.float64) * 0.3
    best, where = -np.inf, None
    for state in itertools.product(range(4), range(len(geo.rows)), range(len(geo.cols)), range(2), range(1)):
        xc = geo.coords((state[0], int(geo.rows[state[1]]), int(geo.cols[state[2]]), state[3], state[4]))
        mu, sd = post.predict(torch.tensor(xc[None]))
        v = float(mu[0] + 10.0 * sd[0] + prior[state[0], state[1], state[2]])
        if v > best:
            best, where = v, state
    assert b3.ucb_argmax_dense(post, geo, prior, 10.0) == where


# -- bad input -----------------------------------------------------------------------------------------------------


def clip_req():
    return Request("c", (SIZE, SIZE), (0,), np.ones(1, np.float32), frames=T)


@pytest.mark.parametrize("params, message", [
    ({"durations": (0,)}, "durations must be whole numbers of frames >= 1"),
    ({"durations": (1.5,)}, "durations must be whole numbers"),
    ({"clip_stride": -1}, "clip_stride must be >= 0"),
    ({"stride": 4}, "on a clip use clip_stride"),
    ({"lengthscale_t": (12.0, 30.0)}, "lengthscale_t must be 2 values within bounds"),
    ({"jitter_t": (1.0,)}, "jitter_t must be 2 values"),
    ({"prior": np.zeros((T + 1, SIZE, SIZE))}, "does not match the input"),
    ({"prior": np.zeros((SIZE, SIZE - 1))}, "does not match the input"),
])
def test_bad_clip_input_is_a_one_line_error(params, message):
    with pytest.raises(SalientError, match=message) as err:
        driver.drive(get_method("borex").fn(clip_req(), **params), lambda qs: [])
    assert "\n" not in str(err.value)


def test_a_batch_mixing_clips_and_images_is_refused():
    image = Request("i", (SIZE, SIZE), (0,), np.ones(1, np.float32))
    with pytest.raises(SalientError, match="cannot mix clips and images"):
        driver.drive(bx.borex_batch([clip_req(), image], method="gp"), lambda qs: [])
