"""``load_model(spec)``: the one way to get a :class:`Model` from a string or a module.

Spec forms (options may follow a ``?`` as ``key=value`` pairs joined by ``&``, or be passed as
keyword arguments):
- ``efficientnet-lite0``: the embedded default (real ImageNet weights, no download);
- ``torchvision:<arch>`` with ``weights=<local file>`` (loaded with ``weights_only=True``); without
  weights the network keeps its (seeded, ``seed=``) random initialisation;
- a TorchScript file (``*.pt``, ``*.pth``, ``*.ts``, ``*.torchscript``);
- ``package.module:callable`` returning an ``nn.Module``;
- ``frames:<image model spec>``: any image classifier above lifted to clips, the clip's score being the
  mean of its frames' scores (:mod:`salient.models.frames`); ``frames`` (default 16) sets T, every other
  option goes to the image model, e.g. ``frames:torchvision:resnet18?weights=r18.pth&frames=8``.
Options: ``weights``, ``score`` (softmax | logit | sigmoid), ``input_size`` (e.g. 224 or 224x320),
``mean`` and ``std`` (comma-separated), ``seed``, ``frames`` (> 0: a video net taking clips
(C, frames, H, W); torchvision's video architectures default to 16 frames of 112 x 112, Kinetics
mean/std), ``output`` (classes | reconstruction | embedding: an autoencoder's output has its input's
shape, a metric-learning net's is (N, D); default classes).
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from ..errors import SalientError, short_repr
from .efficientnet import efficientnet_lite0
from .frames import PREFIX as FRAMES_PREFIX
from .frames import lift_spec
from .labels import default_labels
from .model import Model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
OPTION_KEYS = ("weights", "score", "input_size", "mean", "std", "seed", "labels", "frames", "output")
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
        raise SalientError(f"input_size must be N or HxW, got {short_repr(value)}") from None
    if len(nums) == 1:
        return (nums[0], nums[0])
    if len(nums) == 2:
        return (nums[0], nums[1])
    raise SalientError(f"input_size must be N or HxW, got {short_repr(value)}")


def _floats(value: Any, key: str) -> tuple[float, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(float(v) for v in value)
    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        raise SalientError(f"{key} must be comma-separated numbers, got {short_repr(value)}") from None


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
            raise SalientError(f"cannot load weights {path}: {first_line(e)}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SalientError(f"weights {path} do not fit {arch}: {first_line(e)}") from None
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
        raise SalientError(f"frames must be a non-negative integer (0: an image model), got {short_repr(value)}")
    return n


def _seed(value: Any) -> int:
    """The ``seed`` option: an integer in [0, 2**63) (the range torch's generators take), as int or digits."""
    s = -1
    if isinstance(value, str) and value.strip().isdigit():
        s = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        s = value
    if not 0 <= s < 2**63:
        raise SalientError(f"seed must be an integer in [0, 2**63), got {short_repr(value, 60)}")
    return s


def _required(fn: Any) -> list[str]:
    """The parameters ``fn`` cannot be called without ([] where its signature is unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [n for n, q in sig.parameters.items() if q.default is inspect.Parameter.empty
            and q.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def _callable(target: str) -> nn.Module:
    """``package.module:callable``: a module instance, or a factory called with no arguments. Python's
    standard library holds no model factory (``os:system`` is refused, never called); a factory that
    needs arguments is refused before the call, one that raises gives a one-line error."""
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SalientError(f"cannot import {mod_name!r} for model spec {short_repr(target)}: {e}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module failed as it was imported
        raise SalientError(f"importing {mod_name!r} for model spec {short_repr(target)} raised "
                           f"{type(e).__name__}: {first_line(e)}") from None
    fn = getattr(mod, attr, None)
    if fn is None:
        raise SalientError(f"module {mod_name!r} has no attribute {attr!r}")
    net = fn
    if callable(fn) and not isinstance(fn, nn.Module):
        if mod_name.split(".")[0] in (*sys.stdlib_module_names, "builtins", "__main__"):
            raise SalientError(f"model spec {short_repr(target)}: {mod_name}.{attr} is part of Python itself, not a "
                               "model factory; name an nn.Module or a function of yours that returns one")
        needs = _required(fn)
        if needs:
            raise SalientError(f"model factory {short_repr(target)} needs arguments ({', '.join(needs)}); it is called "
                               "with none: name a function that builds the model without arguments")
        try:
            net = fn()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code failed, not ours
            raise SalientError(f"model factory {short_repr(target)} raised {type(e).__name__}: "
                               f"{first_line(e)}") from None
    if not isinstance(net, nn.Module):
        raise SalientError(f"{short_repr(target)} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type where it has none), at most 200 characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _check_output(model: Model) -> int:
    """One forward pass on zeros: the output must be (1, classes). Records the largest activation of one
    input (``model.activation_bytes``, what the executors' memory check scales by the batch size)."""
    x = torch.zeros(1, *model.input_shape)
    largest = [0]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        largest[0] = max(largest[0], sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor)))

    handles = []
    try:
        for m in model.module.modules():
            handles.append(m.register_forward_hook(hook))
    except Exception:  # noqa: BLE001 - TorchScript modules take no Python hooks: their output is the estimate
        pass
    try:
        with torch.inference_mode():
            out = model.module(x)
    except Exception as e:  # noqa: BLE001
        raise SalientError(f"model {model.name} failed on a {tuple(x.shape)} input: {first_line(e)}") from None
    finally:
        for h in handles:
            h.remove()
    model.activation_bytes = max(largest[0], out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if model.output == "reconstruction":
        if shape != tuple(x.shape):
            raise SalientError(f"model {model.name} outputs {shape}, expected a reconstruction of its input "
                               f"{tuple(x.shape)} (output=reconstruction)")
        return 0
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 1:
        what = "(N, dimensions)" if model.output == "embedding" else "(N, classes)"
        raise SalientError(f"model {model.name} outputs {shape}, expected {what}")
    return int(out.shape[1])


def load_model(spec: str | nn.Module | Model = "efficientnet-lite0", **options: Any) -> Model:
    """Load a classifier from a spec (see the module docstring) or wrap an ``nn.Module``."""
    if isinstance(spec, Model):
        return spec
    opts: dict[str, Any] = {}
    if isinstance(spec, str):
        name, opts = parse_spec(spec)
        if name.startswith(FRAMES_PREFIX):  # an image classifier lifted to clips (salient.models.frames)
            return lift_spec(spec, name, {**opts, **{k: v for k, v in options.items() if v is not None}}, load_model)
    else:
        name = type(spec).__name__
    opts.update({k: v for k, v in options.items() if v is not None})
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise SalientError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(OPTION_KEYS)}")
    seed = _seed(opts.get("seed", 0))
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
            with warnings.catch_warnings():  # torch 2.14 calls TorchScript deprecated; it still loads it
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.load")
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise SalientError(f"{path} is not a TorchScript model: {first_line(e)}") from None
    elif name.count(":") == 1 and all(name.split(":")):
        net = _callable(name)
    else:
        raise SalientError(
            f"unknown model spec {short_repr(name)}; use efficientnet-lite0, torchvision:<arch>?weights=FILE, "
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
        frames=frames, output=str(opts.get("output", "classes")),
    )
    n = _check_output(model)
    labels = opts.get("labels")
    if labels is not None:
        labels = [s for s in (labels.split(",") if isinstance(labels, str) else list(labels))]
        if len(labels) != n:
            raise SalientError(f"{len(labels)} labels given but the model has {n} outputs")
    model.labels = labels if labels is not None else default_labels(n) if n else []
    return model
