"""Where RayExecutor's GPU actors go: what one asks for, and how many fit on the cluster's nodes.

- A GPU worker asks for ``num_gpus=gpus_per_worker`` and one CPU. A node that declares no GPUs is never
  given one: the head node of ``cluster.yaml`` (``resources: {GPU: 0}``, ``ray start --head --num-gpus=0``)
  only runs the driver.
- ``gpus_per_worker`` g > 0: below 1, ``floor(1 / g)`` workers share each GPU (0.5: two per GPU); above 1
  it must be whole (Ray's rule). Workers that fit on a node: ``GPUs * floor(1 / g)`` (g <= 1) or
  ``floor(GPUs / g)``, and at most its CPUs.
- ``accelerator`` ("H100") is Ray's ``accelerator_type`` option: the actor asks for a sliver of the node
  resource ``accelerator_type:H100``, which Ray sets on nodes with that GPU (or the node config declares).
  Only such nodes count; where none has it, a one-line error names the types the cluster has.

Everything is counted from the cluster's resources before any actor asks: an actor that asks for what
no node has waits forever.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import SalientError, short_repr
from .worker import default_threads

ACCELERATOR_PREFIX = "accelerator_type:"  # Ray's node resource for a GPU type (ray._common.utils)
log = logging.getLogger(__name__)


def parse_gpus_per_worker(gpus_per_worker: Any) -> float:
    """``gpus_per_worker`` as a float (None: 1); a one-line error unless it is > 0 and, above 1, whole."""
    if gpus_per_worker is None:
        return 1.0
    try:
        g = float(gpus_per_worker)
    except (TypeError, ValueError):
        g = math.nan
    if isinstance(gpus_per_worker, bool) or not (g > 0 and math.isfinite(g)):
        raise SalientError(f"gpus_per_worker must be > 0, got {short_repr(gpus_per_worker, 40)}")
    if g > 1 and g != int(g):
        raise SalientError(f"gpus_per_worker above 1 must be a whole number of GPUs, got {g:g}")
    return g


def parse_accelerator(accelerator: Any) -> str | None:
    """An accelerator type name as Ray spells it (H100, A100, L4, A10G, ...) or None."""
    if accelerator is None:
        return None
    name = str(accelerator).strip() if isinstance(accelerator, str) else ""
    if not name or ACCELERATOR_PREFIX in name or any(c.isspace() for c in name):
        raise SalientError(f"accelerator {short_repr(accelerator, 40)}: not an accelerator type; "
                           "use the name Ray gives it, e.g. H100, A100, L4")
    return name


def check_ray_options(gpus_per_worker: Any = None, accelerator: Any = None, **_: Any) -> None:
    """The Ray options that are wrong whatever the cluster, checked before Ray starts."""
    parse_gpus_per_worker(gpus_per_worker)
    parse_accelerator(accelerator)


def accelerator_types(resources: Mapping[str, float]) -> list[str]:
    """The accelerator types among a cluster's (or a node's) resources, sorted."""
    return sorted(k[len(ACCELERATOR_PREFIX):] for k in resources if k.startswith(ACCELERATOR_PREFIX))


def per_node(node: Mapping[str, float], gpus_per_worker: float) -> int:
    """GPU workers that fit on one node (see the module docstring)."""
    gpus = float(node.get("GPU", 0))
    if gpus_per_worker <= 1:
        slots = int(gpus + 1e-9) * int(1 / gpus_per_worker + 1e-9)
    else:
        slots = int(gpus / gpus_per_worker + 1e-9)
    return min(slots, int(float(node.get("CPU", 0)) + 1e-9))


def gpu_capacity(resources: Mapping[str, float], nodes: Iterable[Mapping[str, float]], gpus_per_worker: float,
                 accelerator: str | None) -> tuple[int, str]:
    """(GPU workers that fit, a short description) over the alive ``nodes`` (their resource dicts), only
    those with ``accelerator`` when one is asked for; that no node has it is a one-line error."""
    if accelerator is not None:
        key = ACCELERATOR_PREFIX + accelerator
        if key not in resources:
            have = ", ".join(accelerator_types(resources)) or "none"
            raise SalientError(f"accelerator {accelerator}: no node of the Ray cluster has it "
                               f"(accelerator types there: {have})")
        nodes = [n for n in nodes if key in n]
    nodes = list(nodes)
    n_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    on = f" on {accelerator} nodes" if accelerator else ""
    what = f"{n_gpus:g} GPUs{on}, {gpus_per_worker:g} per worker"
    return sum(per_node(n, gpus_per_worker) for n in nodes), what


def gpu_options(gpus_per_worker: float, accelerator: str | None) -> dict[str, Any]:
    """Ray options of a GPU actor (or task): its GPUs, one CPU, the accelerator type if pinned."""
    opts: dict[str, Any] = {"num_gpus": gpus_per_worker, "num_cpus": 1}
    if accelerator is not None:
        opts["accelerator_type"] = accelerator
    return opts


def actor_device(device: str | None, threads: int | None) -> tuple[str | None, int | None]:
    """Inside a GPU actor: ("cuda", threads) when torch sees a device there; else the CPU with one log
    line and the CPU's thread rule (fake GPUs in tests, a node whose driver is broken)."""
    if device != "cuda" or torch.cuda.is_available():
        return device, threads
    import ray  # only inside an actor

    log.warning("salient: Ray gave this worker GPU(s) %s but torch sees no CUDA device; running on the CPU",
                ray.get_gpu_ids())
    return "cpu", default_threads(torch.device("cpu"), threads)
