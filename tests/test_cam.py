"""Grad-CAM, Grad-CAM++ and Score-CAM: agreement with pytorch-grad-cam, known-answer models, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from toy_models import Linear, toy

import salient
from salient.engine import Item, Task
from salient.methods import Request, get_method
from salient.methods.cam_score import distinct_channels

REFERENCE = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "scorecam": ScoreCAM}
TOL = 1e-4


def reference(method: str, module: nn.Module, layer: str, x: torch.Tensor, targets) -> np.ndarray:
    """pytorch-grad-cam's maps (one per target) for input x (C, ...) at ``layer``."""
    with REFERENCE[method](module, [module.get_submodule(layer)]) as cam:
        batch = x[None].repeat(len(targets), *[1] * x.ndim)
        return cam(batch, [ClassifierOutputTarget(t) for t in targets])


def check_against_reference(results, method, module, x):
    assert len(results) == 2 and results[0].target != results[1].target
    ref = reference(method, module, results[0].params["layer"], x, [r.target for r in results])
    for r, expected in zip(results, ref, strict=True):
        assert r.map.shape == expected.shape
        assert r.map.min() >= 0.0 and r.map.max() <= 1.0 and r.map.max() > 0.5
        np.testing.assert_allclose(r.map, expected, atol=TOL, rtol=0)
    assert np.abs(results[0].map - results[1].map).max() > 10 * TOL  # so the agreement shows targets are honoured


# -- the real EfficientNet-Lite0 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_reference_module():
    from salient.models.efficientnet import efficientnet_lite0

    return efficientnet_lite0()


@pytest.mark.slow
@pytest.mark.parametrize("method,layer", [("gradcam", "_conv_head"), ("gradcampp", "_bn1")])
def test_real_model_gradient_cams_match_pytorch_grad_cam(real_engine, real_reference_module, samples, method, layer):
    img = samples["chelsea"]
    results = real_engine.explain(img, method, target="top2", layer=layer)
    assert results[0].params["layer"] == layer
    check_against_reference(results, method, real_reference_module, real_engine.model.preprocess(img))


@pytest.mark.slow
def test_real_model_scorecam_matches_pytorch_grad_cam(real_engine, real_reference_module, samples):
    img = samples["chelsea"]
    results = real_engine.explain(img, "scorecam", target="top2", layer="_blocks.4")  # 40 channels
    assert 1 + 1 + 1 < results[0].n_forward <= 1 + 1 + 40  # unmasked scores, activations, a pass per distinct channel
    check_against_reference(results, "scorecam", real_reference_module, real_engine.model.preprocess(img))


@pytest.mark.slow
def test_real_model_default_layer_is_the_head_activation(real_engine, samples):
    """EfficientNet-Lite's ReLU6 module runs after the stem and after the head: the default is its last call."""
    auto = real_engine.explain(samples["chelsea"], "gradcampp")
    assert auto.params["layer"] == "_swish@1"
    explicit = real_engine.explain(samples["chelsea"], "gradcampp", layer="_swish@-1")
    np.testing.assert_array_equal(auto.map, explicit.map)
    stem = real_engine.explain(samples["chelsea"], "gradcampp", layer="_swish")  # first call, as pytorch-grad-cam
    assert stem.params["layer"] == "_swish@0"
    assert np.abs(stem.map - auto.map).max() > 0.1


# -- torchvision resnet18, seeded random weights ----------------------------------------------

RESNET = "torchvision:resnet18?seed=0&input_size=64x96"  # not square: catches transposed axes


@pytest.fixture(scope="module")
def resnet_engine():
    with salient.Engine(RESNET, batch_size=8) as eng:
        yield eng


@pytest.mark.parametrize("method,layer", [("gradcam", ""), ("gradcampp", ""), ("scorecam", "layer2")])
def test_resnet18_matches_pytorch_grad_cam(resnet_engine, samples, method, layer):
    img = samples["coffee"]
    results = resnet_engine.explain(img, method, target="top2", layer=layer)
    assert results[0].params["layer"] == (layer or "layer4")  # layer4's output is the last feature map
    module = salient.load_model(RESNET).module  # an independent copy, same seed
    check_against_reference(results, method, module, resnet_engine.model.preprocess(img))


def test_gradient_cams_leave_the_model_untouched(resnet_engine, samples):
    module = resnet_engine.executor.worker.module
    resnet_engine.explain(samples["coffee"], "gradcampp", layer="layer3.1.bn2")  # its output is modified in place
    assert all(p.grad is None for p in module.parameters())
    assert not any(m._forward_hooks for m in module.modules())


# -- video nets (5-D activations) --------------------------------------------------------------

