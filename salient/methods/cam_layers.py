"""Target layers of the CAM family: resolve a dotted module path, pick the default, hook one call.

A layer spec is a dotted module path (``layer4``, ``_blocks.15``), optionally ``@k`` for the k-th
call (0-based, negative from the end) of a module that runs more than once per forward pass
(EfficientNet-Lite's ``_swish`` runs after the stem and after the head: ``_swish@-1`` is the head).
A bare path means the first call, as in pytorch-grad-cam. The empty spec picks the last module
output, in execution order, that has spatial dimensions: a tensor (N, C, H, W) or (N, C, T, H, W)
with H·W > 1. Resolution runs one hooked forward pass per (module, input shape), cached.
Errors are :class:`~salient.errors.ItemError` (raised on the worker, reported per item); a spec that
cannot resolve on the model at all is refused before any work by :func:`check_layer`.
A wrapper module may name its layers by another module's paths and reshape their outputs: an attribute
``layers_module`` (the module whose submodules are the layers; default the module itself) and a method
``fold_activation(a)`` (a layer's output as the activations the CAM rule sees; default unchanged). The
``frames:`` models (:mod:`salient.models.frames`) use both: the image net's layer names, outputs over the
N·T frames folded to clips (N, C, T, h, w). See :func:`layers_of` and :func:`folded`.
"""

from __future__ import annotations

import difflib
import itertools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ItemError, SalientError

_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Firing:
    """One call of a module in the forward pass: its output shape (None if not a tensor)."""

    name: str
    call: int
    shape: tuple[int, ...] | None

    @property
    def spatial(self) -> bool:
        return is_spatial(self.shape)


@dataclass(frozen=True)
class Layer:
    """A resolved target: the module, which call, and the label recorded in the result."""

    name: str
    call: int
    calls: int
    module: nn.Module

    @property
    def label(self) -> str:
        return self.name if self.calls == 1 else f"{self.name}@{self.call}"


def is_spatial(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) in (4, 5) and shape[-1] * shape[-2] > 1


def model_input(x: torch.Tensor) -> torch.Tensor:
    """An item (C, H, W) or clip (C, T, H, W) as a batch of one, channels_last for 2-D inputs."""
    x = x[None]
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x.contiguous()


def layers_of(module: nn.Module) -> nn.Module:
    """The module whose named submodules are ``module``'s target layers (``layers_module``, else itself)."""
    return getattr(module, "layers_module", module)


def folded(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """A hooked layer output (or its gradient) as the CAM rule's activations (``fold_activation``, else ``a``)."""
    fold = getattr(module, "fold_activation", None)
    return fold(a) if fold is not None else a


def trace(module: nn.Module, x: torch.Tensor) -> list[Firing]:
    """Every module call of one forward pass on ``x`` (a batch), in execution order; cached."""
    if isinstance(module, torch.jit.ScriptModule):
        raise ItemError("CAM methods need a Python nn.Module: TorchScript models do not run layer hooks")
    key = (tuple(x.shape), x.dtype, str(x.device))
    per_module = _TRACES.setdefault(module, {})
    if key in per_module:
        return per_module[key]
    firings: list[Firing] = []
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(_mod, _inp, out):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            firings.append(Firing(name, counts.get(name, 0), shape))
            counts[name] = counts.get(name, 0) + 1

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers_of(module).named_modules() if n]
    try:
        with torch.inference_mode():
            module(x)
    except Exception as e:  # noqa: BLE001 - the model's own failure, one line
        raise ItemError(f"model failed on an input of shape {tuple(x.shape)}: {str(e).splitlines()[0]}") from None
    finally:
        for h in handles:
            h.remove()
    per_module[key] = firings
    return firings


def _label(f: Firing, firings: list[Firing]) -> str:
    many = sum(g.name == f.name for g in firings) > 1
    return f"{f.name}@{f.call}" if many else f.name


