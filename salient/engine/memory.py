"""Memory checked before a worker allocates: a batch that cannot fit is a one-line error, not a crash.

The rule (README, "Memory"): a forward batch needs, per input, the input itself plus three times the
model's largest activation of one input (measured once by ``load_model``: the layer's input, its
output and a skip connection held beside them), and each worker holds its own copy of the model
(twice on CPU, where a fused copy runs the masked batches). ``workers`` such batches must fit in the
memory available now: on CPU ``MemAvailable`` (or the cgroup's limit, if lower), on a GPU its free
memory (plus what torch has cached there unused). This is an estimate, on the safe side (EfficientNet-
Lite0: 15.3 MB per input, 1.35x the measured peak of a CPU forward at batch 64); it refuses what cannot
work (``--batch-size 100000`` at 224 x 224 asks for 1.5 TB per worker) rather than predicting exactly.

Inputs at another size than the model's (whole mode, :mod:`salient.engine.whole`): one input of (C, H, W)
needs 4·C·H·W bytes plus 3x the largest activation scaled by its pixel count, ``activation_bytes · H·W /
(h0·w0)`` (:func:`input_bytes`; the activations of a fully convolutional net grow with the pixels). Its
forward batch is ``min(batch_size, floor(memory_limit / input_bytes))`` (:func:`batch_for`), where
``memory_limit`` is the configured per-worker limit (``DEFAULT_MEMORY_LIMIT``, 8 GiB, unless given:
``memory_limit`` executor option, ``--memory-limit``). It depends only on the item's shape and the
configured numbers, never on the memory free at that instant, so the batch shape, and with it every
bit of the map, is the same on every executor and run; an input that alone exceeds the limit is refused
(:func:`check_input_fits`), and the lowered batches must still fit what is available now
(:func:`check_fits` with ``shape``: a refusal only, it never changes the batch). At the model's own input
size the batch is the engine's, as before.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import SalientError, short_repr
from ..models import Model

ACTIVATION_COPIES = 3
DEFAULT_MEMORY_LIMIT = 8 * 2**30  # per worker, for the batches of inputs at another size than the model's


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def _cgroup_left() -> int | None:
    """What the cgroup (v2) may still use, where it has a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use on ``device`` now (None: unknown, e.g. an MPS device)."""
    if device.type == "cuda":  # free on the device, plus what torch's caching allocator holds unused
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    known = [b for b in (_meminfo_available(), _cgroup_left()) if b is not None]
    return min(known) if known else None


def sample_bytes(model: Model) -> int:
    """The estimated working set of one input in a forward batch (see the module docstring)."""
    return 4 * math.prod(model.input_shape) + ACTIVATION_COPIES * int(model.activation_bytes)


def model_bytes(model: Model) -> int:
    return sum(p.numel() * p.element_size() for p in model.module.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.module.buffers())


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def check_fits(model: Model, device: torch.device, batch_size: int, workers: int = 1,
               shape: tuple[int, ...] | None = None) -> None:
    """Refuse (SalientError) ``workers`` batches of ``batch_size`` that cannot fit in ``device``'s memory
    (inputs of ``shape``, default the model's own)."""
    avail = available_bytes(device)
    if avail is None:
        return
    per = sample_bytes(model) if shape is None else input_bytes(model, shape)
    copies = 2 if device.type == "cpu" else 1
    need = workers * (batch_size * per + copies * model_bytes(model))
    if need > avail:
        who = f"{workers} workers x " if workers > 1 else ""
        fit = max(0, (avail // max(1, workers) - copies * model_bytes(model)) // per)
        raise SalientError(
            f"batch size {batch_size} needs about {_size(need)} of memory ({who}{_size(per)} per input of model "
            f"{model.name}{'' if shape is None else ' at ' + _hw(shape)}), but {_size(avail)} is available on "
            f"{device}; choose a batch size of at most {max(1, fit)}" + (" or fewer workers" if workers > 1 else "")
            + ("" if shape is None else " (or a lower --memory-limit)"))


def _hw(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(n)) for n in shape[1:])


def input_bytes(model: Model, shape: tuple[int, ...]) -> int:
    """The estimated working set of one input of ``shape`` (C, H, W) or (C, T, H, W): the input plus 3x the
    model's largest activation scaled by the pixel count (see the module docstring); ``sample_bytes`` at the
    model's own input shape."""
    shape = tuple(int(n) for n in shape)
    if shape == tuple(model.input_shape):
        return sample_bytes(model)
    pixels, ref = math.prod(shape[1:]), math.prod(model.input_shape[1:])
    return 4 * math.prod(shape) + ACTIVATION_COPIES * -(-int(model.activation_bytes) * pixels // ref)


def batch_for(model: Model, shape: tuple[int, ...], batch_size: int, memory_limit: int | None = None) -> int:
    """The forward batch for inputs of ``shape``: ``batch_size`` at the model's input shape, elsewhere
    ``min(batch_size, floor(memory_limit / input_bytes(model, shape)))``, at least 1 (the driver refuses an
    input above the limit first: :func:`check_input_fits`). Deterministic: shape and configuration only."""
    if tuple(int(n) for n in shape) == tuple(model.input_shape):
        return int(batch_size)
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    return max(1, min(int(batch_size), limit // input_bytes(model, shape)))


def check_input_fits(model: Model, shape: tuple[int, ...], memory_limit: int | None = None) -> None:
    """Refuse (SalientError) an input of ``shape`` whose estimated working set alone exceeds the per-worker limit."""
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    per = input_bytes(model, shape)
    if per > limit:
        raise SalientError(
            f"whole mode: one {_hw(shape)} input of model {model.name} needs about {_size(per)} (the input and "
            f"3x its largest activation), above the per-worker memory limit of {_size(limit)}; raise the limit "
            "(--memory-limit, executor option memory_limit) or use --tiles")


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | str | None) -> int | None:
    """A memory size: bytes, or a number with a unit (``8GB``, ``512MiB``, ``1.5 GiB``); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise SalientError(f"memory_limit must be a size like 8GB or 512MiB, got {value!r}")
    text = str(value).strip().lower().replace(" ", "")
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(num):]
    try:
        n = float(num) * _UNITS[unit]
    except (KeyError, ValueError):
        n = -1.0
    if not math.isfinite(n) or n < 1:
        raise SalientError(f"memory_limit must be a size like 8GB or 512MiB, got {short_repr(value, 60)}")
    return int(n)