R3D = "torchvision:r3d_18?seed=0&input_size=32&frames=8"


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_r3d_18_matches_pytorch_grad_cam_3d(method):
    model = salient.load_model(R3D)
    assert model.input_shape == (3, 8, 32, 32)
    ref_module = salient.load_model(R3D).module  # an independent copy, same seed
    x = torch.randn(3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with salient.Engine(model, batch_size=2) as eng:
        for layer in ("", "layer3"):  # layer4: (512, 1, 2, 2) activations; layer3: (256, 2, 4, 4)
            results = eng.explain(Item("clip", x), method, target="top2", layer=layer)
            assert results[0].params["layer"] == (layer or "layer4")
            assert results[0].map.shape == (8, 32, 32)
            check_against_reference(results, method, ref_module, x)


def test_video_model_defaults_and_clip_preprocessing():
    model = salient.load_model("torchvision:r3d_18?frames=4&input_size=16")
    assert model.frames == 4 and model.mean == (0.43216, 0.394666, 0.37645)
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 20, 24, 3), dtype=np.uint8)
    clip = model.preprocess_clip(frames)
    assert clip.shape == (3, 4, 16, 16)
    torch.testing.assert_close(clip[:, 2], model.preprocess(frames[2]))
    with pytest.raises(salient.SalientError, match="frames"):
        salient.load_model("torchvision:r3d_18?frames=-1&input_size=16")


# -- known answers: only one region feeds the target logit -------------------------------------


class RegionConv(nn.Module):
    """Features = ReLU(1x1 conv, stride 2, of x ⊙ box): only the box's pixels reach them; class 0's logit
    is a positive combination of their means. Works in 2-D (dims=2) and 3-D (dims=3, box over t, y, x)."""

    def __init__(self, box, size: int = 32, frames: int = 8, dims: int = 2, channels: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        conv = nn.Conv2d(3, channels, 1, stride=2) if dims == 2 else nn.Conv3d(3, channels, 1, stride=(1, 2, 2))
        with torch.no_grad():
            conv.bias.zero_()
        self.features = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(channels, 3)
        with torch.no_grad():
            self.head.weight[0] = self.head.weight[0].abs() + 0.1
        mask = torch.zeros((frames,) * (dims - 2) + (size, size))
        mask[tuple(slice(a, b) for a, b in box)] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return self.head(self.features(x * self.mask).flatten(2).mean(dim=2))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "scorecam"])
def test_peak_lies_in_the_only_region_that_feeds_the_logit(method):
    box = ((4, 12), (18, 28))
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    with salient.Engine(toy(RegionConv(box)), batch_size=4) as eng:
        s = eng.explain(Item("x", x), method, target=0)
    peak = np.unravel_index(np.argmax(s.map), s.map.shape)
    assert all(a <= p < b for p, (a, b) in zip(peak, box, strict=True)), peak
    outside = np.ones(s.map.shape, bool)
    outside[box[0][0] - 1 : box[0][1] + 1, box[1][0] - 1 : box[1][1] + 1] = False  # bilinear spills one pixel
    assert s.map.max() == pytest.approx(1.0, abs=1e-6) and s.map[outside].max() < 1e-6


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "scorecam"])
def test_peak_lies_in_the_only_region_that_feeds_the_logit_3d(method):
    box = ((2, 5), (4, 12), (18, 28))
    x = torch.rand(3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    with salient.Engine(toy(RegionConv(box, dims=3), frames=8), batch_size=4) as eng:
        s = eng.explain(Item("clip", x), method, target=0)
    assert s.map.shape == (8, 32, 32)
    peak = np.unravel_index(np.argmax(s.map), s.map.shape)
    assert all(a <= p < b for p, (a, b) in zip(peak, box, strict=True)), peak


# -- Score-CAM through the engine --------------------------------------------------------------


def conv_net(channels: int = 11, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5),
    )


def test_scorecam_is_batch_and_chunk_invariant():
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = {}
    for b in (1, 3, 8):
        with salient.Engine(toy(conv_net()), batch_size=b) as eng:
            for chunk in (4, 64):
                s = eng.explain(Item("x", x), "scorecam", target="top1", chunk=chunk)
                assert s.params["layer"] == "3" and s.n_forward == 1 + 1 + 11
                maps[b, chunk] = s.map
    first = maps[1, 4]
    assert first.max() == pytest.approx(1.0, abs=1e-6)
    for m in maps.values():
        np.testing.assert_allclose(m, first, atol=1e-6, rtol=0)


def test_distinct_channels_known_answer():
    a = np.zeros((5, 2, 2), np.float32)
    a[1] = 1.0
    a[3] = 1.0
    a[4, 0, 0] = -0.0  # bitwise distinct from +0: never merged by value
    a[4] = np.copysign(a[4], -1.0)
    distinct, inverse = distinct_channels(a)
    assert len(distinct) == 3 and inverse.tolist() == [0, 1, 0, 1, 2]
    np.testing.assert_array_equal(distinct[inverse], a)
    assert np.signbit(distinct[2]).all()


