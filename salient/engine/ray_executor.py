"""RayExecutor: one Ray actor per GPU (or per CPU slot where the cluster has no GPU), each holding
a :class:`~salient.engine.worker.Worker`.

- GPUs are counted from ``ray.cluster_resources()`` and ``ray.nodes()`` before any actor asks for one
  (an actor that asks for a GPU the cluster lacks waits forever). GPU actors ask for ``num_gpus``, so
  a node without GPUs (the head node of ``cluster.yaml``) never gets one; ``gpus_per_worker`` 0.5 puts
  two on each GPU; ``accelerator`` pins them to a GPU type (:mod:`salient.engine.ray_placement`).
  A GPU actor picks its device inside: "cuda" when torch sees one there, else the CPU (one log line).
- The model travels once (``ray.put``); every actor builds its replica from that reference. The
  batch size is fixed before the actors start (given, the CPU default, or autotuned once in a
  task on a worker-like slot) and shared by all: same batch shape, same bits.
- A unit carries object references to the pixels of every item it needs (``ray.put`` once per
  item); an actor fetches only the items it does not hold (an LRU of ``max_items``). Driver-side
  affinity keeps fetches rare; correctness never depends on it (a restarted actor refetches).
- Failures: actors have ``max_restarts``; units run with ``max_task_retries=0`` so that a unit
  whose actor died comes back at once as :class:`Lost` and the scheduler re-runs it on any ready
  worker (it need not wait for that actor, which may never return when its node is gone). A lost
  worker leaves ``ready()`` until a probe (``ping`` with ``max_task_retries=-1``) sees it alive.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from typing import Any

import numpy as np
import ray
import torch
from ray import exceptions as rex

from ..errors import SalientError, short_repr
from ..kernels import parse_kernels
from ..models import Model
from .executor import Done, Event, Failed, Lost, Unit, error_line
from .memory import check_fits
from .ray_placement import actor_device, gpu_capacity, gpu_options, parse_accelerator, parse_gpus_per_worker
from .worker import Worker, default_threads, parse_device, parse_precision, resolve_batch_size

# Errors that mean "the worker (process, node) went away", as opposed to an error raised by the unit.
LOST_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(rex, name) for name in ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError",
                                    "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError", "TaskCancelledError")
    if hasattr(rex, name)
)


def local_runtime_env() -> dict[str, Any]:
    """Workers of a Ray started here import what this process can: its extra ``sys.path`` entries."""
    base = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    extra = [p for p in (os.path.realpath(p or os.getcwd()) for p in sys.path) if os.path.isdir(p)
             and not any(p.startswith(b + os.sep) or p == b for b in base)]
    path = os.pathsep.join(dict.fromkeys(extra + os.environ.get("PYTHONPATH", "").split(os.pathsep)).keys())
    return {"env_vars": {"PYTHONPATH": path.strip(os.pathsep)}}


def start_local_ray(num_cpus: int | None = None, object_store_memory: int | None = None, **opts: Any) -> None:
    """``ray.init`` a local Ray (no dashboard, worker logs not forwarded) unless one is running."""
    if ray.is_initialized():
        return
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False,
             log_to_driver=opts.pop("log_to_driver", False), runtime_env=opts.pop("runtime_env", local_runtime_env()),
             **opts)


def join_ray(address: str) -> None:
    """``ray.init(address=...)``: a cluster that cannot be reached is a one-line error."""
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        raise SalientError(f"Ray address {short_repr(address, 80)}: no Ray cluster there ({error_line(e)}); start one "
                           "(ray start --head) or leave the address out to start a local Ray") from None


def portable(model: Model) -> Model:
    """A shallow copy without what must not travel (a cached engine)."""
    m = copy.copy(model)
    m.__dict__.pop("_engine", None)
    return m


class RayWorker:
    """The actor: a Worker plus item fetching, stats, and a test hook that kills the process."""

    def __init__(self, model: list, device: str | None, batch_size: int, threads: int | None, max_items: int,
                 fuse: bool = True, incremental: bool = True, memory_limit: int | None = None,
                 precision: str = "fp32", kernels: str = "auto", cuda_graphs: bool = False):
        # ``model`` is [ref]: a nested reference is fetched here (the driver keeps it alive for restarts)
        device, threads = actor_device(device, threads)
        self.worker = Worker(ray.get(model[0]), device, batch_size, max_items, threads, fuse=fuse,
                             incremental=incremental, memory_limit=memory_limit, precision=precision,
                             kernels=kernels, cuda_graphs=cuda_graphs)
        self._crash_at: int | None = None

    def ping(self) -> int:
        return os.getpid()

    def run(self, queries: list, refs: dict[str, Any], drops: list[str]) -> list[Any]:
        w = self.worker
        for item_id in drops:
            w.drop(item_id)
        missing = [item_id for item_id in refs if not w.has(item_id)]
        if missing:
            for item_id, x in zip(missing, ray.get([refs[i] for i in missing]), strict=True):
                w.put(item_id, np.array(x))  # a copy: the object store's buffer is released
        return w.run(queries)

    def stats(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {**self.worker.stats(), "pid": os.getpid(), "node": ctx.get_node_id(),
                "gpu_ids": [str(i) for i in ray.get_gpu_ids()], "resources": ctx.get_assigned_resources()}

    def crash_after(self, n_batches: int) -> None:
        """Test hook: ``os._exit`` when this incarnation runs its ``n_batches``-th forward from now."""
        w = self.worker
        target = w.n_batches + int(n_batches)
        forward = w.forward_logits

        def dying(x):
            if w.n_batches + 1 >= target:
                os._exit(1)
            return forward(x)

        w.forward_logits = dying


def _autotune(model: Model, device: str | None, threads: int | None, precision: str, kernels: str,
              cuda_graphs: bool) -> int:
    device, threads = actor_device(device, threads)
    return Worker(model, device, "auto", 1, threads, fuse=False, precision=precision, kernels=kernels,
                  cuda_graphs=cuda_graphs).batch_size


class RayExecutor:
    """Ray actors as workers. ``address``: None starts (or reuses) a local Ray; "auto" or host:port
    joins a cluster. ``workers``: default one per GPU (``gpus_per_worker`` each) or, without GPUs,
    one per ``threads`` CPUs (default 1). ``unit_batches``: default max(4, workers / 8), so that the
    driver's Ray calls stay few. ``lost_timeout``: give up when no worker has been alive that long
    (restarts pending for want of resources). ``fuse``, ``incremental``, ``precision``, ``kernels``,
    ``cuda_graphs``: as for :class:`Worker`. ``gpus_per_worker`` (> 0; 0.5: two workers per GPU) and
    ``accelerator`` (a GPU type, e.g. "H100"): see :mod:`salient.engine.ray_placement`."""

    kind = "ray"

    def __init__(self, model: Model, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float = 1, batch_size: int | str | None = None, threads: int | None = None,
                 device: str | None = None, depth: int = 2, unit_batches: int | None = None, max_items: int = 256,
                 max_restarts: int = 8, start_timeout: float = 300.0, lost_timeout: float = 600.0,
                 num_cpus: int | None = None, object_store_memory: int | None = None, fuse: bool = True,
                 incremental: bool = True, memory_limit: int | None = None, precision: str = "fp32",
                 kernels: str = "auto", cuda_graphs: bool = False, accelerator: str | None = None, **_: Any):
        gpus_per_worker, self.accelerator = parse_gpus_per_worker(gpus_per_worker), parse_accelerator(accelerator)
        self.precision, self.kernels = parse_precision(precision), parse_kernels(kernels)  # before Ray starts
        self.cuda_graphs = bool(cuda_graphs)
        self.lost_timeout = lost_timeout
        self.memory_limit = memory_limit  # per worker (memory.batch_for)
        self._owns_ray = not ray.is_initialized()
        self._local = self._owns_ray and address is None
        if self._owns_ray:
            if address is None:
                start_local_ray(num_cpus=num_cpus, object_store_memory=object_store_memory)
            else:
                join_ray(address)
        try:
            self._start(model, workers, gpus_per_worker, batch_size, threads, device, depth, unit_batches, max_items,
                        max_restarts, start_timeout, fuse, incremental)
        except BaseException:
            self.close()
            raise

    def _start(self, model, workers, gpus_per_worker, batch_size, threads, device, depth, unit_batches, max_items,
               max_restarts, start_timeout, fuse, incremental) -> None:
        self.actors: list[Any] = []
        self._model_ref = None
        res = ray.cluster_resources()
        n_gpus, n_cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        if device in (None, "auto"):
            use_gpu = n_gpus > 0
        else:
            use_gpu = parse_device(device).type == "cuda"
        if use_gpu:
            if n_gpus < gpus_per_worker:
                raise SalientError(f"the Ray cluster has {n_gpus:g} GPUs; a worker asks for {gpus_per_worker:g}")
            self.threads = threads
            opts = gpu_options(gpus_per_worker, self.accelerator)
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            capacity, what = gpu_capacity(res, nodes, gpus_per_worker, self.accelerator)
            dev = "cuda"
        else:
            if self.accelerator is not None:
                raise SalientError(f"accelerator {self.accelerator} needs GPU workers; this Ray cluster has "
                                   f"{n_gpus:g} GPUs" + (f" and device is {device}" if n_gpus else ""))
            self.threads = default_threads(torch.device("cpu"), threads)
            opts = {"num_cpus": self.threads, "num_gpus": 0}
            capacity = int(n_cpus // self.threads)
            dev = "cpu"
            what = f"{n_cpus:g} CPUs, {self.threads} per worker"
        if capacity < 1:
            raise SalientError(f"the Ray cluster cannot hold one worker ({what})")
        n = capacity if workers is None else int(workers)
        if not 1 <= n <= capacity:
            raise SalientError(f"workers must lie in [1, {capacity}] on this Ray cluster ({what}), got {workers}")
        # a Ray call and its reply cost the driver ~0.2-1 ms: with many workers, fewer and larger units
        self.unit_batches = int(unit_batches) if unit_batches else max(4, math.ceil(n / 8))
        self.n_workers, self.depth, self.device = n, int(depth), dev
        self._model_ref = ray.put(portable(model))
        if batch_size is None and dev == "cpu":
            batch_size = resolve_batch_size(model, torch.device("cpu"), None)
        elif batch_size is None or str(batch_size).lower() == "auto":  # once, on a worker-like slot, shared
            batch_size = ray.get(ray.remote(**opts)(_autotune).remote(self._model_ref, dev, self.threads,
                                                                       self.precision, self.kernels, self.cuda_graphs))
        self.batch_size = int(batch_size)
        if self._local and dev == "cpu":  # the actors share this machine's memory
            check_fits(model, torch.device("cpu"), self.batch_size, n)
        actor = ray.remote(RayWorker).options(**opts, max_restarts=max_restarts, max_task_retries=0)
        self.actors = [actor.remote([self._model_ref], dev, self.batch_size, self.threads, max_items, fuse, incremental,
                                    self.memory_limit, self.precision, self.kernels, self.cuda_graphs)
                       for _ in range(n)]
        try:
            ray.get([a.ping.remote() for a in self.actors], timeout=start_timeout)
        except rex.GetTimeoutError:
            raise SalientError(f"{n} Ray workers did not start within {start_timeout:g} s ({what})") from None
        except rex.RayError as e:
            raise SalientError(f"Ray workers failed to start: {error_line(getattr(e, 'cause', None) or e)}") from e
        self._up = [True] * n
        self._epoch = [0] * n
        self._dead: set[int] = set()
        self._pings: dict[Any, int] = {}
        self._inflight: dict[Any, Unit] = {}
        self._refs: dict[str, Any] = {}  # item id -> object ref of its pixels
        self._sent: dict[str, set[int]] = {}  # item id -> workers that were sent it
        self._drops: list[list[str]] = [[] for _ in range(n)]
        self.restarts = 0
        self._down_since: float | None = None

    # -- the executor contract (see executor.py)
    def ready(self) -> list[int]:
        return [w for w in range(self.n_workers) if self._up[w]]

    def submit(self, worker: int, unit: Unit) -> None:
        refs = {}
        for item_id, item in unit.items.items():
            ref = self._refs.get(item_id)
            if ref is None:
                ref = self._refs[item_id] = ray.put(item.x.detach().cpu().numpy())
            refs[item_id] = ref
            self._sent.setdefault(item_id, set()).add(worker)
        drops, self._drops[worker] = self._drops[worker], []
        unit.worker, unit.epoch = worker, self._epoch[worker]
        self._inflight[self.actors[worker].run.remote(unit.queries, refs, drops)] = unit

    def wait(self, timeout: float | None = None) -> list[Event]:
        refs = [*self._inflight, *self._pings]
        if not refs:
            self._check_alive()
            if timeout:
                time.sleep(timeout)
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and len(refs) > 1:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        events: list[Event] = []
        done = [r for r in ready if r in self._inflight]
        for ref in ready:
            if ref in self._pings:
                self._probed(ref)
        try:
            values = ray.get(done) if done else []
        except Exception:  # noqa: BLE001 - one of them failed: take them one by one
            values = None
        for i, ref in enumerate(done):
            unit = self._inflight.pop(ref)
            if values is not None:
                events.append(Done(unit, values[i]))
                continue
            try:
                events.append(Done(unit, ray.get(ref)))
            except rex.RayTaskError as e:
                cause = getattr(e, "cause", None)
                events.append(Failed(unit, cause if isinstance(cause, BaseException) else e))
            except LOST_ERRORS as e:
                self._lost(unit.worker, unit.epoch)
                events.append(Lost(unit, error_line(e)))
        self._check_alive()
        return events

    def forget(self, item_id: str) -> None:
        self._refs.pop(item_id, None)
        for w in self._sent.pop(item_id, ()):
            self._drops[w].append(item_id)

    # -- lost workers
    def _lost(self, w: int, epoch: int) -> None:
        """Worker ``w`` died: take it out of ``ready()`` and probe until it is back (restarted)."""
        if epoch != self._epoch[w] or w in self._dead:
            return  # already known: a unit submitted before the loss was noticed
        self._epoch[w] += 1
        self._up[w] = False
        self.restarts += 1
        self._drops[w] = []
        for sent in self._sent.values():
            sent.discard(w)
        self._pings[self.actors[w].ping.options(max_task_retries=-1).remote()] = w

    def _probed(self, ref: Any) -> None:
        w = self._pings.pop(ref)
        try:
            ray.get(ref)
        except rex.ActorDiedError:
            self._dead.add(w)  # out of restarts: gone for good
            return
        except LOST_ERRORS:
            self._pings[self.actors[w].ping.options(max_task_retries=-1).remote()] = w
            return
        self._up[w] = True

    def _check_alive(self) -> None:
        if any(self._up):
            self._down_since = None
            return
        if len(self._dead) == self.n_workers:
            raise SalientError(f"all {self.n_workers} Ray workers died and cannot restart")
        self._down_since = self._down_since or time.monotonic()
        if time.monotonic() - self._down_since > self.lost_timeout:
            raise SalientError(f"no Ray worker has been alive for {self.lost_timeout:g} s ({self.restarts} losses)")

    # -- the rest
    def stats(self) -> dict[str, Any]:
        alive = [w for w in range(self.n_workers) if self._up[w]]
        per = ray.get([self.actors[w].stats.remote() for w in alive]) if alive else []
        return {"executor": self.kind, "workers": self.n_workers, "batch_size": self.batch_size,
                "threads": self.threads, "device": self.device, "accelerator": self.accelerator,
                "restarts": self.restarts,
                "n_forward": sum(p["n_forward"] for p in per), "busy_seconds": sum(p["busy_seconds"] for p in per),
                "per_worker": per}

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        self._inflight, self._pings, self._refs = {}, {}, {}
        self._model_ref = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False
