"""Whole mode: explain an image at its native size, for models that accept any input size (fully
convolutional with global pooling, like EfficientNet-Lite0).

- The item: the image's pixels normalised at their own (H, W), never resized to the model's input size
  (:func:`native_input`); methods then run at that size (``Request.size`` is the item's).
- Reading: image files at native size up to ``WHOLE_MAX_PIXELS`` (8192 x 8192, 67 MP; the default reader
  reduces above 4096 x 4096, :data:`salient.images.MAX_PIXELS`); a larger file is a one-line error (use
  tiles, or a pyramid level of a tiled slide). A slide (``salient.open_slide``) or a slide path with
  ``level`` is read one whole pyramid level at a time, under the same budget (:func:`read_whole`).
- Acceptance: before any work, one forward of a 1-item batch at the item's shape on the meta device (no
  arithmetic, no memory; :func:`check_accepts`), or, where a model cannot run on the meta device, one real
  forward of zeros; a model that rejects the size (or does not output (1, classes)) is a one-line error
  naming the size.
- Memory: each forward batch of the item is lowered to fit the per-worker limit (the rule of
  :mod:`salient.engine.memory`: ``min(batch_size, floor(memory_limit / input_bytes))``, a function of the
  item's shape and the configured numbers only, so the maps stay bit for bit the same on any executor);
  an input that alone exceeds the limit, or lowered batches that do not fit the memory available now
  (local workers), are refused before any work (:func:`check_whole_memory`).
- Gradients: a CAM's forward-and-backward keeps every activation (at 2048 x 2048 on EfficientNet-Lite0 about
  6.6 GB, at 4096 x 4096 about 26 GB): the worker refuses one whose kept activations, summed on the meta
  device (:func:`graph_bytes`), exceed the per-worker limit (:func:`check_gradients_fit`), with one line.
- Work: masks and boxes are built per batch on the worker from the query specs (as at any size); the
  scheduler shards the item's queries over every worker (:mod:`salient.engine.scheduler`).
"""

from __future__ import annotations

import copy
import math
import os
import weakref
from pathlib import Path
from typing import Any

import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from ..errors import ItemError, SalientError
from ..images import IMAGE_SUFFIXES, Image, load_image
from ..models import Model
from ..models.loader import first_line
from .memory import DEFAULT_MEMORY_LIMIT, batch_for, check_fits, check_input_fits

WHOLE_MAX_PIXELS = 8192 * 8192  # image files read at native size up to this (see the module docstring)
_META: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its copy on the meta device
_ACCEPTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> input shapes it accepted
_GRAPH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {shape: graph_bytes}


def _too_big(name: str, size: str) -> ItemError:
    side = int(WHOLE_MAX_PIXELS**0.5)
    return ItemError(f"{name}: whole mode reads images up to {side}x{side} ({WHOLE_MAX_PIXELS / 1e6:.0f} MP) at "
                     f"native size, this one is {size}; use --tiles, or a pyramid level of a tiled TIFF (--level)")


def _slide_level(slide: Any, level: int | None, name: str) -> Image:
    """Level ``level`` (default: the slide's chosen level) of a lazy slide (:class:`salient.io.Slide`) read
    whole, within the budget."""
    level = slide.level if level is None else slide.check_level(level)
    h, w = slide.levels[level]
    if h * w > WHOLE_MAX_PIXELS:
        raise _too_big(f"{name} level {level}", f"{w}x{h}")
    return Image(slide.read_region(level, 0, 0, h, w), getattr(slide, "name", "slide"), name)


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header (no pixel decoded), or None where Pillow cannot open it."""
    try:
        with PILImage.open(path) as im:
            return im.size
    except PILImage.DecompressionBombError as e:  # above 179 MP: far above the budget too
        raise _too_big(str(path), f"larger ({first_line(e)})") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None


def read_whole(src: Any, level: int | None = None) -> Image:
    """``src`` as an :class:`~salient.images.Image` at native size: an Image, array or tensor as it is; an
    image file up to ``WHOLE_MAX_PIXELS`` (a larger one: a one-line ItemError); a slide object, a path with
    ``level``, or a file Pillow cannot open (a vendor slide, a Zarr folder), one whole pyramid level (see
    the module docstring)."""
    if hasattr(src, "read_region"):
        return _slide_level(src, level, str(getattr(src, "path", "slide")))
    if not isinstance(src, (str, os.PathLike)):
        if level is not None:
            raise SalientError("level applies to slides and slide files, not to images in memory")
        return load_image(src)
    path = Path(src)
    size = None if level is not None else _header_size(path)
    if size is None:
        if level is None and (path.suffix.lower() in IMAGE_SUFFIXES or not path.exists()):
            return load_image(path)  # its own one-line error
        from ..io import open_slide  # the lazy slide readers (vendor formats, Zarr, pyramidal TIFF)

        with open_slide(src) as slide:
            return _slide_level(slide, level, str(src))
    w, h = size
    if w * h > WHOLE_MAX_PIXELS:
        raise _too_big(str(path), f"{w}x{h}")
    return load_image(path, max_pixels=WHOLE_MAX_PIXELS)


def native_input(model: Model, image: Image) -> torch.Tensor:
    """The normalised input (C, H, W) at the image's own size: ``Model.preprocess`` without the resize."""
    if model.frames:
        raise SalientError(f"whole mode explains still images; model {model.name} is a video net")
    x = torch.from_numpy(image.pixels).permute(2, 0, 1)
    return model.normalize(x.clamp(0.0, 1.0)).contiguous()


