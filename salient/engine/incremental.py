"""Incremental inference for inputs that differ from a base image only inside a box (occlusion).

A convolutional network's early layers are local: output position i of a chain of convolutions
depends only on input pixels [lo + i·j, hi + i·j] (j: the cumulative stride; lo, hi: the receptive
field's ends, padding included). ``plan_incremental(module, example)`` splits a traced network at a
*cut*, a node after which nothing but the cut's own output is needed and before which every node is
local (convolutions, the fused convolutions of ``salient.engine.fuse``, batch norm, activations,
residual sums), into ``prefix`` (input -> cut activation) and ``suffix`` (cut activation -> output).

For an input equal to the base image x outside a box, the cut activation equals prefix(x) except at
the positions whose receptive field meets the box. Those are recomputed by the prefix on a crop of
the input: the crop starts at a multiple of j (so every layer's sampling grid lines up) and holds
the whole receptive field of the changed positions, or meets the image border, where the crop's own
zero padding is the network's. ``IncrementalPlan.forward(batch, bases, boxes)`` pastes these
patches into copies of the base activations and runs the suffix on the whole batch: the same
outputs as ``module(batch)`` (float32 rounding aside) for a fraction of the early layers' cost.

The cut is chosen by a cost model (activation sizes from one pass over ``example``): the node
that saves the most for a box of a seventh of the input side (occlusion windows, DiDA cells).

Non-finite inputs: the prefix and suffix are pieces of a fused module, whose activations turn NaN
into numbers (``salient.engine.fuse``); the caller gives samples that hold NaN or ±inf the original
module's outputs (``fuse.with_reference_rows``), as the worker does.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .fuse import ACTIVATIONS, FusedConv2d, reproduces

POINTWISE_MODULES = (nn.BatchNorm2d, nn.Identity, nn.Dropout, *ACTIVATIONS)
POINTWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.hardtanh, torch.sigmoid, F.silu, torch.tanh, F.hardswish}
SUMS = {operator.add, torch.add, operator.mul, torch.mul}
MAX_CROP = 0.5  # a query whose crops average more of the input than this runs whole forwards
CALL_OVERHEAD = 50_000  # the cost of one module call, in activation elements (a few tens of µs on a CPU)
TYPICAL_BOX = 1 / 7  # of the input side: the box size the cut is chosen for


@dataclass(frozen=True)
class Field:
    """Per axis (rows, cols): output i depends on input pixels [lo + i·j, hi + i·j]."""

    j: tuple[int, int] = (1, 1)
    lo: tuple[int, int] = (0, 0)
    hi: tuple[int, int] = (0, 0)

    def conv(self, taps: tuple[tuple[int, int], tuple[int, int]], s: tuple[int, int], p: tuple[int, int]) -> Field:
        """Through a convolution of stride s, padding p whose kernel's non-zero taps span [t0, t1] per axis."""
        return Field(tuple(a * b for a, b in zip(self.j, s, strict=True)),
                     tuple(lo + (t[0] - pp) * j for lo, t, pp, j in zip(self.lo, taps, p, self.j, strict=True)),
                     tuple(hi + (t[1] - pp) * j for hi, t, pp, j in zip(self.hi, taps, p, self.j, strict=True)))

    def union(self, other: Field) -> Field | None:
        if self.j != other.j:
            return None
        return Field(self.j, tuple(map(min, self.lo, other.lo)), tuple(map(max, self.hi, other.hi)))


