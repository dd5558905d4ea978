"""Incremental inference: the receptive fields are sound, the split network reproduces the whole one
for boxes anywhere (borders included), and the engine's maps do not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fuse import SameConv, _bn
from torch import nn
from toy_models import toy

import salient
from salient.engine import fuse
from salient.engine.fuse import fuse_for_cpu
from salient.engine.incremental import plan_incremental
from salient.engine.worker import Worker
from salient.kernels import sliding_windows
from salient.queries import BoxQuery

pytestmark = pytest.mark.skipif(not fuse.available(), reason="this torch has no oneDNN fused convolution")
SIZE = 48


class Deep(nn.Module):
    """A small MobileNet-like net: stride-2 stem with an asymmetric pad, depthwise/pointwise blocks
    with residual sums, then non-local layers (pooling, linear); batch size read from the input."""

    def __init__(self, act: nn.Module | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn0 = SameConv(3, 8, 3, 2, (0, 1, 0, 1)), _bn(8, 1)
        self.blocks = nn.ModuleList()
        for i, (k, stride, pad) in enumerate([(3, 1, (1, 1, 1, 1)), (5, 2, (1, 2, 1, 2)), (3, 1, (1, 1, 1, 1))]):
            self.blocks.append(nn.ModuleDict({
                "dw": SameConv(8, 8, k, stride, pad, groups=8), "bn1": _bn(8, 10 + i),
                "pw": nn.Conv2d(8, 8, 1, bias=False), "bn2": _bn(8, 20 + i)}))
        self.act = act if act is not None else nn.ReLU6()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        n = x.size(0)
        x = self.act(self.bn0(self.stem(x)))
        for b in self.blocks:
            y = b["bn2"](b["pw"](self.act(b["bn1"](b["dw"](x)))))
            x = x + y if b["dw"].stride == (1, 1) else y
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).view(n, -1))


def _x(n: int = 1, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def deep():
    net = Deep().eval()
    fused = fuse_for_cpu(net, _x(2))
    plan = plan_incremental(fused, _x(), box=0.25, min_saving=0.0)
    assert plan is not None
    return net, fused, plan


def test_receptive_fields_cover_every_change(deep):
    """Perturb one input pixel at a time: every cut position that changes lies in the predicted span."""
    _, _, plan = deep
    x = _x()
    with torch.inference_mode():
        base = plan.base(x[0])
        for y, xx in [(0, 0), (0, SIZE - 1), (SIZE - 1, 7), (13, 29), (SIZE // 2, SIZE // 2), (31, 46)]:
            z = x.clone()
            z[0, :, y, xx] += 5.0
            changed = (plan.base(z[0]) - base).abs().amax(dim=0) > 0
            span = plan.span((y, y + 1, xx, xx + 1))
            (a0, b0), (a1, b1) = span
            inside = torch.zeros_like(changed)
            inside[a0:b0, a1:b1] = True
            assert changed.any() and not (changed & ~inside).any(), (y, xx)


def test_receptive_fields_are_tight():
    """A linear version of the net (no activation): a pixel changes every cut position of its span,
    so a field that is too wide (crops larger than needed) or too narrow fails."""
    net = Deep(nn.Identity()).eval()
    plan = plan_incremental(fuse_for_cpu(net, _x(2)), _x(), box=0.25, min_saving=0.0)
    x = _x()
    with torch.inference_mode():
        base = plan.base(x[0])
        for y, xx in [(0, 0), (SIZE - 1, SIZE - 1), (13, 29), (SIZE // 2, 7), (30, 45)]:
            z = x.clone()
            z[0, :, y, xx] += 5.0
            changed = ((plan.base(z[0]) - base).abs().amax(dim=0) > 0).nonzero()
            span = ((int(changed[:, 0].min()), int(changed[:, 0].max()) + 1),
                    (int(changed[:, 1].min()), int(changed[:, 1].max()) + 1))
            assert plan.span((y, y + 1, xx, xx + 1)) == span, (y, xx)


@pytest.mark.parametrize("window, stride", [(1, 5), (8, 4), (12, 12), (17, 9), (48, 48)])
def test_split_network_reproduces_the_whole_for_boxes_anywhere(deep, window, stride):
    net, fused, plan = deep
    x = _x(seed=3)
    boxes = [tuple(b) for b in sliding_windows((SIZE, SIZE), (window, window), (stride, stride)).tolist()]
    with torch.inference_mode():
        base = plan.base(x[0])
        for i in range(0, len(boxes), 3):
            chunk = boxes[i : i + 3]
            batch = x.repeat(3, 1, 1, 1).contiguous(memory_format=torch.channels_last)
            for r, (y0, y1, x0, x1) in enumerate(chunk):
                batch[r, :, y0:y1, x0:x1] = -1.0
            out = plan.forward(batch, [base] * len(chunk), chunk)[: len(chunk)]
            torch.testing.assert_close(out, net(batch)[: len(chunk)], rtol=1e-5, atol=1e-5)


def test_the_cut_is_local_and_the_suffix_takes_the_batch_size_from_it(deep):
    _, fused, plan = deep
    assert plan.field.j in ((2, 2), (4, 4))  # after the stem or the stride-2 block, before the pooling
    names = {n.target for n in plan.prefix.graph.nodes if n.op == "call_module"}
    assert "head" not in names and all(n.op != "call_method" for n in plan.prefix.graph.nodes)
    sizes = [n for n in plan.suffix.graph.nodes if n.op == "call_method" and n.target == "size"]
    assert sizes and sizes[0].args[0].op == "placeholder"


class InputToTheEnd(nn.Module):
    """The input itself is needed after the convolutions: no cut exists."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3)) + x.mean(dim=(1, 2, 3))[:, None]


