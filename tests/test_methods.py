"""RISE, DiDA and occlusion against known answers, dense re-computations and Captum; their parameter
and target errors. Toy models only (32 x 32): the real model is in test_real_model.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from toy_models import Linear, NaNWhenBright, Region, TinyConv, toy

import salient
from salient.errors import ItemError, SalientError
from salient.kernels import rise_masks
from salient.methods.dida import DIDA_GRIDS, DIDA_WEIGHTS
from salient.queries import ItemContext, RiseQuery

RNG = np.random.default_rng(0)
IMG = RNG.uniform(0.05, 0.95, (32, 32, 3)).astype(np.float32)


def engine(model, batch_size: int = 16, **opts) -> salient.Engine:
    return salient.Engine(model, batch_size=batch_size, **opts)


@pytest.fixture(scope="module")
def linear():
    """Linear logits behind a non-trivial normalisation, so that fill 0 and black differ."""
    return salient.load_model(Linear(n_classes=3), input_size=32, mean="0.5,0.4,0.3", std="0.25,0.2,0.5",
                              score="logit")


@pytest.fixture(scope="module")
def linear_engine(linear):
    with engine(linear) as eng:
        yield eng


@pytest.fixture(scope="module")
def conv():
    return toy(TinyConv(), size="24x40", score="softmax")


@pytest.fixture(scope="module")
def conv_engine(conv):
    with engine(conv) as eng:
        yield eng


CONV_IMG = RNG.uniform(0, 1, (24, 40, 3)).astype(np.float32)


def contributions(model, img, cls: int, fill: torch.Tensor) -> np.ndarray:
    """Per-pixel change of the linear logit of ``cls`` when the pixel is set to ``fill``: Σ_c W·(x − fill)."""
    x = model.preprocess(img).double()
    w = model.module.weight.detach().double()[cls]
    return (w * (x - fill.double())).sum(0).numpy()


def captum_windows(size, window, stride):
    """Window positions of Captum's Occlusion, written out independently of salient.kernels."""
    ny = math.ceil((size[0] - window[0]) / stride[0]) + 1
    nx = math.ceil((size[1] - window[1]) / stride[1]) + 1
    return [(i * stride[0], j * stride[1]) for i in range(ny) for j in range(nx)]


# ---------------------------------------------------------------- known answers: a linear model


def test_occlusion_linear_known_answer(linear, linear_engine):
    window, stride, baseline = (5, 7), (3, 4), 0.3
    res = linear_engine.explain(IMG, "occlusion", target="top3", window=window, stride=stride, baseline=baseline)
    assert sorted(s.target for s in res) == [0, 1, 2]
    assert res[0].base_score >= res[1].base_score >= res[2].base_score  # top3: by decreasing score
    for s in res:
        c = contributions(linear, IMG, s.target, torch.tensor(baseline))
        total, count = np.zeros((32, 32)), np.zeros((32, 32))
        for y, x in captum_windows((32, 32), window, stride):
            total[y : y + window[0], x : x + window[1]] += c[y : y + window[0], x : x + window[1]].sum()
            count[y : y + window[0], x : x + window[1]] += 1
        assert s.signed and s.method == "occlusion" and s.map.shape == (32, 32)
        np.testing.assert_allclose(s.map, total / count, atol=2e-5, rtol=1e-5)
        assert s.n_forward == 1 + len(captum_windows((32, 32), window, stride))


def test_dida_weights_are_the_papers_alpha_blend():
    """w_i = a_i · Π_{j>i} (1 − a_j), a_0 = 1, a_i = 1/(i+1) + 0.1: the paper's blending, coarse to fine."""
    a = [1.0] + [1.0 / (i + 1) + 0.1 for i in range(1, 8)]
    w = [a[i] * np.prod([1 - a[j] for j in range(i + 1, 8)]) for i in range(8)]
    np.testing.assert_allclose(DIDA_WEIGHTS, w, atol=1e-3)  # the paper prints them rounded (0.129 as 0.130)
    assert abs(sum(DIDA_WEIGHTS) - 1.0) < 1e-9
    assert DIDA_GRIDS == (7, 9, 11, 13, 15, 17, 19, 21)