def _taps(weight: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per axis, the first and last kernel tap that is not zero for every channel (the zero taps that
    ``fuse`` adds in place of an asymmetric pad see nothing)."""
    nz = weight.detach().ne(0)
    out = []
    for axis in (-2, -1):
        used = nz.any(dim=tuple(d for d in range(weight.ndim) if d != weight.ndim + axis)).nonzero()
        out.append((int(used.min()), int(used.max())) if len(used) else (0, weight.shape[axis] - 1))
    return out[0], out[1]


def _conv_params(mod: nn.Module) -> tuple[tuple[tuple[int, int], tuple[int, int]], tuple[int, int],
                                          tuple[int, int]] | None:
    """(taps, stride, padding) of a convolution whose receptive field is known; None otherwise."""
    if isinstance(mod, FusedConv2d):
        if list(mod.dilation) != [1, 1]:
            return None
        return _taps(mod.weight), tuple(mod.stride), tuple(mod.padding)
    if type(mod) is nn.Conv2d and mod.padding_mode == "zeros" and not isinstance(mod.padding, str) \
            and tuple(mod.dilation) == (1, 1):
        return _taps(mod.weight), tuple(mod.stride), tuple(mod.padding)
    return None


def _is_batch_size(node: fx.Node, x: fx.Node) -> bool:
    """``x.size(0)`` / ``x.shape[0]``: re-derived from the cut activation in the suffix."""
    if node.op == "call_method" and node.target == "size" and node.args[:1] == (x,):
        return tuple(node.args[1:]) == (0,) or node.kwargs.get("dim") == 0
    return False


def _fields(gm: fx.GraphModule, x: fx.Node) -> dict[fx.Node, Field]:
    """The receptive fields of the local nodes from the input on (stops at the first non-local one)."""
    mods = dict(gm.named_modules())
    fields = {x: Field()}
    for node in gm.graph.nodes:
        if node is x or node.op == "placeholder" or _is_batch_size(node, x):
            continue
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if not tensors or any(a not in fields for a in tensors) or node.kwargs:
            break
        f = None
        if node.op == "call_module":
            mod = mods[node.target]
            params = _conv_params(mod)
            if params is not None and len(node.args) == 1:
                f = fields[tensors[0]].conv(*params)
            elif isinstance(mod, POINTWISE_MODULES) and len(node.args) == 1:
                f = fields[tensors[0]]
        elif node.op == "call_function":
            if node.target in POINTWISE_FUNCTIONS and len(node.args) == 1:
                f = fields[tensors[0]]
            elif node.target in SUMS and len(node.args) == 2:
                f = fields[tensors[0]]
                for a in tensors[1:]:
                    f = f.union(fields[a]) if f is not None else None
        if f is None:
            break
        fields[node] = f
    return fields


def _cuts(gm: fx.GraphModule, x: fx.Node, local: dict[fx.Node, Field]) -> list[fx.Node]:
    """Local nodes after which only their own output (and the batch size) is needed."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in gm.graph.nodes}
    cuts = []
    for node in local:
        if node is x:
            continue
        i = order[node]
        live = [n for n in gm.graph.nodes if order[n] <= i and last_use[n] > i and not _is_batch_size(n, x)]
        if live == [node]:
            cuts.append(node)
    return cuts


class IncrementalPlan:
    """A network split at ``cut`` into ``prefix`` and ``suffix`` (module docstring)."""

    def __init__(self, prefix: fx.GraphModule, suffix: fx.GraphModule, field: Field,
                 input_hw: tuple[int, int], cut_hw: tuple[int, int], name: str):
        self.prefix, self.suffix, self.field = prefix, suffix, field
        self.input_hw, self.cut_hw, self.name = input_hw, cut_hw, name
        self._buffers: dict[tuple[int, ...], torch.Tensor] = {}

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """The cut activation of one input (C, H, W) -> (C', h, w)."""
        return self.prefix(x[None].contiguous(memory_format=torch.channels_last))[0]

    def span(self, box: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Per axis, the cut positions [a, b) whose receptive field meets the box; None if empty."""
        out = []
        for axis, (y0, y1) in enumerate(((box[0], box[1]), (box[2], box[3]))):
            j, lo, hi, n = self.field.j[axis], self.field.lo[axis], self.field.hi[axis], self.cut_hw[axis]
            a = max(0, -((hi - y0) // j))  # ceil((y0 - hi) / j)
            b = min(n, (y1 - 1 - lo) // j + 1)
            if y1 <= y0 or a >= b:
                return None
            out.append((a, b))
        return out[0], out[1]

    def crop(self, span: tuple[int, int], axis: int) -> tuple[int, int]:
        """Input pixels [c, e) holding the receptive field of cut positions [a, b), c a multiple of j."""
        j, lo, hi, size = self.field.j[axis], self.field.lo[axis], self.field.hi[axis], self.input_hw[axis]
        a, b = span
        c = max(0, lo + a * j) // j * j
        return c, min(size, hi + (b - 1) * j + 1)

    def crop_fraction(self, box: tuple[int, int, int, int]) -> float:
        s = self.span(box)
        if s is None:
            return 0.0
        (c0, e0), (c1, e1) = self.crop(s[0], 0), self.crop(s[1], 1)
        return (e0 - c0) * (e1 - c1) / (self.input_hw[0] * self.input_hw[1])

    def pays(self, boxes: tuple[tuple[int, int, int, int], ...]) -> bool:
        """Whether recomputing crops beats whole forwards for these boxes (mean crop <= MAX_CROP)."""
        return bool(boxes) and sum(map(self.crop_fraction, boxes)) <= MAX_CROP * len(boxes)

    def forward(self, batch: torch.Tensor, bases: list[torch.Tensor],
                boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """Outputs for ``batch`` (B, C, H, W), whose rows r < len(boxes) equal the inputs of
        ``bases[r]`` (their cut activations) outside ``boxes[r]``; later rows are padding."""
        shape = (batch.shape[0], *bases[0].shape)
        act = self._buffers.get(shape)
        if act is None:
            act = torch.zeros(shape, dtype=bases[0].dtype, device=batch.device).contiguous(
                memory_format=torch.channels_last)
            self._buffers = {shape: act}
        for r, (base, box) in enumerate(zip(bases, boxes, strict=True)):
            act[r].copy_(base)
            s = self.span(box)
            if s is None:
                continue
            (a0, b0), (a1, b1) = s
            (c0, e0), (c1, e1) = self.crop(s[0], 0), self.crop(s[1], 1)
            patch = self.prefix(batch[r : r + 1, :, c0:e0, c1:e1])
            o0, o1 = c0 // self.field.j[0], c1 // self.field.j[1]
            act[r, :, a0:b0, a1:b1].copy_(patch[0, :, a0 - o0 : b0 - o0, a1 - o1 : b1 - o1])
        return self.suffix(act)


def _split(gm: fx.GraphModule, x: fx.Node, cut: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
    """``gm`` as prefix (input -> cut) and suffix (cut -> output); ``x.size(0)`` after the cut becomes
    ``activation.size(0)``."""
    pre, post = fx.Graph(), fx.Graph()
    nodes = list(gm.graph.nodes)
    i = nodes.index(cut)
    env_pre: dict[fx.Node, fx.Node] = {}
    for node in nodes[: i + 1]:
        if not _is_batch_size(node, x):
            env_pre[node] = pre.node_copy(node, env_pre.__getitem__)
    pre.output(env_pre[cut])
    env_post = {cut: post.placeholder("activation")}
    batch_size: list[fx.Node] = []

    def arg(n: fx.Node) -> fx.Node:
        if n in env_post:
            return env_post[n]
        if not _is_batch_size(n, x):
            raise KeyError(n.name)
        if not batch_size:
            batch_size.append(post.call_method("size", (env_post[cut], 0)))
        return batch_size[0]

    for node in nodes[i + 1 :]:
        if not _is_batch_size(node, x):
            env_post[node] = post.node_copy(node, arg)
    return fx.GraphModule(gm, pre, "IncrementalPrefix"), fx.GraphModule(gm, post, "IncrementalSuffix")


def plan_incremental(module: nn.Module, example: torch.Tensor, box: float = TYPICAL_BOX,
                     min_saving: float = 0.1) -> IncrementalPlan | None:
    """Split ``module`` (an fx GraphModule, e.g. from ``fuse_for_cpu``) at the cut that saves the most
    (module docstring) and check the split on ``example`` (one input, batch 1, plus a box); None if
    the module is not a GraphModule, has no cut, or would save under ``min_saving`` of its cost."""
    if not isinstance(module, fx.GraphModule) or example.ndim != 4:
        return None
    try:
        xs = [n for n in module.graph.nodes if n.op == "placeholder"]
        if len(xs) != 1:
            return None
        x = xs[0]
        fields = _fields(module, x)
        cuts = _cuts(module, x, fields)
        if not cuts:
            return None
        ShapeProp(module).propagate(example[:1])
    except Exception:
        return None
    hw = tuple(example.shape[-2:])
    cost: dict[fx.Node, float] = {}
    total = 0.0
    for node in module.graph.nodes:
        meta = node.meta.get("tensor_meta")
        numel = math.prod(meta.shape) if meta is not None and hasattr(meta, "shape") else 0
        total += numel + (CALL_OVERHEAD if node.op == "call_module" else 0)
        cost[node] = total
    best, best_saving = None, min_saving * total
    side = [max(1, round(box * s)) for s in hw]
    for cut in cuts:
        shape = cut.meta["tensor_meta"].shape
        if len(shape) != 4:
            continue
        f = fields[cut]
        crop = 1.0
        for axis in range(2):
            width = min(hw[axis], side[axis] + 2 * (f.hi[axis] - f.lo[axis]) + 2 * f.j[axis])
            crop *= width / hw[axis]
        before = cost[cut]
        saving = before - (before * crop + 2 * math.prod(shape))  # the patch's prefix run and the paste
        if saving > best_saving:
            best, best_saving = cut, saving
    if best is None:
        return None
    prefix, suffix = _split(module, x, best)
    shape = best.meta["tensor_meta"].shape
    plan = IncrementalPlan(prefix, suffix, fields[best], hw, tuple(shape[-2:]), best.name)
    return plan if _check(plan, module, example) else None


def _check(plan: IncrementalPlan, module: nn.Module, example: torch.Tensor, rtol: float = 1e-4) -> bool:
    """The plan reproduces ``module`` on ``example`` occluded by boxes at a corner, an edge and inside."""
    h, w = plan.input_hw
    bh, bw = max(1, h // 7), max(1, w // 7)
    boxes = [(0, bh, 0, bw), (h // 2, h // 2 + bh, w - bw, w), (h // 3, h // 3 + bh, w // 3, w // 3 + bw)]
    x = example[:1].contiguous(memory_format=torch.channels_last)
    batch = x.repeat(len(boxes), 1, 1, 1).contiguous(memory_format=torch.channels_last)
    for r, (y0, y1, x0, x1) in enumerate(boxes):
        batch[r, :, y0:y1, x0:x1] = 0.0
    try:
        with torch.inference_mode():
            ref = module(batch)
            base = plan.base(x[0])
            out = plan.forward(batch, [base] * len(boxes), boxes)
    except Exception:
        return False
    return reproduces(out, ref, rtol)


__all__ = ["Field", "IncrementalPlan", "plan_incremental"]