def test_scorecam_passes_dead_and_repeated_channels_once_with_the_same_map():
    """6 of 11 channels are dead (ReLU of a large negative bias) and 2 copy another: 1 + 1 + 4 passes, pgc's map."""
    net = conv_net()
    conv = net[2]
    with torch.no_grad():
        conv.bias[5:] = -1e3
        conv.weight[1], conv.bias[1] = conv.weight[0], conv.bias[0]
        conv.weight[2], conv.bias[2] = conv.weight[0], conv.bias[0]
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(4))
    with salient.Engine(toy(net), batch_size=4) as eng:
        s = eng.explain(Item("x", x), "scorecam", target=2, chunk=3)
    assert s.n_forward == 1 + 1 + 4  # unmasked scores, activations, channels {0=1=2, 3, 4, dead}
    np.testing.assert_allclose(s.map, reference("scorecam", net, "3", x, [2])[0], atol=TOL, rtol=0)


def test_scorecam_scores_raw_logits_whatever_the_model_score_kind():
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    net = conv_net()
    maps = {}
    for kind in ("softmax", "logit", "sigmoid"):
        with salient.Engine(toy(net, score=kind), batch_size=4) as eng:
            maps[kind] = eng.explain(Item("x", x), "scorecam", target=1).map
    np.testing.assert_array_equal(maps["softmax"], maps["logit"])
    np.testing.assert_array_equal(maps["sigmoid"], maps["logit"])
    ref = reference("scorecam", net, "3", x, [1])[0]
    np.testing.assert_allclose(maps["logit"], ref, atol=TOL, rtol=0)


def test_cam_maps_compose_as_borex_priors():
    """``yield from get_method("gradcampp").fn(req, ...)`` inside another generator gives the same map."""
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(4))

    def prior_task(item):
        req = Request(item.id, item.size, (2,), np.zeros(1, np.float32))
        prior = yield from get_method("gradcampp").fn(req, layer="2")
        return np.asarray(prior) * 2.0

    with salient.Engine(toy(conv_net()), batch_size=4) as eng:
        item = Item("x", x)
        ((_, out),) = list(eng.run([Task("k", item, prior_task(item))]))
        direct = eng.explain(item, "gradcampp", target=2, layer="2").map
    assert out.shape == (1, 32, 32)
    np.testing.assert_array_equal(out[0], 2.0 * direct)


# -- bad inputs ------------------------------------------------------------------------------


class Odd(nn.Module):
    """A conv net with an unused layer, a 1x1 pooling, and switchable broken gradient paths."""

    def __init__(self, mode: str = "ok"):
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.unused = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 2)
        self.side = nn.Linear(3, 2)

    def forward(self, x):
        if self.mode == "no_grad":
            with torch.no_grad():
                a = self.features(x)
        else:
            a = self.features(x)
        out = self.head(self.pool(a).flatten(1))
        if self.mode == "detach":
            return out.detach()
        if self.mode == "bypass":  # the features run, but the logits come from elsewhere
            return self.side(x.mean(dim=(2, 3)))
        return out


def _error(model, method: str, **params) -> str:
    """The one-line error of explaining with ``params``: a layer that cannot resolve on the model is
    refused before any work (a SalientError), the rest per item (an ItemError)."""
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    with salient.Engine(model, batch_size=2) as eng:
        with pytest.raises(salient.SalientError) as info:
            eng.explain(Item("x", x), method, target=0, **params)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "scorecam"])
def test_bad_layers_are_one_line_errors_with_candidates(method):
    model = toy(Odd())
    msg = _error(model, method, layer="featurez")
    assert "unknown layer 'featurez'" in msg and "did you mean features" in msg and "features.1" in msg
    msg = _error(model, method, layer="unused")
    assert "does not run in the forward pass" in msg and "features" in msg
    for layer, shape in (("head", "(1, 2)"), ("pool", "(1, 4, 1, 1)")):
        msg = _error(model, method, layer=layer)
        assert f"layer '{layer}' outputs shape {shape}" in msg and "features.1" in msg
    msg = _error(model, method, layer="features@2")
    assert "runs 1 time(s)" in msg
    assert "spatial" in _error(toy(Linear()), method)  # no convolutional layer at all


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_models_without_gradient_path_are_errors_not_zero_maps(method):
    for mode in ("no_grad", "detach"):
        assert "no gradient path" in _error(toy(Odd(mode)), method)
    assert "does not depend on layer 'features'" in _error(toy(Odd("bypass")), method, layer="features")


def test_torchscript_and_bad_parameters():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(Odd())
    assert "TorchScript" in _error(toy(scripted), "gradcam")
    with salient.Engine(toy(Odd()), batch_size=2) as eng, pytest.raises(salient.SalientError, match="chunk"):
        eng.explain(torch.rand(3, 32, 32), "scorecam", target=0, chunk=0)
