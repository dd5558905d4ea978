"""``frames:<image model>``: image classifiers lifted to clips (scores = the mean of the frames' scores), CAMs on
them (image-net layers folded to clips), Score-CAM 3-D against its definition, and bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from torch import nn
from toy_models import TinyConv, toy

import salient
from salient.engine import Item
from salient.errors import SalientError
from salient.methods.cam import cam_maps, gradcampp_weights
from salient.models.frames import FramesNet, lift

TOY = "frames:toy_models:TinyConv?input_size=16&mean=0,0,0&std=1,1,1"


@pytest.mark.parametrize("kind", ["softmax", "logit", "sigmoid"])
def test_clip_score_is_the_mean_of_the_frames_scores(kind):
    model = salient.load_model(f"{TOY}&frames=5&score={kind}")
    image = toy(TinyConv(), size=16, score=kind)  # the same seeded net as an image model
    assert model.name == "frames:toy_models:TinyConv" and model.frames == 5 and model.input_shape == (3, 5, 16, 16)
    assert (model.score_kind, model.mean, model.std, model.labels) == (kind, image.mean, image.std, image.labels)
    x = torch.randn(3, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        got = model.score(model.module(x))
        frames = torch.stack([image.score(image.module(x[:, :, t])) for t in range(5)], dim=1)
    torch.testing.assert_close(got, frames.mean(dim=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(frames[:, 0], frames[:, 1])  # the frames differ, so the mean is not trivial
    if kind == "softmax":
        torch.testing.assert_close(got.sum(dim=1), torch.ones(3))


def test_the_image_net_runs_once_on_all_frames():
    calls = []
    net = TinyConv()
    net.register_forward_hook(lambda _m, inp, _o: calls.append(tuple(inp[0].shape)))
    model = lift(toy(net, size=16), 4)
    calls.clear()
    with torch.no_grad():
        model.module(torch.zeros(2, 3, 4, 16, 16))
    assert calls == [(8, 3, 16, 16)]


def image_gradcampp_3d(net: nn.Module, layer: str, clip: torch.Tensor, target: int) -> np.ndarray:
    """The 3-D Grad-CAM++ rule applied by hand: each frame through the image net, activations and gradients of
    the clip's logit (the mean of the frames' logits: each frame's gradient / T) stacked along t."""
    acts, grads = [], []
    store = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda _m, _i, out: store.update(a=out))
    t = clip.shape[1]
    try:
        for f in range(t):
            x = clip[:, f][None].clone().requires_grad_(True)
            logit = net(x)[0, target]
            (g,) = torch.autograd.grad(logit, store["a"])
            acts.append(store["a"][0].detach())
            grads.append(g[0] / t)
    finally:
        handle.remove()
    a, g = torch.stack(acts, dim=1), torch.stack(grads, dim=1)  # (C', T, h, w)
    return cam_maps(gradcampp_weights(a, g[None]), a, tuple(clip.shape[1:]))[0]


