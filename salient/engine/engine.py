"""The Engine: the only caller of the model. It turns images into items, drives method
generators through the scheduler on an executor, and returns Saliency results."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SalientError
from ..images import Image, load_image
from ..item import Item
from ..kernels import check_fill, parse_kernels
from ..methods import get_method
from ..methods.drive import lockstep
from ..methods.metric import NOTE_COLUMN, get_metric, metric_note
from ..models import Model, load_model
from ..saliency import Saliency
from .memory import parse_bytes
from .scheduler import Scheduler, Task
from .tasks import explain_task, parse_target, raising
from .whole import read_whole, whole_input
from .worker import parse_precision

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Summary:
    """What an engine did; ``str()`` is the one-line summary a command prints at the end."""

    executor: str
    workers: int
    batch_size: int
    items: int
    failed: int
    n_forward: int
    seconds: float

    @property
    def forward_per_s(self) -> float:
        return self.n_forward / self.seconds if self.seconds > 0 else 0.0

    @property
    def forward_per_s_per_worker(self) -> float:
        return self.forward_per_s / max(1, self.workers)

    def __str__(self) -> str:
        return (f"{self.items} items ({self.failed} failed), {self.n_forward} forward passes, {self.seconds:.1f} s, "
                f"{self.forward_per_s_per_worker:.1f} forward/s per worker ({self.workers} {self.executor} "
                f"worker{'s' * (self.workers != 1)}, batch {self.batch_size})")


def make_executor(kind: str, model: Model, **opts: Any):
    if kind == "local":
        from .local import LocalExecutor

        return LocalExecutor(model, **opts)
    if kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(model, **opts)
    raise SalientError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")


def check_executor(kind: str, model: Model, **opts: Any) -> None:
    """What ``make_executor`` would refuse before it allocates (local: device, workers, precision, kernels,
    memory; Ray: precision, the kernels' name, ``gpus_per_worker``), checked without starting anything, so that a
    job fails before it writes; a Ray cluster is checked as it is joined (GPUs, accelerator types, CuPy per node)."""
    parse_precision(opts.get("precision"))
    if kind == "ray":
        from .ray_placement import check_ray_options

        parse_kernels(opts.get("kernels"))  # the name; whether CuPy is usable is each worker's node's matter
        check_ray_options(**opts)
    if kind == "local":
        from .local import check_local

        check_local(model, **opts)


def item_id_for(image: Image, index: int) -> str:
    """A stable id: the source path if there is one, else the name and a content hash."""
    if image.source and image.source not in ("array", "tensor"):
        return image.source
    digest = hashlib.sha1(np.ascontiguousarray(image.pixels).tobytes()).hexdigest()[:10]
    return f"{image.name}-{digest}" if image.name else f"item{index}-{digest}"


def scored_task(item: Item, model: Model, method: str, target, seed: int, params: dict, metrics: Sequence[str],
                metric_opts: dict):
    """Generator: explain, then every requested metric (registered names) of every map, in one round.
    Metrics also get the option ``mask``: the item's object mask (``item.meta["object_mask"]``, or None);
    the reasons of undefined values go to ``s.metrics[NOTE_COLUMN]``."""
    results = yield from explain_task(item, model, method, target, seed, params)
    if metrics:
        opts = {**metric_opts, "mask": item.meta.get("object_mask")}
        pairs = [(s, get_metric(k)) for s in results for k in metrics]
        values = yield from lockstep([m.run(item.id, item.size, s.map, s.target, opts) for s, m in pairs])
        for (s, m), v in zip(pairs, values, strict=True):
            s.metrics[m.column] = v
        for s in results:
            s.metrics[NOTE_COLUMN] = metric_note(s.metrics)
    return results


class Engine:
    """``with Engine(model, executor="local"|"ray", ...) as eng: eng.explain(img, method="rise")``.

    Executor options: ``workers``, ``batch_size``, ``threads``, ``device``, ``depth`` (units in flight
    per worker), ``unit_batches``, ``fuse`` and ``incremental`` (CPU: masked forwards through a fused
    copy of the model, occlusion recomputing only what a box changes; both default True; see
    :class:`~salient.engine.worker.Worker`), ``memory_limit`` (per worker, bytes or "8GB": the batch of
    an input at another size than the model's is lowered to fit it, :mod:`salient.engine.memory`),
    ``precision`` (fp32 | bf16 | fp16: autocast of the masked forwards), ``kernels`` (auto | torch | cupy: the
    mask kernels, :func:`~salient.kernels.backend.kernels_for`), ``cuda_graphs`` (CUDA); for Ray also
    ``address`` (None: start or reuse a local Ray; "auto" or host:port: join a cluster), ``gpus_per_worker``
    and ``accelerator`` (a GPU type such as H100). See LocalExecutor and RayExecutor.
    """

    def __init__(self, model: str | Model | Any = "efficientnet-lite0", executor: str = "local",
                 max_live: int | None = None, **executor_opts: Any):
        self.model = load_model(model)
        if executor_opts.get("memory_limit") is not None:
            executor_opts["memory_limit"] = parse_bytes(executor_opts["memory_limit"])
        self.executor = make_executor(executor, self.model, **executor_opts)
        self.max_live = max_live
        self.n_forward = 0
        self.n_items = 0
        self.n_failed = 0
        self.seconds = 0.0
        self.last_run: dict[str, Any] = {}  # the scheduler's stats of the latest run

    # -- context management
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.executor.close()

    # -- items and tasks
    def item(self, image: Any, item_id: str | None = None, index: int = 0, whole: bool = False,
             level: int | None = None) -> Item:
        """An Item (id, preprocessed input) from anything ``load_image`` accepts; Items pass through.
        ``whole``: at the image's native size (or a slide's pyramid level ``level``), checked before any
        work (:mod:`salient.engine.whole`)."""
        if isinstance(image, Item):
            return image
        if level is not None and not whole:
            raise SalientError("level reads a pyramid level of a slide: it needs whole=True (or tile mode)")
        if whole:
            img = read_whole(image, level)
            return Item(item_id or item_id_for(img, index), whole_input(self.model, self.executor, img), img,
                        {"whole": True})
        if self.model.frames:
            raise SalientError(f"model {self.model.name} is a video net (clips of {self.model.frames} frames); "
                               "it cannot explain a still image: give it an Item holding a clip (C, T, H, W)")
        img = load_image(image)
        return Item(item_id or item_id_for(img, index), self.model.preprocess(img), img)

    def run(self, tasks: Iterable[Task], on_progress=None, max_live: int | None = None) -> Iterator[tuple[Task, Any]]:
        """Drive tasks; yields (task, result or exception) as each completes. ``max_live``: tasks alive at
        once (default the engine's; a driver of large items, e.g. clips, asks for fewer)."""
        sched = Scheduler(self.executor, max_live or self.max_live, on_progress)
        t0 = time.perf_counter()
        try:
            for task, out in sched.run(tasks):
                self.n_forward += task.n_forward
                self.n_items += 1
                self.n_failed += isinstance(out, BaseException)
                yield task, out
        finally:
            self.seconds += time.perf_counter() - t0
            self.last_run = sched.stats

    def summary(self) -> Summary:
        """Totals over every run so far: items, forward passes, seconds, forward passes/s per worker."""
        return Summary(self.executor.kind, self.executor.n_workers, self.executor.batch_size, self.n_items,
                       self.n_failed, self.n_forward, self.seconds)

    def explain_many(self, images: Iterable[Any], method: str = "rise", target: int | str = "top1", seed: int = 0,
                     metrics: Sequence[str] = (), step: int | None = None, substrate: Any = None,
                     on_progress=None, whole: bool = False, level: int | None = None,
                     **params: Any) -> Iterator[tuple[Any, list[Saliency] | Exception]]:
        """Explain every image; yields (key, results or exception) in completion order. ``images`` may
        hold (key, image) pairs or images (the key is then the position). Parameters are checked
        before any work. ``whole``, ``level``: see :meth:`item`."""
        m = get_method(method)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SalientError(f"seed must be an integer >= 0, got {seed!r}")
        checked = m.check_params(params)
        m.check_model(checked, self.model, sized=not whole)  # whole mode: each item's size, when it runs
        tgt = parse_target(target, self.model)
        for k in metrics:
            get_metric(k)  # a one-line error for an unknown name
        if substrate is not None:
            check_fill(substrate, "substrate")
        metric_opts = {"step": step, "substrate": substrate}

        def tasks():
            for i, entry in enumerate(images):
                key, image = entry if isinstance(entry, tuple) else (i, entry)
                try:
                    item = self.item(image, index=i, whole=whole, level=level)
                except Exception as e:  # noqa: BLE001 - reported per item
                    yield Task(key, None, raising(e))
                    continue
                yield Task(key, item, scored_task(item, self.model, method, tgt, seed, checked, metrics, metric_opts))

        for task, out in self.run(tasks(), on_progress):
            if isinstance(out, list):
                for s in out:
                    s.n_forward = task.n_forward
            yield task.key, out

    def explain(self, image: Any, method: str = "rise", target: int | str = "top1", seed: int = 0,
                whole: bool = False, level: int | None = None, **params: Any) -> Saliency | list[Saliency]:
        """One image: a Saliency for a single target, a list for topK with K > 1. Errors raise.
        ``whole``: at the image's native size (a slide: its pyramid level ``level``); see :meth:`item`."""
        ((_, out),) = list(self.explain_many([image], method, target, seed, whole=whole, level=level, **params))
        if isinstance(out, Exception):
            raise out
        return out[0] if len(out) == 1 else out


def engine_for(model: Model) -> Engine:
    """The default local engine of a model (created once, cached on the model)."""
    eng = getattr(model, "_engine", None)
    if eng is None:
        eng = Engine(model)
        object.__setattr__(model, "_engine", eng)
    return eng


def explain(model: Model | str, image: Any, method: str = "rise", target: int | str = "top1", seed: int = 0,
            whole: bool = False, level: int | None = None, **params: Any) -> Saliency | list[Saliency]:
    """Explain one image with the model's default local engine (see :meth:`Engine.explain`); ``whole=True``
    at its native size (a slide: its pyramid level ``level``)."""
    return engine_for(load_model(model)).explain(image, method, target, seed, whole=whole, level=level, **params)