def test_no_plan_without_a_cut_a_graph_or_a_saving():
    assert plan_incremental(fuse_for_cpu(InputToTheEnd().eval(), _x()), _x()) is None
    assert plan_incremental(Deep().eval(), _x()) is None  # not an fx GraphModule
    fused = fuse_for_cpu(Deep().eval(), _x())
    assert plan_incremental(fused, _x(), min_saving=0.99) is None


def test_worker_uses_the_plan_for_deleted_boxes_only():
    model = toy(Deep(), size=SIZE)
    w = Worker(model, "cpu", 2)
    plain = Worker(model, "cpu", 2, incremental=False)
    assert w.plan is not None and plain.plan is None and plain.fused is not None
    x = np.random.default_rng(0).random((SIZE, SIZE, 3), dtype=np.float32)
    calls = []
    inner = w.plan.forward
    w.plan.forward = lambda *a: calls.append(len(a[2])) or inner(*a)
    boxes = tuple(tuple(b) for b in sliding_windows((SIZE, SIZE), (12, 12), (9, 9)).tolist())
    for worker in (w, plain):
        worker.put("a", model.preprocess(x))
    out = {}
    for mode in ("delete", "keep"):
        q = BoxQuery("a", (0, 1), boxes=boxes, mode=mode, fill="zero")
        out[mode] = (w.run([q])[0], plain.run([q])[0])
        np.testing.assert_allclose(out[mode][0], out[mode][1], rtol=1e-5, atol=1e-5)
        if mode == "delete":
            assert sum(calls) == len(boxes)
    assert sum(calls) == len(boxes)  # keep boxes change the input everywhere: full forwards


def test_maps_with_and_without_incremental_agree():
    model = toy(Deep(), size=SIZE)
    img = np.random.default_rng(1).random((SIZE, SIZE, 3), dtype=np.float32)
    out = {}
    for inc in (True, False):
        with salient.Engine(model, workers=1, incremental=inc) as eng:
            out[inc] = [eng.explain(img, m, seed=1, **p).map for m, p in
                        (("occlusion", {"window": 8, "stride": 4}), ("dida", {"grids": (3, 5), "weights": (0.5, 0.5)}))]
    for a, b in zip(out[True], out[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_large_boxes_run_whole_forwards(deep):
    """A query whose boxes need crops of most of the input gains nothing: the worker sends it through
    whole forwards (a per-query choice, so a row's path never depends on its batch neighbours)."""
    _, _, plan = deep
    assert plan.pays(((20, 28, 20, 28),) * 3)
    assert not plan.pays(((0, SIZE, 0, SIZE),)) and not plan.pays(((4, 44, 4, 44), (20, 28, 20, 28)))
    assert not plan.pays(())
    model = toy(Deep(), size=SIZE)
    w = Worker(model, "cpu", 2)
    calls = []
    inner = w.plan.forward
    w.plan.forward = lambda *a: calls.append(len(a[2])) or inner(*a)
    w.put("a", model.preprocess(np.random.default_rng(2).random((SIZE, SIZE, 3), dtype=np.float32)))
    w.run([BoxQuery("a", (0,), boxes=((2, 46, 2, 46),) * 3), BoxQuery("a", (0,), boxes=((20, 28, 20, 28),) * 3)])
    assert sum(calls) == 3