def test_gradcampp_on_a_frames_model_is_the_3d_rule_on_the_image_nets_layer():
    model = salient.load_model(f"{TOY}&frames=4&score=logit")
    clip = torch.rand(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with salient.Engine(model, batch_size=4) as eng:
        s = eng.explain(Item("clip", clip), "gradcampp", target=2, layer="conv")
        default = eng.explain(Item("clip", clip), "gradcampp", target=2)
    assert s.map.shape == (4, 16, 16) and s.params["layer"] == "conv" and default.params["layer"] == "conv"
    np.testing.assert_allclose(s.map, image_gradcampp_3d(TinyConv(), "conv", clip, 2), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(default.map, s.map)


def test_a_still_clip_gives_each_frame_about_the_image_models_map():
    """All frames equal: Grad-CAM++'s α and weights on the clip equal the image's (the 1/T of the gradient and
    the T of Σ A cancel), so each frame's map is the image's up to the 3-D resize (scipy zoom, cubic spline)
    vs the 2-D one (bilinear): same peak, close values."""
    frame = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    clip = frame[:, None].repeat(1, 4, 1, 1)
    with salient.Engine(salient.load_model(f"{TOY}&frames=4&score=logit"), batch_size=4) as eng:
        video = eng.explain(Item("clip", clip), "gradcampp", target=1).map
    with salient.Engine(toy(TinyConv(), size=16), batch_size=4) as eng:
        still = eng.explain(Item("x", frame), "gradcampp", target=1).map
    for t in range(4):
        np.testing.assert_allclose(video[t], video[0], atol=1e-6)
        assert np.unravel_index(np.argmax(video[t]), still.shape) == np.unravel_index(np.argmax(still), still.shape)
    assert np.corrcoef(video[0].ravel(), still.ravel())[0, 1] > 0.95


def test_scorecam_runs_on_a_frames_model():
    clip = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    with salient.Engine(salient.load_model(f"{TOY}&frames=2"), batch_size=4) as eng:
        s = eng.explain(Item("clip", clip), "scorecam", target=0)
    assert s.map.shape == (2, 16, 16) and s.map.max() == pytest.approx(1.0, abs=1e-6)
    assert s.n_forward == 1 + 1 + 6  # unmasked, activations, one pass per distinct channel of the 6


# -- Score-CAM 3-D against its definition ---------------------------------------------------------------------------


class VideoConv(nn.Module):
    """Conv3d (stride 2 in space) -> ReLU -> mean -> linear: 5-D activations (N, 5, T, h, w)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv3d(3, 5, 3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def test_scorecam_3d_matches_its_definition():
    """H^k = minmax(trilinear align-corners upsampling of A^k) (here by scipy's map_coordinates, order 1),
    s_k = the raw logit of x ⊙ H^k, w = softmax(s), map = cam_maps(w, A)."""
    net = VideoConv()
    x = torch.rand(3, 4, 12, 12, generator=torch.Generator().manual_seed(4))
    with salient.Engine(toy(net, size=12, frames=4), batch_size=3) as eng:
        s = eng.explain(Item("clip", x), "scorecam", target=1, chunk=2)
    with torch.no_grad():
        a = net.features(x[None])[0].numpy()  # (5, 4, 6, 6)
        grid = np.meshgrid(*[np.linspace(0, n - 1, m) for n, m in zip(a.shape[1:], x.shape[1:], strict=True)],
                           indexing="ij")
        up = np.stack([map_coordinates(c.astype(np.float64), grid, order=1) for c in a])
        lo, hi = up.min(axis=(1, 2, 3), keepdims=True), up.max(axis=(1, 2, 3), keepdims=True)
        masks = torch.from_numpy((up - lo) / (hi - lo + 1e-8)).float()
        scores = net(x[None] * masks[:, None])[:, 1]
    want = cam_maps(scores.softmax(dim=0)[None], torch.from_numpy(a), tuple(x.shape[1:]))[0]
    assert s.map.shape == (4, 12, 12)
    np.testing.assert_allclose(s.map, want, atol=1e-5, rtol=0)


# -- bad specs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("frames:torchvision:r3d_18?input_size=16", "frames: lifts an image classifier; torchvision:r3d_18 is a video net"),
    ("frames:toy_models:FeatureMap?input_size=8&output=reconstruction", "is a reconstruction model"),
    ("frames:toy_models:make_linear?input_size=32&output=embedding", "is an embedding model"),
    (f"{TOY}&frames=0", "frames must be an integer >= 1, got '0'"),
    (f"{TOY}&frames=two", "frames must be an integer >= 1"),
    ("frames:frames:efficientnet-lite0", "cannot be nested"),
    ("frames:", "needs an image model spec"),
    ("frames:no_such_model", "unknown model spec"),
])
def test_bad_frames_specs_are_one_line_errors(spec, message):
    with pytest.raises(SalientError, match=message) as err:
        salient.load_model(spec)
    assert "\n" not in str(err.value)


def test_frames_efficientnet_lite0_loads_the_real_image_model():
    model = salient.load_model("frames:efficientnet-lite0", frames=2)
    assert model.name == "frames:efficientnet-lite0" and model.frames == 2 and model.input_size == (224, 224)
    assert len(model.labels) == 1000 and model.labels[0] == "tench" and model.score_kind == "softmax"
    assert isinstance(model.module, FramesNet) and salient.load_model("frames:efficientnet-lite0").frames == 16


def test_fold_activation_is_frames_into_a_time_axis():
    net = FramesNet(nn.Identity(), 3, "logit")
    a = torch.arange(2 * 3 * 4 * 5).view(6, 4, 5)[:, None]  # (N·T, C'=1, 4, 5), frame index k = n·T + t
    folded = net.fold_activation(a)
    assert folded.shape == (2, 1, 3, 4, 5)
    for n in range(2):
        for t in range(3):
            assert torch.equal(folded[n, :, t], a[n * 3 + t])