def _meta_module(module: torch.nn.Module) -> torch.nn.Module:
    meta = _META.get(module)
    if meta is None:
        meta = _META[module] = copy.deepcopy(module).to("meta")
    return meta


def _forward_one(module: torch.nn.Module, shape: tuple[int, ...], device: str, memory_format) -> Any:
    x = torch.zeros((1, *shape), device=device).contiguous(memory_format=memory_format)
    with torch.inference_mode():
        return module(x)


def check_accepts(model: Model, shape: tuple[int, ...]) -> None:
    """Refuse (ItemError, one line) a model that cannot run a 1-item batch of ``shape`` (C, H, W) into
    (1, classes) scores: on the meta device when the model runs there, else one real forward of zeros."""
    shape = tuple(int(n) for n in shape)
    seen = _ACCEPTED.setdefault(model.module, set())
    if shape in seen or shape == tuple(model.input_shape):
        return
    try:
        out = _forward_one(_meta_module(model.module), shape, "meta", model.memory_format)
    except Exception:  # noqa: BLE001 - the meta device cannot run everything: a real forward decides
        try:
            out = _forward_one(model.module, shape, "cpu", model.memory_format)
        except Exception as e:  # noqa: BLE001 - the model's own failure, one line
            raise ItemError(f"whole mode: model {model.name} rejects a {shape[1]}x{shape[2]} input "
                            f"({first_line(e)}); use --tiles") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, model.n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ItemError(f"whole mode: model {model.name} outputs {got} for a {shape[1]}x{shape[2]} input, not "
                        f"(1, {model.n_classes}); use --tiles")
    seen.add(shape)


def graph_bytes(model: Model, shape: tuple[int, ...]) -> int | None:
    """The activations one forward of a 1-item batch of ``shape`` produces, summed over every leaf module's
    output (what autograd keeps for a backward pass, about), measured on the meta device; None where the
    model does not run there. Cached per shape."""
    shape = tuple(int(n) for n in shape)
    cache = _GRAPH.setdefault(model.module, {})
    if shape not in cache:
        total = [0]

        def hook(mod: torch.nn.Module, _inp: Any, out: Any) -> None:
            if not any(True for _ in mod.children()):
                total[0] += sum(t.numel() * t.element_size() for t in (out if isinstance(out, (tuple, list)) else
                                                                        (out,)) if isinstance(t, torch.Tensor))

        try:
            meta = copy.deepcopy(model.module).to("meta")  # its own: hooks on a shared copy would count others' runs
            handles = [m.register_forward_hook(hook) for m in meta.modules()]
            try:
                _forward_one(meta, shape, "meta", model.memory_format)
            finally:
                for h in handles:
                    h.remove()
            cache[shape] = 4 * math.prod(shape) + total[0]
        except Exception:  # noqa: BLE001 - no meta run (TorchScript, data-dependent code): unknown
            cache[shape] = None
    return cache[shape]


def check_gradients_fit(model: Model, shape: tuple[int, ...], memory_limit: int | None = None) -> None:
    """Refuse (ItemError) a forward-and-backward (Grad-CAM) of an input of ``shape`` at another size than the
    model's whose kept activations (:func:`graph_bytes`) exceed the per-worker limit."""
    if tuple(shape) == tuple(model.input_shape):
        return
    need = graph_bytes(model, shape)
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    if need is not None and need > limit:
        raise ItemError(f"whole mode: a gradient (CAM) pass of model {model.name} at {shape[-2]}x{shape[-1]} keeps "
                        f"about {need / 1e9:.3g} GB of activations, above the per-worker memory limit of "
                        f"{limit / 1e9:.3g} GB; raise the limit (--memory-limit) or use --tiles")


def check_whole_memory(model: Model, executor: Any, shape: tuple[int, ...]) -> int:
    """The forward batch of an item of ``shape`` on ``executor`` (the memory rule), after refusing an input
    above the per-worker limit and, for workers on this machine, batches that do not fit what is available."""
    limit = getattr(executor, "memory_limit", None)
    check_input_fits(model, shape, limit)
    b = batch_for(model, shape, executor.batch_size, limit)
    if executor.kind == "local":
        check_fits(model, executor.worker.device, b, executor.n_workers, shape)
    elif getattr(executor, "_local", False) and getattr(executor, "device", "") == "cpu":  # a Ray started here
        check_fits(model, torch.device("cpu"), b, executor.n_workers, shape)
    return b


def whole_input(model: Model, executor: Any, image: Image) -> torch.Tensor:
    """The input of a whole-mode item: :func:`native_input`, checked by :func:`check_accepts` and
    :func:`check_whole_memory` before any work."""
    x = native_input(model, image)
    check_accepts(model, tuple(x.shape))
    check_whole_memory(model, executor, tuple(x.shape))
    return x
