"""Insertion and deletion curves with hand-computable points (a linear model), and the AUC rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate, gaussian_filter
from toy_models import Linear

import salient
from salient.errors import SalientError
from salient.metrics import Curve, auc, curve_counts

RNG = np.random.default_rng(5)
IMG = RNG.uniform(0, 1, (32, 32, 3)).astype(np.float32)
SAL = RNG.permutation(32 * 32).reshape(32, 32).astype(np.float32)  # distinct values: one order


@pytest.fixture(scope="module")
def linear():
    m = salient.load_model(Linear(n_classes=3, seed=2), input_size=32, mean="0.5,0.4,0.3", std="0.25,0.2,0.5",
                           score="logit")
    yield m
    eng = getattr(m, "_engine", None)
    if eng is not None:
        eng.close()


def saliency(target: int, sal: np.ndarray = SAL) -> salient.Saliency:
    return salient.Saliency(map=sal, signed=False, method="test", target=target)


def linear_curve(model, target: int, start: np.ndarray, end: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Logit of ``target`` when the first counts[k] pixels (by decreasing SAL) show ``end`` and the rest
    ``start``: f(start) + cumulative Σ W·(end − start) over the moved pixels."""
    w = model.module.weight.detach().double()[target].numpy()
    b = float(model.module.bias.detach()[target])
    delta = (w * (end - start)).sum(0).ravel()[np.argsort(-SAL.ravel(), kind="stable")]
    moved = np.concatenate([[0.0], np.cumsum(delta)])[counts]
    return b + (w * start).sum() + moved


def gkern_blur(x: np.ndarray) -> np.ndarray:
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = gaussian_filter(delta, 5)
    return np.stack([correlate(c, k, mode="constant") for c in x])


@pytest.mark.parametrize(("kind", "substrate"), [("deletion", None), ("deletion", 0.7), ("insertion", None),
                                                 ("insertion", "zero")])
def test_curves_of_a_linear_model(linear, kind, substrate):
    x = linear.preprocess(IMG).double().numpy()
    step = 7
    counts = np.minimum(np.arange(math.ceil(1024 / step) + 1) * step, 1024)
    if substrate is None:
        sub = np.zeros_like(x) if kind == "deletion" else gkern_blur(x)
    else:
        sub = np.full_like(x, float(substrate)) if substrate != "zero" else np.zeros_like(x)
    start, end = (x, sub) if kind == "deletion" else (sub, x)
    fn = salient.metrics.deletion if kind == "deletion" else salient.metrics.insertion
    kw = {} if substrate is None else {"substrate": substrate}
    for target in (0, 2):
        c = fn(linear, IMG, saliency(target), step=step, **kw)
        assert isinstance(c, Curve) and c.kind == kind and c.target == target
        np.testing.assert_array_equal(c.counts, counts)
        ref = linear_curve(linear, target, start, end, counts)
        np.testing.assert_allclose(c.scores, ref, atol=1e-4, rtol=1e-5)
        assert c.auc == pytest.approx(np.trapezoid(ref, dx=1.0 / (len(ref) - 1)), abs=1e-4)
        np.testing.assert_allclose(c.fractions[[0, -1]], [0.0, 1.0])


def test_curve_endpoints_and_default_step(linear):
    """Default step: H·W / 224 pixels (5 at 32²); deletion ends at the substrate, insertion at the image."""
    c = salient.metrics.deletion(linear, IMG, saliency(1))
    assert len(c.counts) == math.ceil(1024 / 5) + 1 and c.counts[1] == 5 and c.counts[-1] == 1024
    x = linear.preprocess(IMG)
    with torch.no_grad():
        full = float(linear.module(x[None])[0, 1])
        empty = float(linear.module(torch.zeros_like(x)[None])[0, 1])
    assert c.scores[0] == pytest.approx(full, abs=1e-5) and c.scores[-1] == pytest.approx(empty, abs=1e-5)


def test_better_map_better_curves(linear):
    """The map Σ_c W·x (the exact per-pixel contribution) deletes best and inserts best."""
    x = linear.preprocess(IMG).double().numpy()
    w = linear.module.weight.detach().double()[0].numpy()
    good = (w * x).sum(0).astype(np.float32)
    for fn, better in ((salient.metrics.deletion, np.less), (salient.metrics.insertion, np.greater)):
        a = fn(linear, IMG, saliency(0, good), substrate="zero").auc
        b = fn(linear, IMG, saliency(0, -good), substrate="zero").auc
        assert better(a, b)


def test_auc_of_known_arrays():
    assert auc(np.ones(7)) == pytest.approx(1.0)
    assert auc([0.0, 1.0]) == pytest.approx(0.5)
    assert auc([1.0, 0.0, 0.0, 0.0, 0.0]) == pytest.approx(0.125)
    assert auc(np.linspace(0, 1, 225)) == pytest.approx(0.5)
    a = RNG.random(33)
    assert auc(a) == pytest.approx((a.sum() - a[0] / 2 - a[-1] / 2) / 32)
    with pytest.raises(SalientError, match="at least two points"):
        auc([1.0])


def test_curve_counts():
    c = curve_counts((224, 224))
    assert len(c) == 225 and c[1] == 224 and c[-1] == 224 * 224
    np.testing.assert_array_equal(curve_counts((3, 5), step=4), [0, 4, 8, 12, 15])
    with pytest.raises(SalientError, match="step must be >= 1"):
        curve_counts((3, 5), step=0)


def test_curve_errors(linear):
    with pytest.raises(SalientError, match="differs from the input size"):
        salient.metrics.deletion(linear, IMG, saliency(0, np.zeros((16, 16), np.float32)))
    with pytest.raises(SalientError, match="fill must be one of"):
        salient.metrics.insertion(linear, IMG, saliency(0), substrate="purple")
