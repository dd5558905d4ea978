"""``load_model(spec)``: the one way to get a :class:`Model` from a string or a module.

Spec forms (options may follow a ``?`` as ``key=value`` pairs joined by ``&``, or be passed as
keyword arguments):
- ``efficientnet-lite0``: the embedded default (real ImageNet weights, no download);
- ``torchvision:<arch>`` with ``weights=<local file>`` (loaded with ``weights_only=True``); without
  weights the network keeps its (seeded, ``seed=``) random initialisation;
- a TorchScript file (``*.pt``, ``*.pth``, ``*.ts``, ``*.torchscript``);
- ``package.module:callable`` returning an ``nn.Module``.
Options: ``weights``, ``score`` (softmax | logit | sigmoid), ``input_size`` (e.g. 224 or 224x320),
``mean`` and ``std`` (comma-separated), ``seed``, ``frames`` (> 0: a video net taking clips
(C, frames, H, W); torchvision's video architectures default to 16 frames of 112 x 112, Kinetics
mean/std).
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from ..errors import SalientError
from .efficientnet import efficientnet_lite0
from .labels import default_labels
from .model import Model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
OPTION_KEYS = ("weights", "score", "input_size", "mean", "std", "seed", "labels", "frames")
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision's video nets (r3d_18, mc3_18, r2plus1d_18)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
SCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``name?key=value&key=value`` into the name and its options."""
    name, _, query = spec.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    return name.strip(), opts


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    s = str(value).lower().replace(",", "x")
    parts = [p for p in s.split("x") if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise SalientError(f"input_size must be N or HxW, got {value!r}") from None
    if len(nums) == 1:
        return (nums[0], nums[0])
    if len(nums) == 2:
        return (nums[0], nums[1])
    raise SalientError(f"input_size must be N or HxW, got {value!r}")


def _floats(value: Any, key: str) -> tuple[float, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(float(v) for v in value)
    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        raise SalientError(f"{key} must be comma-separated numbers, got {value!r}") from None


def _torchvision(arch: str, weights: str | None, seed: int) -> nn.Module:
    import torchvision.models as tvm

    available = tvm.list_models()
    if arch not in available:
        close = [a for a in available if arch.lower()[:4] in a][:6]
        hint = f"; e.g. {', '.join(close)}" if close else ""
        raise SalientError(f"unknown torchvision architecture {arch!r}{hint}")
    torch.manual_seed(seed)
    net = tvm.get_model(arch, weights=None)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise SalientError(f"weights file {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
            raise SalientError(f"cannot load weights {path}: {str(e).splitlines()[0]}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SalientError(f"weights {path} do not fit {arch}: {str(e).splitlines()[0]}") from None
    return net


def _is_video(arch: str) -> bool:
    import torchvision.models as tvm

    return arch in tvm.list_models(module=tvm.video)


def _frames(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise SalientError(f"frames must be a non-negative integer (0: an image model), got {value!r}")
    return n


def _callable(target: str) -> nn.Module:
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SalientError(f"cannot import {mod_name!r} for model spec {target!r}: {e}") from None
    fn = getattr(mod, attr, None)
    if fn is None:
        raise SalientError(f"module {mod_name!r} has no attribute {attr!r}")
    net = fn() if callable(fn) and not isinstance(fn, nn.Module) else fn
    if not isinstance(net, nn.Module):
        raise SalientError(f"{target!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _check_output(model: Model) -> int:
    x = torch.zeros(1, *model.input_shape)
    try:
        with torch.inference_mode():
            out = model.module(x)
    except Exception as e:  # noqa: BLE001
        raise SalientError(f"model {model.name} failed on a {tuple(x.shape)} input: {str(e).splitlines()[0]}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SalientError(f"model {model.name} outputs {shape}, expected (N, classes)")
    return int(out.shape[1])


def load_model(spec: str | nn.Module | Model = "efficientnet-lite0", **options: Any) -> Model:
    """Load a classifier from a spec (see the module docstring) or wrap an ``nn.Module``."""
    if isinstance(spec, Model):
        return spec
    opts: dict[str, Any] = {}
    if isinstance(spec, str):
        name, opts = parse_spec(spec)
    else:
        name = type(spec).__name__
    opts.update({k: v for k, v in options.items() if v is not None})
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise SalientError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(OPTION_KEYS)}")
    seed = int(opts.get("seed", 0))
    mean, std, size = HALF, HALF, (224, 224)
    if isinstance(spec, nn.Module):
        net = spec
    elif name in ("efficientnet-lite0", "efficientnet_lite0", "default"):
        name = "efficientnet-lite0"
        net = efficientnet_lite0()
    elif name.startswith("torchvision:"):
        net = _torchvision(name.split(":", 1)[1], opts.get("weights"), seed)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if _is_video(name.split(":", 1)[1]):
            mean, std, size = KINETICS_MEAN, KINETICS_STD, (112, 112)
            opts.setdefault("frames", 16)
    elif name.lower().endswith(SCRIPT_SUFFIXES) or Path(name).is_file():
        path = Path(name)
        if not path.is_file():
            raise SalientError(f"model file {path} not found")
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise SalientError(f"{path} is not a TorchScript model: {str(e).splitlines()[0]}") from None
    elif name.count(":") == 1 and all(name.split(":")):
        net = _callable(name)
    else:
        raise SalientError(
            f"unknown model spec {name!r}; use efficientnet-lite0, torchvision:<arch>?weights=FILE, "
            "a TorchScript file, or package.module:callable"
        )
    if "mean" in opts:
        mean = _floats(opts["mean"], "mean")
    if "std" in opts:
        std = _floats(opts["std"], "std")
    if "input_size" in opts:
        size = _size(opts["input_size"])
    if len(mean) != len(std):
        raise SalientError(f"mean has {len(mean)} values but std has {len(std)}")
    frames = _frames(opts.get("frames", 0))
    model = Model(
        module=net.eval(), name=name, input_size=size, mean=mean, std=std, labels=[],
        score_kind=str(opts.get("score", "softmax")), spec=spec if isinstance(spec, str) else "", options=opts,
        frames=frames,
    )
    n = _check_output(model)
    labels = opts.get("labels")
    if labels is not None:
        labels = [s for s in (labels.split(",") if isinstance(labels, str) else list(labels))]
        if len(labels) != n:
            raise SalientError(f"{len(labels)} labels given but the model has {n} outputs")
    model.labels = labels if labels is not None else default_labels(n)
    return model
