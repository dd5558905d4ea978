"""An inference-only rewrite of a classifier for the CPU: convolutions fused with what follows them.

``fuse_for_cpu(module, example)`` traces ``module`` with torch.fx and rewrites every chain

    [ZeroPad2d] -> Conv2d -> [BatchNorm2d] -> [activation]

into one oneDNN convolution (``mkldnn::_convolution_pointwise``, the kernel torch's own inductor
emits for CPU), where

- batch norm is folded into the weights: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta;
- a zero pad (l, r, t, b) before the convolution becomes a symmetric pad p = max(l, r) (resp. rows)
  with the kernel extended by p - l zero taps in front and p - r behind: the same windows, and no
  padded copy of the activation;
- the activation (ReLU, ReLU6/Hardtanh, SiLU, Hardswish, Sigmoid, Tanh, LeakyReLU, GELU) runs as the
  convolution's post-op, on data still in cache.

On EfficientNet-Lite0 (batch 4, one thread per core) this is about 1.5-2x faster than the eager module.
The rewrite is checked on ``example`` against the original (the same outputs within float32
rounding, ~1e-6 relative); any failure to trace, or a mismatch, returns None and the caller keeps
the original module. The original is never modified: the rewrite holds new weight tensors and
shares every other submodule. It is for ``torch.inference_mode`` only (no autograd through the
fused kernel); forward hooks on the original module do not fire in the rewrite.

Non-finite inputs: oneDNN runs the clamping post-ops (relu, hardtanh, so ReLU6) with max / min
instructions that return the other operand when one is NaN, so a NaN reaching a fused convolution
leaves it as a number (ReLU6: 0) where the original's ``clamp`` keeps the NaN: the rewrite turns
NaN inputs into finite outputs, and a NaN check on its scores passes (its GELU also turns +inf into
NaN; SiLU, hardswish, sigmoid, tanh and leaky relu agree with torch). ``_convolution_pointwise`` has
no post-op that clamps and keeps NaN, and checking the input of every fused convolution would cost a
pass over every activation; so the input is checked instead, once per batch (0.06 ms for 4 x 3 x
224 x 224 on one core, against tens of ms for the forward):
``with_reference_rows(out, x, module)`` gives the samples of ``x`` that hold NaN or ±inf the
original's outputs (a second forward, of the original, only for such a batch; a finite batch costs a
sum over its input and keeps the rewrite's outputs bit for bit). The worker applies it to every fused
and incremental forward, so both paths agree on non-finite inputs. (A NaN made inside the network
from a finite input, by a float32 overflow, is not covered: folding batch norm moves where a
float32 overflow happens anyway.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# activation module -> (oneDNN post-op name, its scalars, its algorithm)
ACTIVATIONS: dict[type, Callable[[nn.Module], tuple[str, list, str]]] = {
    nn.ReLU: lambda m: ("relu", [], ""),
    nn.ReLU6: lambda m: ("hardtanh", [0.0, 6.0], ""),
    nn.Hardtanh: lambda m: ("hardtanh", [float(m.min_val), float(m.max_val)], ""),
    nn.SiLU: lambda m: ("swish", [], ""),
    nn.Hardswish: lambda m: ("hardswish", [], ""),
    nn.Sigmoid: lambda m: ("sigmoid", [], ""),
    nn.Tanh: lambda m: ("tanh", [], ""),
    nn.LeakyReLU: lambda m: ("leaky_relu", [float(m.negative_slope)], ""),
    nn.GELU: lambda m: ("gelu", [], m.approximate),
}
LEAVES = (nn.Conv2d, nn.BatchNorm2d, *ACTIVATIONS)


def available() -> bool:
    """Whether this torch has the oneDNN fused convolution."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv2d(nn.Module):
    """conv2d(x, weight, bias) followed by an activation, as one oneDNN kernel (CPU, float32)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int], stride: list[int],
                 dilation: list[int], groups: int, post: tuple[str, list, str] = ("none", [], "")):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.padding, self.stride, self.dilation, self.groups = padding, stride, dilation, groups
        self.attr, self.scalars, self.algorithm = post
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}  # input shape -> weight in oneDNN's layout

    def packed_weight(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight reordered once per input shape into the blocked layout oneDNN picks for it
        (otherwise every call reorders it: ~20% of the late, weight-heavy layers at batch 2)."""
        w = self._packed.get(shape)
        if w is None:
            reorder = getattr(torch.ops.mkldnn, "_reorder_convolution_weight", None)
            w = self.weight if reorder is None else reorder(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(shape))
            if len(self._packed) >= 8:  # crops of incremental inference come in many shapes: drop the oldest
                self._packed.pop(next(iter(self._packed)))
            self._packed[shape] = w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed_weight(tuple(x.shape)), self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.attr, self.scalars, self.algorithm)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, post={self.attr}")