def test_dida_linear_known_answer_at_defaults(linear, linear_engine):
    s = linear_engine.explain(IMG, "dida", target=1)
    c = contributions(linear, IMG, 1, linear.black())  # DiDA fills black: pixel 0 before normalisation
    ref = np.zeros((32, 32))
    for g, w in zip((7, 9, 11, 13, 15, 17, 19, 21), (0.044, 0.067, 0.085, 0.105, 0.130, 0.156, 0.188, 0.225),
                    strict=True):
        for i in range(g):
            for j in range(g):
                ys = slice(i * 32 // g, (i + 1) * 32 // g)
                xs = slice(j * 32 // g, (j + 1) * 32 // g)
                ref[ys, xs] += w * c[ys, xs].sum()
    assert s.signed and s.target == 1 and s.n_forward == 1 + sum(g * g for g in DIDA_GRIDS)
    np.testing.assert_allclose(s.map, ref, atol=2e-5, rtol=1e-5)
    assert (ref > 0).any() and (ref < 0).any()  # both signs are exercised


def test_dida_fill_and_grids_are_parameters(linear, linear_engine):
    s = linear_engine.explain(IMG, "dida", target=0, grids="3,5", weights=(0.4, 0.6), fill="zero")
    c = contributions(linear, IMG, 0, torch.zeros(3, 1, 1))
    ref = np.zeros((32, 32))
    for g, w in ((3, 0.4), (5, 0.6)):
        for i in range(g):
            for j in range(g):
                ys, xs = slice(i * 32 // g, (i + 1) * 32 // g), slice(j * 32 // g, (j + 1) * 32 // g)
                ref[ys, xs] += w * c[ys, xs].sum()
    np.testing.assert_allclose(s.map, ref, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- known answers: a region model

BOX, NEG = (8, 16, 20, 28), (20, 28, 4, 12)


@pytest.fixture(scope="module")
def region_engine():
    with engine(toy(Region(box=BOX, neg=NEG))) as eng:
        yield eng


def inside(box, shape=(32, 32)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[box[0] : box[1], box[2] : box[3]] = True
    return m


def test_rise_peaks_in_the_region(region_engine):
    s = region_engine.explain(IMG, "rise", target=0, n_masks=600, chunk=200, cells=5)
    assert not s.signed and s.n_forward == 601
    assert inside(BOX)[np.unravel_index(s.map.argmax(), s.map.shape)]
    assert s.map[inside(BOX)].mean() > s.map[inside(NEG)].mean()
    assert s.map[inside(BOX)].min() > np.median(s.map)


def test_dida_positive_on_region_negative_on_neg_zero_elsewhere(region_engine):
    s = region_engine.explain(IMG, "dida", target=0)
    box, neg = inside(BOX), inside(NEG)
    assert box[np.unravel_index(s.map.argmax(), s.map.shape)]
    assert neg[np.unravel_index(s.map.argmin(), s.map.shape)]
    assert (s.map[box] > 0).all() and (s.map[neg] < 0).all()
    # cells of every grid (<= 5 px) that touch neither box leave the score unchanged
    near = np.zeros((32, 32), bool)
    for b in (BOX, NEG):
        near[max(b[0] - 5, 0) : b[1] + 5, max(b[2] - 5, 0) : b[3] + 5] = True
    np.testing.assert_allclose(s.map[~near], 0.0, atol=1e-6)


# ---------------------------------------------------------------- RISE equals its formula


def dense_rise(model, img, target: int, n_masks: int, chunk: int, cells: int, p: float, seed: int,
               fill: torch.Tensor, debiased: bool = False) -> np.ndarray:
    x = model.preprocess(img)
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    for c in range(math.ceil(n_masks / chunk)):
        m = rise_masks(seed, c, min(chunk, n_masks - c * chunk), cells, p, tuple(x.shape[1:]))
        with torch.no_grad():
            f = model.score(model.module(x[None] * m[:, None] + fill * (1 - m[:, None])))[:, target].double()
        total += (f[:, None, None] * ((m.double() - p) if debiased else m.double())).sum(0)
    return (total / (n_masks * p * ((1 - p) if debiased else 1.0))).numpy()


@pytest.mark.parametrize(("fill", "debiased"), [("zero", False), ("black", False), ("zero", True)])
def test_rise_equals_dense_formula(conv, conv_engine, fill, debiased):
    n, chunk, cells, p, seed = 130, 50, 5, 0.4, 3
    res = conv_engine.explain(CONV_IMG, "rise", target="top2", seed=seed, n_masks=n, chunk=chunk, cells=cells,
                              p=p, fill=fill, debiased=debiased)
    fill_t = torch.zeros(3, 1, 1) if fill == "zero" else conv.black()
    for s in res:
        ref = dense_rise(conv, CONV_IMG, s.target, n, chunk, cells, p, seed, fill_t, debiased)
        assert s.map.shape == (24, 40)
        np.testing.assert_allclose(s.map, ref, atol=1e-6, rtol=1e-5)
    assert res[0].target != res[1].target
    assert (res[0].map < 0).any() == debiased


@pytest.mark.parametrize("fill", ["zero", "black", "blur", "mean", 0.3])
def test_rise_inputs_are_the_same_bits_in_either_batch_layout(conv, fill):
    """A channels-last batch gets its masks written in place (``rise_masks(out=...)`` + ``blend_over``);
    a contiguous one the general ``blend_into``: the inputs are identical."""
    ctx = ItemContext("a", conv.preprocess(CONV_IMG), conv.black())
    q = RiseQuery("a", (0,), seed=2, draw=1, n=20, cells=5, fill=fill)
    shape = (6, *ctx.x.shape)
    cl = torch.empty(shape).contiguous(memory_format=torch.channels_last)
    plain = torch.empty(shape)
    q.build(ctx, 3, 9, cl)
    q.build(ctx, 3, 9, plain)
    assert torch.equal(cl, plain)
    m = rise_masks(2, 1, 20, 5, 0.5, ctx.size)[3:9, None]
    sub = ctx.fill(fill)
    np.testing.assert_allclose(plain.numpy(), (sub + m * (ctx.x - sub)).numpy(), atol=1e-6)


def test_rise_same_seed_same_map_other_seed_other_map(conv, conv_engine):
    kw = dict(n_masks=100, chunk=40, cells=4)
    a = conv_engine.explain(CONV_IMG, "rise", seed=1, **kw).map
    b = conv_engine.explain(CONV_IMG, "rise", seed=1, **kw).map
    c = conv_engine.explain(CONV_IMG, "rise", seed=2, **kw).map
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 * np.abs(a).max()
    with engine(conv, batch_size=7) as other:  # another batch size and packing: the same map
        np.testing.assert_allclose(other.explain(CONV_IMG, "rise", seed=1, **kw).map, a, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- occlusion equals Captum


def test_occlusion_equals_captum_on_a_toy(conv, conv_engine):
    from captum.attr import Occlusion

    window, stride, baseline = (5, 7), (3, 4), 0.3
    res = conv_engine.explain(CONV_IMG, "occlusion", target="top2", window=window, stride=stride, baseline=baseline)
    x = conv.preprocess(CONV_IMG)[None]
    occ = Occlusion(lambda t: conv.module(t).softmax(-1))
    for s in res:
        ref = occ.attribute(x, sliding_window_shapes=(3, *window), strides=(3, *stride), baselines=baseline,
                            target=s.target, perturbations_per_eval=16)
        # Captum gives every channel the same value: the map is one channel of it
        np.testing.assert_allclose(s.map, ref[0, 0].numpy(), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- bad inputs at the API level


def test_unknown_method(linear_engine):
    with pytest.raises(SalientError, match=r"unknown method 'lime'.*dida.*occlusion.*rise"):
        linear_engine.explain(IMG, "lime")


@pytest.mark.parametrize(
    ("method", "params", "pattern"),
    [
        ("rise", {"masks": 10}, r"unknown parameter 'masks'.*valid: .*cells.*n_masks"),
        ("dida", {"grid": 3}, r"unknown parameter 'grid'.*valid: .*grids.*weights"),
        ("occlusion", {"size": 3}, r"unknown parameter 'size'.*valid: .*baseline.*stride.*window"),
        ("rise", {"n_masks": "many"}, r"'n_masks'.*expects int"),
        ("rise", {"n_masks": 2.5}, r"'n_masks'.*expects int"),
        ("rise", {"p": "half"}, r"'p'.*expects float"),
        ("rise", {"debiased": "maybe"}, r"'debiased'.*expects bool"),
        ("dida", {"grids": "a,b"}, r"'grids'.*expects tuple"),
        ("occlusion", {"window": "5xq"}, r"'window'.*expects tuple"),
        ("rise", {"p": 0.0}, r"p must lie in"),
        ("rise", {"p": 1.0, "debiased": True}, r"p must lie in"),
        ("rise", {"n_masks": 0}, r"must be >= 1"),
        ("dida", {"grids": (3, 5), "weights": (1.0,)}, r"2 grid sizes but 1 weights"),
        ("dida", {"grids": (40,), "weights": (1.0,)}, r"grid sizes must lie in"),
        ("occlusion", {"window": 33}, r"larger than the input"),
        ("occlusion", {"stride": 0}, r"stride must be"),
        ("occlusion", {"baseline": "purple"}, r"baseline.*expects float"),
        ("rise", {"fill": "purple"}, r"fill must be one of zero, black, blur, mean or a number, got 'purple'"),
        ("dida", {"fill": "purple"}, r"fill must be one of"),
    ],
)
def test_bad_parameters_are_named(linear_engine, method, params, pattern):
    with pytest.raises(SalientError, match=pattern):
        linear_engine.explain(IMG, method, **params)


def test_strings_from_set_are_coerced(linear_engine):
    a = linear_engine.explain(IMG, "occlusion", target=2, window="5x7", stride="3,4", baseline="0.3")
    b = linear_engine.explain(IMG, "occlusion", target=2, window=(5, 7), stride=(3, 4), baseline=0.3)
    np.testing.assert_array_equal(a.map, b.map)
    assert a.params["window"] == (5, 7) and a.params["baseline"] == 0.3


@pytest.mark.parametrize(
    ("target", "pattern"),
    [(3, r"target class id 3 out of range \[0, 2\]"), (-1, r"out of range"), ("7", r"out of range"),
     ("top4", r"top1 \.\. top3"), ("zebra", r"unknown target label 'zebra'"), (1.5, r"target must be")],
)
def test_bad_targets(linear_engine, target, pattern):
    with pytest.raises(SalientError, match=pattern):
        linear_engine.explain(IMG, "occlusion", target=target, window=16, stride=16)


def test_targets_by_label_and_id(linear_engine):
    a = linear_engine.explain(IMG, "occlusion", target="Class_2", window=16, stride=16)
    b = linear_engine.explain(IMG, "occlusion", target=2, window=16, stride=16)
    assert a.target == b.target == 2 and a.label == "class_2"
    np.testing.assert_array_equal(a.map, b.map)


def test_nan_scores_fail_the_item_only():
    model = toy(NaNWhenBright(limit=0.9))
    bright, dull = IMG.copy(), IMG.copy()
    bright[0, 0, 0], dull[0, 0, 0] = 0.95, 0.5
    with engine(model) as eng:
        with pytest.raises(ItemError, match="NaN"):
            eng.explain(bright, "rise", n_masks=20, chunk=10)
        # the unmasked input is fine; inputs whose window covers the corner with baseline 1 are NaN
        with pytest.raises(ItemError, match="NaN"):
            eng.explain(dull, "occlusion", window=8, stride=8, baseline=1.0)
        out = dict(eng.explain_many([("bright", bright), ("dull", dull)], "occlusion", window=8, stride=8))
    assert isinstance(out["bright"], ItemError) and "NaN" in str(out["bright"])
    assert isinstance(out["dull"], list) and np.isfinite(out["dull"][0].map).all()


def test_values_are_checked_before_any_work():
    from salient.methods import get_method

    rise, occ = get_method("rise"), get_method("occlusion")
    with pytest.raises(SalientError, match="p must lie in"):
        rise.check_values(rise.check_params({"p": 0}), (32, 32))
    with pytest.raises(SalientError, match=r"window \(40, 40\) larger than the input \(32, 24\)"):
        occ.check_values(occ.check_params({"window": 40}), (32, 24))
    for name in ("rise", "dida", "occlusion"):  # the defaults pass at the real model's size
        get_method(name).check_values(get_method(name).defaults, (224, 224))