def candidates(firings: list[Firing], n: int = 4) -> str:
    """The last ``n`` layers with spatial output, deepest first, as a comma-separated string."""
    out: list[str] = []
    for f in reversed(firings):
        label = _label(f, firings)
        if f.spatial and label not in out:
            out.append(label)
        if len(out) == n:
            break
    return ", ".join(out) if out else "none"


def resolve_layer(module: nn.Module, spec: str, x: torch.Tensor) -> Layer:
    """The target layer for ``spec`` (see the module docstring) on input batch ``x``."""
    firings = trace(module, x)
    spec = str(spec).strip()
    if not spec:
        spatial = [f for f in firings if f.spatial]
        if not spatial:
            raise ItemError(
                "no layer of this model outputs a spatial feature map (N, C, H, W) or (N, C, T, H, W); "
                "CAM methods need a convolutional layer"
            )
        f = spatial[-1]
        return _layer(module, f.name, f.call, firings)
    name, _, call_s = spec.partition("@")
    modules = dict(layers_of(module).named_modules())
    if name not in modules or not name:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ItemError(f"unknown layer {name!r}; {hint}layers with spatial output: {candidates(firings)}")
    calls = [f for f in firings if f.name == name]
    if not calls:
        raise ItemError(
            f"layer {name!r} does not run in the forward pass; layers with spatial output: {candidates(firings)}"
        )
    try:
        call = int(call_s) if call_s else 0
    except ValueError:
        raise ItemError(f"layer {spec!r}: the call after '@' must be an integer") from None
    if not -len(calls) <= call < len(calls):
        raise ItemError(f"layer {name!r} runs {len(calls)} time(s) per forward pass; use @0 .. @{len(calls) - 1}")
    f = calls[call]
    if not f.spatial:
        what = f"outputs shape {f.shape}" if f.shape is not None else "does not output a tensor"
        raise ItemError(
            f"layer {_label(f, firings)!r} {what}, not a feature map (N, C, H, W) or (N, C, T, H, W) with H·W > 1; "
            f"layers with spatial output: {candidates(firings)}"
        )
    return _layer(module, name, f.call, firings)


def check_layer(params: dict, model) -> None:
    """A method's model check (``register(check=...)``): ``params["layer"]`` resolves on ``model`` (a
    salient Model) for an input of its size, else a SalientError, before any item. Costs one forward
    pass (of zeros), traced once per module and input shape. A model that fails on that input is left to
    report it per item."""
    module = model.module
    if isinstance(module, torch.jit.ScriptModule):
        raise SalientError("CAM methods need a Python nn.Module: TorchScript models do not run layer hooks")
    anchor = next(itertools.chain(module.parameters(), module.buffers()), None)
    x = model_input(torch.zeros(model.input_shape, device=anchor.device if anchor is not None else "cpu"))
    try:
        trace(module, x)
    except ItemError:
        return
    try:
        resolve_layer(module, str(params.get("layer", "")), x)
    except ItemError as e:
        raise SalientError(str(e)) from None


def _layer(module: nn.Module, name: str, call: int, firings: list[Firing]) -> Layer:
    calls = sum(f.name == name for f in firings)
    return Layer(name, call, calls, layers_of(module).get_submodule(name))


@contextmanager
def capture(layer: Layer, grad: bool) -> Iterator[dict]:
    """Hook call ``layer.call`` of the layer; the yielded dict receives ``"act"``, its output.

    With ``grad``, the rest of the network gets a clone of the output, so that in-place operations
    downstream (``out += identity``) leave ``act`` intact and ∂y/∂act well defined.
    """
    box: dict = {}
    count = [0]

    def hook(_mod, _inp, out):
        k = count[0]
        count[0] += 1
        if k != layer.call or not isinstance(out, torch.Tensor):
            return None
        box["act"] = out
        return out.clone() if grad and out.requires_grad else None

    handle = layer.module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