class _Tracer(fx.Tracer):
    """Keeps convolutions (including subclasses such as TF-"same" convs), norms and activations whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


def _is_identity(m: nn.Module) -> bool:
    if isinstance(m, nn.Identity):
        return True
    if any(True for _ in m.parameters()):
        return False
    probe = torch.randn(1, 2, 3, 3)
    try:
        out = m(probe)
    except Exception:
        return False
    return isinstance(out, torch.Tensor) and (out is probe or torch.equal(out, probe))


def _conv_geometry(conv: nn.Conv2d) -> tuple[torch.Tensor, list[int]] | None:
    """The weight and symmetric padding of ``conv`` with its own zero pad folded in; None if unsupported.

    A plain Conv2d, or a subclass that applies a ``static_padding`` module (ZeroPad2d or identity)
    before the convolution (the TF-"same" convs of the EfficientNet packages)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.weight.dtype != torch.float32:
        return None
    weight, padding = conv.weight.detach(), list(conv.padding)
    if type(conv).forward is nn.Conv2d.forward:
        return weight, padding
    pad = getattr(conv, "static_padding", None)
    if not isinstance(pad, nn.Module):
        return None
    if _is_identity(pad):
        return weight, padding
    if not isinstance(pad, nn.ZeroPad2d) or tuple(conv.dilation) != (1, 1) or padding != [0, 0]:
        return None
    left, right, top, bottom = pad.padding
    ph, pw = max(top, bottom), max(left, right)
    return F.pad(weight, (pw - left, pw - right, ph - top, ph - bottom)), [ph, pw]


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _rewrite(gm: fx.GraphModule) -> int:
    """Fuse every conv [-> bn] [-> activation] chain of ``gm``'s graph in place; returns how many."""
    mods = dict(gm.named_modules())
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.Conv2d) or len(node.args) != 1 \
                or node.kwargs:
            continue
        conv = mods[node.target]
        geometry = _conv_geometry(conv)
        if geometry is None:
            continue
        weight, padding = geometry
        bias = None if conv.bias is None else conv.bias.detach()
        last = node
        user = _single_user(last)
        if user is not None and user.op == "call_module" and isinstance(mods[user.target], nn.BatchNorm2d):
            bn = mods[user.target]
            if not bn.training and bn.running_mean is not None and len(user.args) == 1:
                weight, bias = (t.detach() for t in fuse_conv_bn_weights(
                    weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias))
                last = user
        post = ("none", [], "")
        user = _single_user(last)
        if user is not None and user.op == "call_module" and type(mods[user.target]) in ACTIVATIONS \
                and len(user.args) == 1:
            post = ACTIVATIONS[type(mods[user.target])](mods[user.target])
            last = user
        name = f"fused_{fused}"
        gm.add_submodule(name, FusedConv2d(weight, bias, padding, list(conv.stride), list(conv.dilation),
                                           conv.groups, post))
        with gm.graph.inserting_after(last):
            new = gm.graph.call_module(name, (node.args[0],))
        last.replace_all_uses_with(new)
        while last is not node:  # erase the chain back to the conv (each had one user)
            prev = last.args[0]
            gm.graph.erase_node(last)
            last = prev
        gm.graph.erase_node(node)
        fused += 1
    return fused


def fuse_for_cpu(module: nn.Module, example: torch.Tensor, rtol: float = 1e-4) -> nn.Module | None:
    """``module`` rewritten with fused convolutions (module docstring), checked on ``example``; None if
    nothing was fused, the module cannot be traced, or the rewrite does not reproduce its outputs."""
    if not available() or isinstance(module, torch.jit.ScriptModule) or example.device.type != "cpu":
        return None
    try:
        graph = _Tracer().trace(module)
        gm = fx.GraphModule(module, graph, class_name=f"Fused{type(module).__name__}")
        if _rewrite(gm) == 0:
            return None
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        gm.eval()
        with torch.inference_mode():
            ref, out = module(example), gm(example)
    except Exception:
        return None
    return gm if reproduces(out, ref, rtol) else None


def reproduces(out: object, ref: object, rtol: float = 1e-4) -> bool:
    """Whether a rewrite's output ``out`` is the original's ``ref``: same shape, finite, and
    max |out - ref| <= rtol · max(1, max |ref|)."""
    if not (isinstance(ref, torch.Tensor) and isinstance(out, torch.Tensor)) or ref.shape != out.shape:
        return False
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return bool(torch.isfinite(out).all()) and float((out - ref).abs().max()) <= rtol * max(1.0, scale)


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor | None:
    """(B,) bool: the samples of batch ``x`` that hold a NaN or an infinity; None if none does. One sum
    per sample: NaN and ±inf survive a sum (a finite sample whose sum overflows is flagged as well,
    which only costs it the reference forward)."""
    if x.ndim < 2 or not x.is_floating_point():
        return None
    bad = ~torch.isfinite(x.sum(dim=tuple(range(1, x.ndim))))
    return bad if bool(bad.any()) else None


def with_reference_rows(out: object, x: torch.Tensor, reference: Callable[[torch.Tensor], object]) -> object:
    """``out``, a rewrite's outputs for batch ``x``, with the rows of the samples holding NaN or ±inf
    taken from ``reference(x)`` (module docstring); ``out`` itself when every sample is finite."""
    bad = nonfinite_rows(x)
    if bad is None:
        return out
    ref = reference(x)
    if not (isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor)) or ref.shape != out.shape \
            or out.ndim == 0 or out.shape[0] != x.shape[0]:
        return ref
    return torch.where(bad.view(-1, *[1] * (out.ndim - 1)), ref, out)


__all__ = ["FusedConv2d", "available", "fuse_for_cpu", "nonfinite_rows", "reproduces", "with_reference_rows"]
