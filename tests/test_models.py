"""Model specs (torchvision + local weights, TorchScript, pkg.module:callable), options, labels,
preprocessing and scores; every bad spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from toy_models import FeatureMap, Linear, make_linear

import salient
from salient.errors import SalientError
from salient.models import load_model, parse_spec
from salient.models.loader import IMAGENET_MEAN, IMAGENET_STD

ARCH = "squeezenet1_1"  # small (1.2M parameters): quick to save, load and run


def outputs(module, x):
    with torch.no_grad():
        return module(x)


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    torch.manual_seed(11)
    net = tvm.get_model(ARCH, weights=None).eval()
    path = tmp_path_factory.mktemp("w") / f"{ARCH}.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_with_local_weights(tv_weights):
    net, path = tv_weights
    m = load_model(f"torchvision:{ARCH}?weights={path}&input_size=96")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(outputs(m.module, x), outputs(net, x))
    assert m.input_size == (96, 96) and m.mean == IMAGENET_MEAN and m.std == IMAGENET_STD
    assert m.n_classes == 1000 and m.labels[285] == "Egyptian cat" and m.score_kind == "softmax"
    wrapped = load_model(f"torchvision:{ARCH}", weights=str(path), input_size=96)  # keyword options
    torch.testing.assert_close(outputs(wrapped.module, x), outputs(net, x))


def test_torchvision_checkpoint_dict_and_seeded_init(tv_weights, tmp_path):
    net, _ = tv_weights
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m = load_model(f"torchvision:{ARCH}?weights={path}&input_size=64")
    torch.testing.assert_close(outputs(m.module, x), outputs(net, x))
    a, b, c = (load_model(f"torchvision:{ARCH}?input_size=64&seed={s}").module for s in (1, 1, 2))
    torch.testing.assert_close(outputs(a, x), outputs(b, x))
    assert not torch.allclose(outputs(a, x), outputs(c, x))


class NotWeights:
    pass


def test_torchvision_bad_weights(tmp_path):
    with pytest.raises(SalientError, match=r"weights file .*nope\.pth not found"):
        load_model(f"torchvision:{ARCH}?weights={tmp_path / 'nope.pth'}")
    other = tmp_path / "other.pth"
    torch.save(Linear().state_dict(), other)
    with pytest.raises(SalientError, match=rf"weights .*other\.pth do not fit {ARCH}"):
        load_model(f"torchvision:{ARCH}?weights={other}")
    pickled = tmp_path / "pickled.pth"
    torch.save({"obj": NotWeights()}, pickled)  # needs full unpickling: refused by weights_only
    with pytest.raises(SalientError, match=r"cannot load weights .*pickled\.pth"):
        load_model(f"torchvision:{ARCH}?weights={pickled}")
    with pytest.raises(SalientError, match=r"unknown torchvision architecture 'resnet9000'.*resnet"):
        load_model("torchvision:resnet9000")


def test_torchscript_file(tmp_path):
    lin = Linear(n_classes=4, seed=3).eval()
    path = tmp_path / "lin.pt"
    torch.jit.script(lin).save(str(path))
    m = load_model(str(path), input_size=32, score="logit")
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(outputs(m.module, x), outputs(lin, x))
    assert m.labels == ["class_0", "class_1", "class_2", "class_3"] and m.mean == (0.5, 0.5, 0.5)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(SalientError, match=r"bad\.pt is not a TorchScript model"):
        load_model(str(tmp_path / "bad.pt"))
    with pytest.raises(SalientError, match=r"model file .*gone\.pt not found"):
        load_model(str(tmp_path / "gone.pt"))


def test_module_callable_spec():
    m = load_model("toy_models:make_linear?input_size=32&score=logit")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(outputs(m.module, x), outputs(make_linear(), x))
    assert m.name == "toy_models:make_linear" and m.score_kind == "logit"
    assert load_model("toy_models:Linear", input_size=32).n_classes == 3  # a class is a callable too


@pytest.mark.parametrize(
    ("spec", "opts", "pattern"),
    [
        ("no-such-model", {}, r"unknown model spec 'no-such-model'; use efficientnet-lite0"),
        ("nosuchpkg_xyz.mod:make", {}, r"cannot import 'nosuchpkg_xyz.mod'"),
        ("toy_models:nothing_here", {}, r"module 'toy_models' has no attribute 'nothing_here'"),
        ("math:pi", {}, r"'math:pi' returned float, not a torch.nn.Module"),
        ("toy_models:FeatureMap", {"input_size": 8}, r"outputs \(1, 3, 8, 8\), expected \(N, classes\)"),
        ("toy_models:Linear", {"input_size": 16}, r"failed on a \(1, 3, 16, 16\) input"),
        ("toy_models:Linear?colour=red", {"input_size": 32}, r"unknown model option\(s\) colour; valid: weights"),
        ("toy_models:Linear?score=odds", {"input_size": 32}, r"unknown score kind 'odds'"),
        ("toy_models:Linear?input_size=axb", {}, r"input_size must be N or HxW"),
        ("toy_models:Linear?input_size=1x2x3", {}, r"input_size must be N or HxW"),
        ("toy_models:Linear?mean=0,0&std=1,1,1", {"input_size": 32}, r"mean has 2 values but std has 3"),
        ("toy_models:Linear?mean=a,b,c", {"input_size": 32}, r"mean must be comma-separated numbers"),
        ("toy_models:Linear?labels=a,b", {"input_size": 32}, r"2 labels given but the model has 3 outputs"),
    ],
)
def test_bad_specs(spec, opts, pattern):
    with pytest.raises(SalientError, match=pattern):
        load_model(spec, **opts)


def test_feature_map_module_is_refused():
    with pytest.raises(SalientError, match=r"expected \(N, classes\)"):
        load_model(FeatureMap(), input_size=8)


def test_options_parsing():
    assert parse_spec("torchvision:resnet18?weights=/a/b.pth&score=logit") == (
        "torchvision:resnet18", {"weights": "/a/b.pth", "score": "logit"})
    assert parse_spec(" efficientnet-lite0 ") == ("efficientnet-lite0", {})
    m = load_model("toy_models:TinyConv?input_size=24x40&mean=0.1,0.2,0.3&std=2,2,2&labels=a,b,c,d")
    assert m.input_size == (24, 40) and m.mean == (0.1, 0.2, 0.3) and m.std == (2.0, 2.0, 2.0)
    assert m.labels == ["a", "b", "c", "d"]
    assert load_model(Linear(), input_size="32,32").input_size == (32, 32)
    assert load_model(Linear(), input_size=(32, 32), labels=["x", "y", "z"]).labels == ["x", "y", "z"]
    assert load_model(Linear(), input_size=32, score=None).score_kind == "softmax"  # None: the default
    m = load_model(Linear(), input_size=32)
    assert load_model(m) is m


def test_preprocess_and_scores():
    m = load_model(Linear(), input_size=32, mean="0.5,0.5,0.25", std="0.25,0.5,0.25")
    x = m.preprocess(np.full((64, 48, 3), 0.5, np.float32))  # resized to 32 x 32, then normalised
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 32, 32))
    torch.testing.assert_close(m.black().flatten(), torch.tensor([-2.0, -1.0, -1.0]))
    ramp = np.broadcast_to(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], (64, 64, 3))
    small = m.preprocess(ramp)[0] * 0.25 + 0.5  # back to pixel values: the ramp at half resolution
    np.testing.assert_allclose(small[5].numpy(), ramp[0, 1::2, 0], atol=0.02)
    logits = torch.tensor([[1.0, 2.0, -1.0]])
    torch.testing.assert_close(m.score(logits), logits.softmax(-1))
    torch.testing.assert_close(m.score(logits, "sigmoid"), logits.sigmoid())
    torch.testing.assert_close(m.score(logits, "logit"), logits)
    assert m.resolve_target("CLASS_1") == 1 and m.resolve_target(" 2 ") == 2 and m.resolve_target(np.int64(0)) == 0
    with pytest.raises(SalientError, match=r"target class id 3 out of range \[0, 2\]"):
        m.resolve_target(3)
    with pytest.raises(SalientError, match=r"unknown target label 'class'; did you mean 'class_0'"):
        m.resolve_target("class")
    with pytest.raises(SalientError, match="target must be a class id"):
        m.resolve_target(True)


def test_load_model_is_exported():
    assert salient.load_model is load_model
