"""Memory checked before a worker allocates: a batch that cannot fit is a one-line error, not a crash.

The rule (README, "Memory"): a forward batch needs, per input, the input itself plus three times the
model's largest activation of one input (measured once by ``load_model``: the layer's input, its
output and a skip connection held beside them), and each worker holds its own copy of the model
(twice on CPU, where a fused copy runs the masked batches). ``workers`` such batches must fit in the
memory available now: on CPU ``MemAvailable`` (or the cgroup's limit, if lower), on a GPU its free
memory (plus what torch has cached there unused). This is an estimate, on the safe side (EfficientNet-
Lite0: 15.3 MB per input, 1.35x the measured peak of a CPU forward at batch 64); it refuses what cannot
work (``--batch-size 100000`` at 224 x 224 asks for 1.5 TB per worker) rather than predicting exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import SalientError
from ..models import Model

ACTIVATION_COPIES = 3


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


def check_fits(model: Model, device: torch.device, batch_size: int, workers: int = 1) -> None:
    """Refuse (SalientError) ``workers`` batches of ``batch_size`` that cannot fit in ``device``'s memory."""
    avail = available_bytes(device)
    if avail is None:
        return
    per = sample_bytes(model)
    copies = 2 if device.type == "cpu" else 1
    need = workers * (batch_size * per + copies * model_bytes(model))
    if need > avail:
        who = f"{workers} workers x " if workers > 1 else ""
        fit = max(0, (avail // max(1, workers) - copies * model_bytes(model)) // per)
        raise SalientError(
            f"batch size {batch_size} needs about {_size(need)} of memory ({who}{_size(per)} per input of model "
            f"{model.name}), but {_size(avail)} is available on {device}; choose a batch size of at most "
            f"{max(1, fit)}" + (" or fewer workers" if workers > 1 else ""))
