"""The CPU fusion of conv [-> batch norm] [-> activation] chains: same outputs, the original untouched,
every unsupported or wrong rewrite refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import toy

import salient
from salient.engine import fuse
from salient.engine.fuse import ACTIVATIONS, FusedConv2d, fuse_for_cpu
from salient.engine.worker import Worker

pytestmark = pytest.mark.skipif(not fuse.available(), reason="this torch has no oneDNN fused convolution")


def _x(n: int = 2, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last)


def _bn(c: int, seed: int) -> nn.BatchNorm2d:
    """A batch norm with non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    bn.weight.data.copy_(torch.randn(c, generator=g))
    bn.bias.data.copy_(torch.randn(c, generator=g))
    return bn.eval()


class SameConv(nn.Conv2d):
    """A TF-"same" convolution as in the EfficientNet packages: ``static_padding`` then the conv."""

    def __init__(self, cin, cout, k, stride, pad, groups=1):
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)
        self.static_padding = nn.ZeroPad2d(pad) if pad else nn.Identity()

    def forward(self, x):
        return super().forward(self.static_padding(x))


class Net(nn.Module):
    """Stem (asymmetric pad, stride 2) -> BN -> ReLU6; a depthwise 5x5 (pad 1,2) -> BN -> act; a
    residual block whose ReLU module also runs after the add; a head."""

    def __init__(self, act: nn.Module | None = None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = SameConv(3, 8, 3, 2, (0, 1, 0, 1))
        self.bn0 = _bn(8, 1)
        self.act0 = nn.ReLU6()
        self.dw = SameConv(8, 8, 5, 2, (1, 2, 1, 2), groups=8)
        self.bn1 = _bn(8, 2)
        self.act1 = act if act is not None else nn.ReLU()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = _bn(8, 3)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act0(self.bn0(self.stem(x)))
        x = self.act1(self.bn1(self.dw(x)))
        x = self.relu(self.bn2(self.conv(x)) + x)  # conv -> bn -> add: the add and the relu stay
        return self.head(x.mean(dim=(2, 3)))


def _fused(net: nn.Module, x: torch.Tensor) -> nn.Module:
    f = fuse_for_cpu(net, x)
    assert f is not None
    return f


def test_fused_net_reproduces_the_original_and_folds_everything():
    net, x = Net().eval(), _x()
    f = _fused(net, x)
    convs = [m for m in f.modules() if isinstance(m, FusedConv2d)]
    assert len(convs) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in f.modules())  # all three folded
    assert [c.attr for c in convs] == ["hardtanh", "relu", "none"]  # the conv before the add keeps no post-op
    # the asymmetric pads became symmetric ones with zero taps in front of the kernel
    assert convs[0].padding == [1, 1] and tuple(convs[0].weight.shape[-2:]) == (4, 4)
    assert convs[1].padding == [2, 2] and tuple(convs[1].weight.shape[-2:]) == (6, 6)
    assert float(convs[0].weight[..., 0, :].abs().max()) == 0 and float(convs[0].weight[..., :, 0].abs().max()) == 0
    with torch.inference_mode():
        for n in (1, 2, 5):  # any batch size, not only the example's
            xb = _x(n, seed=n)
            torch.testing.assert_close(f(xb), net(xb), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [a() for a in ACTIVATIONS if a not in (nn.Hardtanh, nn.LeakyReLU, nn.GELU)]
                         + [nn.Hardtanh(-0.5, 1.5), nn.LeakyReLU(0.2), nn.GELU(), nn.GELU(approximate="tanh")],
                         ids=lambda a: repr(a))
def test_every_activation_runs_as_the_conv_post_op(act):
    net, x = Net(act).eval(), _x()
    f = _fused(net, x)
    assert [c for c in f.modules() if isinstance(c, FusedConv2d)][1].attr != "none"
    with torch.inference_mode():
        torch.testing.assert_close(f(x), net(x), rtol=1e-5, atol=1e-5)


def test_the_original_module_is_untouched():
    net, x = Net().eval(), _x()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    names = [n for n, _ in net.named_modules()]
    with torch.inference_mode():
        ref = net(x)
    _fused(net, x)
    assert [n for n, _ in net.named_modules()] == names
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(net.bn0, nn.BatchNorm2d) and not net.bn0.training
    with torch.inference_mode():
        assert torch.equal(net(x), ref)


class Branch(nn.Module):
    """A conv whose output feeds two consumers: batch norm must not be folded into it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = _bn(4, 5)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.head((self.bn(y) + y).mean(dim=(2, 3)))


def test_a_conv_output_used_twice_keeps_its_batch_norm():
    net, x = Branch().eval(), _x()
    f = _fused(net, x)
    assert any(isinstance(m, nn.BatchNorm2d) for m in f.modules())
    with torch.inference_mode():
        torch.testing.assert_close(f(x), net(x), rtol=1e-5, atol=1e-5)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.mean(dim=(2, 3)) if y.sum() > 0 else -y.mean(dim=(2, 3))  # cannot be traced


class Doubling(nn.Conv2d):
    """A conv subclass that looks like a TF-"same" conv but doubles its output: a rewrite that
    assumed the usual semantics would be wrong, and the output check must refuse it."""

    def __init__(self):
        super().__init__(3, 4, 3, bias=False)
        self.static_padding = nn.Identity()

    def forward(self, x):
        return 2 * super().forward(self.static_padding(x))


class Wrap(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).mean(dim=(2, 3))


def test_unsupported_or_wrong_rewrites_are_refused():
    x = _x()
    assert fuse_for_cpu(DataDependent().eval(), x) is None
    assert fuse_for_cpu(Wrap(Doubling()).eval(), x) is None
    assert fuse_for_cpu(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)).eval(), x) is None  # no conv
    assert fuse_for_cpu(torch.jit.trace(Net().eval(), x), x) is None
    assert fuse_for_cpu(Net().eval(), x.to(torch.float64)) is None  # float32 on CPU only


def test_worker_runs_masked_forwards_through_the_fused_module_and_cams_through_the_original():
    model = toy(Net(), size=16)
    w, plain = Worker(model, "cpu", 2), Worker(model, "cpu", 2, fuse=False)
    assert isinstance(w.fused, torch.fx.GraphModule) and plain.fused is None
    calls = []
    handle = model.module.bn0.register_forward_hook(lambda *_: calls.append(1))
    try:
        x = _x(2, seed=7)
        torch.testing.assert_close(w.forward_logits(x), plain.forward_logits(x), rtol=1e-5, atol=1e-5)
        assert len(calls) == 1  # only the unfused worker ran the original module
    finally:
        handle.remove()


def test_maps_with_and_without_fusion_agree():
    model = toy(Net(), size=16)
    img = np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)
    out = {}
    for f in (True, False):
        with salient.Engine(model, workers=1, fuse=f) as eng:
            out[f] = [eng.explain(img, m, seed=1, **p).map for m, p in
                      (("occlusion", {"window": 4, "stride": 2}), ("rise", {"n_masks": 64, "cells": 4}))]
    for a, b in zip(out[True], out[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
