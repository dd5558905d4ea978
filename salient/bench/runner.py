"""Run the suite (:mod:`salient.bench.suite`) at each worker count and return its rows and description.

Per worker count (largest first, so that a count the machine or cluster cannot hold fails before any
measurement), one Engine; per case:
- a warm-up job of one item (timed, reported as ``warmup_s``, excluded), which also sets the items per
  round: ``k = max(1, ceil(round_seconds / warm-up seconds))`` (at most 64), so a fast machine runs
  more items per round and a round is never too short to time;
- ``rounds`` engine rounds, each one explain of k items with fresh ids (no worker cache carries over
  between rounds), alternated with raw rounds of equal length (:func:`~salient.bench.protocol.alternate`,
  :func:`~salient.bench.raw.raw_round`);
- its row: the medians and spreads of the rounds, plus the driver's and the workers' time split:
  ``method_share`` from timing the method's generator (every ``send``: its own code, e.g. BOREx's GP fit
  and UCB search), ``driver_share`` from the driver thread's CPU time, ``idle_share`` from the workers'
  busy seconds, ``dispatch_per_s`` from the scheduler's units (``Engine.last_run``).
Then the raw rows (every raw round of an input shape and worker count, pooled), scaling efficiency and
the limit of every row (:mod:`salient.bench.limits`).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..data import sample_images, sample_videos
from ..engine import Engine, Task
from ..engine.engine import check_executor
from ..engine.tasks import explain_task, parse_target
from ..engine.worker import parse_precision, pick_device
from ..errors import SalientError
from ..images import Image, load_image
from ..item import Item
from ..methods import get_method
from ..models import Model, load_model
from ..models.model import resized
from .limits import add_efficiency, limit_lines, limit_of
from .machine import describe
from .protocol import Sample, alternate, ratios, spread
from .raw import raw_batch, raw_round
from .suite import PHOTOS, SUITE_VERSION, VIDEO, VIDEO_FRAMES, Case, cases

MAX_ITEMS_PER_ROUND = 64


@dataclass
class BenchConfig:
    """What ``salient bench`` runs (its options; None: the engine's default)."""

    model: str | Model = "efficientnet-lite0"
    executor: str = "local"
    address: str | None = None
    workers: tuple[int | None, ...] = (None,)
    methods: tuple[str, ...] = ("rise", "dida", "occlusion", "scorecam", "borex")
    sizes: tuple[int, ...] = ()  # () : the model's side
    precision: str = "fp32"
    kernels: str | None = None
    batch_size: int | None = None
    device: str | None = None
    rounds: int = 3
    round_seconds: float = 1.0
    huge: bool = False
    video: bool = False
    seed: int = 0
    quick: bool = False
    notes: list[str] = field(default_factory=list)  # lines said about the run (e.g. CPU autocast)


def timed(gen: Generator, clock: list[float]) -> Generator:
    """``gen`` as is, adding the seconds spent inside it (each ``send``) to ``clock[0]``."""
    value: Any = None
    try:
        while True:
            t0 = time.perf_counter()
            try:
                queries = gen.send(value)
            except StopIteration as stop:
                return stop.value
            finally:
                clock[0] += time.perf_counter() - t0
            value = yield queries
    finally:
        gen.close()


def square(image: Image, side: int) -> Image:
    """The photo at ``side`` x ``side``, resized as every model's preprocessing resizes (``models.model.resized``)."""
    return load_image(resized(image, (side, side)).permute(1, 2, 0).numpy(), name=f"{image.name}-{side}")


class Items:
    """An endless supply of items for a case: the suite's photos (or clips) in order, each round's with fresh ids."""

    def __init__(self, bases: list[Item]):
        self.bases, self.count = bases, itertools.count()

    def take(self, k: int) -> list[Item]:
        out = []
        for _ in range(k):
            i = next(self.count)
            b = self.bases[i % len(self.bases)]
            out.append(Item(f"{b.id}#{i}", b.x, b.image, dict(b.meta)))
        return out


def photo_items(eng: Engine, side: int, whole: bool) -> list[Item]:
    """The suite's photos as items: at the model's input size, or (``whole``) resized to ``side`` and taken at
    that native size (checked now: the model must accept it, the memory rule must allow it)."""
    photos = sample_images(list(PHOTOS))
    if not whole:
        return [eng.item(p, item_id=p.name) for p in photos]
    return [eng.item(square(p, side), item_id=f"{p.name}-{side}", whole=True) for p in photos]


def video_items(model: Model, n_clips: int = 8) -> list[Item]:
    """The first ``n_clips`` clips of :data:`~salient.bench.suite.VIDEO_FRAMES` frames of the sample video."""
    from ..io.video import open_video

    frames = open_video(sample_videos()[VIDEO]).frames(0)
    out = []
    for j in range(n_clips):
        clip = [f.astype(np.float32) / 255 for f in itertools.islice(frames, VIDEO_FRAMES)]
        if len(clip) < VIDEO_FRAMES:
            break
        out.append(Item(f"{VIDEO}-clip{j}", model.preprocess_clip(np.stack(clip)), None, {}))
    return out


def frames_spec(spec: str | Model) -> str:
    if not isinstance(spec, str):
        raise SalientError("--video needs the model as a spec string (it is run over frames as frames:SPEC)")
    return f"frames:{spec}{'&' if '?' in spec else '?'}frames={VIDEO_FRAMES}"


class Runner:
    """Measures one engine's cases (see the module docstring)."""

    def __init__(self, eng: Engine, config: BenchConfig, rng: random.Random, progress: Callable[[str], None]):
        self.eng, self.config, self.rng, self.progress = eng, config, rng, progress
        self.ex = eng.executor
        self.raw: dict[tuple[str, int], list[Sample]] = {}  # (input, size) -> its raw rounds

    def job(self, case: Case, items: list[Item]) -> Sample:
        """One explain of ``items`` with the case's method, timed; the sample's extras split its time."""
        eng, model = self.eng, self.eng.model
        m = get_method(case.method)
        params = m.check_params(case.params)
        target = parse_target("top1", model)
        clock = [0.0]
        tasks = [Task(it.id, it, timed(explain_task(it, model, case.method, target, self.config.seed, params), clock))
                 for it in items]
        st0 = self.ex.stats()
        th0, t0 = time.thread_time(), time.perf_counter()
        n = 0
        for task, out in eng.run(tasks):
            if isinstance(out, BaseException):
                raise SalientError(f"bench case {case.method} on {case.input} {case.size}: {out}")
            n += task.n_forward
        wall, driver = time.perf_counter() - t0, time.thread_time() - th0
        busy = self.ex.stats()["busy_seconds"] - st0["busy_seconds"]
        return Sample(n, wall, {"method_s": clock[0], "driver_s": driver, "busy_s": busy,
                                "units": eng.last_run.get("units", 0), "items": len(items)})

    def case(self, case: Case, supply: Items, shape: tuple[int, ...]) -> dict[str, Any]:
        cfg, ex = self.config, self.ex
        warm = self.job(case, supply.take(1))
        k = max(1, min(MAX_ITEMS_PER_ROUND, math.ceil(cfg.round_seconds / max(warm.seconds, 1e-6))))
        eng_rounds, raw_rounds = alternate(lambda: self.job(case, supply.take(k)),
                                           lambda s: raw_round(ex, self.eng.model, shape, s), cfg.rounds, self.rng)
        self.raw.setdefault((case.input, case.size), []).extend(raw_rounds)
        return self.row(case.input, case.size, case.method, eng_rounds, raw_rounds, warm.seconds, k, shape)

    def row(self, input: str, size: int, what: str, eng_rounds: list[Sample], raw_rounds: list[Sample],
            warmup: float, k: int, shape: tuple[int, ...]) -> dict[str, Any]:
        n_workers = self.ex.n_workers
        rate = spread([s.rate for s in eng_rounds])
        ratio = spread(ratios(eng_rounds, raw_rounds)) if what != "raw" else dict.fromkeys(("median", "min", "max"),
                                                                                             1.0)

        def share(key: str) -> float:
            if what == "raw":
                return 0.0
            return float(np.median([s.extra[key] / s.seconds for s in eng_rounds]))

        idle = 0.0 if what == "raw" else float(np.median(
            [min(1.0, max(0.0, 1 - s.extra["busy_s"] / (n_workers * s.seconds))) for s in eng_rounds]))
        row = {"input": input, "size": size, "workers": n_workers, "case": what,
               "rate": rate["median"], "rate_min": rate["min"], "rate_max": rate["max"], "rate_q1": rate["q1"],
               "rate_q3": rate["q3"], "rate_per_worker": rate["median"] / n_workers,
               "raw_rate": spread([s.rate for s in raw_rounds])["median"] if raw_rounds else rate["median"],
               "ratio": ratio["median"], "ratio_min": ratio["min"], "ratio_max": ratio["max"], "efficiency": 1.0,
               "rounds": len(eng_rounds), "items": k, "n_forward": int(np.median([s.n for s in eng_rounds])),
               "round_s": float(np.median([s.seconds for s in eng_rounds])), "warmup_s": warmup,
               "method_share": share("method_s"), "driver_share": share("driver_s"), "idle_share": idle,
               "dispatch_per_s": share("units"), "batch": raw_batch(self.ex, self.eng.model, shape), "limit": ""}
        row["limit"] = limit_of(row, self.ex.kind)
        self.progress(progress_line(row))
        return row

    def raw_rows(self, shapes: dict[tuple[str, int], tuple[int, ...]]) -> list[dict[str, Any]]:
        """One row per input shape: all its raw rounds pooled (warm-up: the first probe's warm-up batch)."""
        return [self.row(inp, size, "raw", rounds, [], rounds[0].extra["warmup_s"], 0, shapes[(inp, size)])
                for (inp, size), rounds in self.raw.items() if rounds]


def progress_line(r: dict[str, Any]) -> str:
    what = f"{r['workers']} worker{'s' * (r['workers'] != 1)}, {r['input']} {r['size']}, {r['case']}"
    ratio = f", ratio {r['ratio']:.2f}" if r["case"] != "raw" else ""
    return (f"salient bench: {what}: {r['rate']:.1f} forward/s ({r['rate_min']:.1f}-{r['rate_max']:.1f}){ratio}, "
            f"limit {r['limit']}")


def check_config(config: BenchConfig, model: Model) -> None:
    """Everything that can be refused before any work: the model kind, the precision, the sizes, the local
    executor's worker counts (a Ray cluster's capacity is checked as each engine starts, largest first)."""
    if model.frames:
        raise SalientError(f"model {model.name} is a video net; salient bench measures image models (--video runs "
                           "one over the frames of a sample video)")
    config.precision = parse_precision(config.precision)
    if config.rounds < 1:
        raise SalientError(f"--rounds must be >= 1, got {config.rounds}")
    if config.executor == "local":
        counts = [n for n in config.workers if n is not None] or [None]
        check_executor("local", model, **engine_opts(config, max(counts, key=lambda n: n or 0)))
    if config.video:
        frames_spec(config.model)


def engine_opts(config: BenchConfig, workers: int | None) -> dict[str, Any]:
    opts = {"workers": workers, "batch_size": config.batch_size, "precision": config.precision,
            "kernels": config.kernels, "device": config.device}
    if config.executor == "ray":
        opts["address"] = config.address
    return {k: v for k, v in opts.items() if v is not None}


def cpu_precision_note(config: BenchConfig) -> str | None:
    """The line said when a lower precision runs on CPU workers (torch's CPU autocast), else None."""
    if config.precision == "fp32":
        return None
    if config.executor == "ray":
        import ray

        on_cpu = float(ray.cluster_resources().get("GPU", 0)) == 0 or config.device == "cpu"
    else:
        on_cpu = pick_device(config.device).type == "cpu"
    if not on_cpu:
        return None
    return (f"{config.precision} on CPU workers: torch's CPU autocast (no GPU here); the fused and incremental "
            "CPU fast paths are fp32 only, so they are off: expect it slower than fp32 unless the CPU has "
            f"native {config.precision} units")


@dataclass
class _Ray:
    """Ray started (or joined) once for the whole suite, so the engines share it; shut down at the end."""

    address: str | None
    started: bool = False

    def __enter__(self) -> _Ray:
        import ray

        from ..engine.ray_executor import join_ray, start_local_ray

        if not ray.is_initialized():
            self.started = True
            join_ray(self.address) if self.address else start_local_ray()
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], list]:
    """Run the suite; returns (the run's description for results.json, the rows)."""
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    model = load_model(config.model)
    check_config(config, model)
    side = int(model.input_size[0]) if model.input_size[0] == model.input_size[1] else 0
    sizes = config.sizes or (side,)
    if any(s != side for s in sizes) and not side:
        raise SalientError(f"--size needs a model with a square input; {model.name} takes {model.input_size}")
    todo = cases(config.methods, tuple(sizes), side, config.huge, config.video)
    rng = random.Random(config.seed)
    rows: list[dict[str, Any]] = []
    engines: dict[str, Any] = {}
    counts = sorted(config.workers, key=lambda n: -(n or 0))  # largest first: capacity errors before any work
    ray_ctx = _Ray(config.address) if config.executor == "ray" else None
    t_start = time.perf_counter()
    try:
        if ray_ctx is not None:
            ray_ctx.__enter__()
        note = cpu_precision_note(config)
        if note:
            config.notes.append(note)
            progress(f"salient bench: {note}")
        for n in counts:
            rows += run_count(config, model, todo, n, rng, progress, engines)
    finally:
        if ray_ctx is not None:
            ray_ctx.__exit__()
    add_efficiency(rows)
    rows.sort(key=lambda r: (r["workers"], r["input"] != "photo", r["input"], r["size"], r["case"] != "raw"))
    meta = {"suite_version": SUITE_VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - t_start, "command": list(sys.argv),
            "settings": settings(config, model, sizes), "machine": describe(), "engines": engines,
            "limits": limit_lines(rows), "notes": list(config.notes)}
    return meta, rows


def settings(config: BenchConfig, model: Model, sizes: tuple[int, ...]) -> dict[str, Any]:
    return {"model": config.model if isinstance(config.model, str) else model.name, "executor": config.executor,
            "address": config.address, "workers": [n for n in config.workers if n is not None],
            "methods": list(config.methods), "sizes": list(sizes), "precision": config.precision,
            "kernels": config.kernels or "auto", "batch_size": config.batch_size, "device": config.device,
            "rounds": config.rounds, "round_seconds": config.round_seconds, "huge": config.huge,
            "video": config.video, "seed": config.seed, "quick": config.quick}


def run_count(config: BenchConfig, model: Model, todo: list[Case], n: int | None, rng: random.Random,
              progress: Callable[[str], None], engines: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case at ``n`` workers (None: the executor's default): the image cases on one engine, the video
    cases on a second one over ``frames:<model>``."""
    rows: list[dict[str, Any]] = []
    image_cases = [c for c in todo if c.input != "video"]
    video_cases = [c for c in todo if c.input == "video"]
    for kind, subset, mdl in (("image", image_cases, model), ("video", video_cases, None)):
        if not subset:
            continue
        if mdl is None:
            mdl = load_model(frames_spec(config.model))
        with Engine(mdl, executor=config.executor, **engine_opts(config, n)) as eng:
            runner = Runner(eng, config, rng, progress)
            shapes: dict[tuple[str, int], tuple[int, ...]] = {}
            supplies: dict[tuple[str, int], Items] = {}
            for c in subset:  # every item first: a size the model rejects fails before any measurement
                key = (c.input, c.size)
                if key not in supplies:
                    bases = video_items(mdl) if kind == "video" else photo_items(eng, c.size, c.whole)
                    supplies[key], shapes[key] = Items(bases), tuple(bases[0].x.shape)
            for c in subset:
                rows.append(runner.case(c, supplies[(c.input, c.size)], shapes[(c.input, c.size)]))
            rows += runner.raw_rows(shapes)
            st = eng.executor.stats()
            per = (st.get("per_worker") or [{}])[0]
            engines[f"{kind}@{st['workers']}"] = {
                "workers": st["workers"], "batch_size": st.get("batch_size"), "threads": st.get("threads"),
                "device": per.get("device", st.get("device")), "kernels": per.get("kernels"),
                "precision": per.get("precision", config.precision), "model": mdl.name}
    return rows

