"""Throughput of salient on this machine (issue 2, "Speed"): prints one table.

Sections (each a small function that prints rows; add more with ``@section``):
- ``raw``: the model's raw forward rate (images/s) per batch size, in one stream with all intra-op
  threads and in the engine's CPU layout (one stream per core, 1 thread each), for the module as
  given and (CPU) for the fused module the engine's workers run (``salient.engine.fuse``); the best
  row of all (the 3 fastest measured again, alternating) is "raw", so the engine's ratio measures its
  overhead, not the fusion's gain.
- ``build``: what the worker does besides the forward, per input: building masked inputs (RISE
  masks, DiDA/occlusion boxes) and RISE's on-device reduction, next to the forward's own cost.
- ``engine``: masked forward passes/s of RISE, DiDA and occlusion through ``salient.Engine`` and their
  ratio to raw (goal >= 0.95), each job paired with a raw run of the same duration in random order,
  pooled over ``--rounds`` rounds; padding = forward rows that carried no query.
- ``captum``: occlusion (window 32, stride 16) by Captum's ``Occlusion`` (default
  ``perturbations_per_eval=1``) vs ours on the same image and target (goal: ours >= 3x faster), in
  alternating rounds; a second Captum row runs it on our fused module, to show what the fusion alone gives.
- ``cam``: Grad-CAM, Grad-CAM++ and Score-CAM (1280 channels of the head) ours vs pytorch-grad-cam on
  the same photo, class and layer (goal: Score-CAM >= 3x faster); rows come from ``cam_speed.py``.
- ``ray``: the same jobs through RayExecutor (one actor per core) vs the raw forward rate of the
  same layout on the same cores (goal >= 0.9).

Run on a quiet machine; timings taken while other jobs run are not results.

    python benchmarks/throughput.py                 # full run (several minutes on a 2-core CPU)
    python benchmarks/throughput.py --quick         # smoke run (well under a minute)
    python benchmarks/throughput.py --only raw,captum --batch-size 16
"""

from __future__ import annotations

import argparse
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import salient
from salient.bench.protocol import Sample, alternate
from salient.engine.fuse import fuse_for_cpu
from salient.engine.local import cpu_count
from salient.engine.worker import CPU_BATCH_SIZE, pick_device
from salient.kernels import grid_cells, sliding_windows
from salient.queries import BoxQuery, ItemContext, RiseQuery

RATIO_GOAL, CAPTUM_GOAL = 0.95, 3.0


@dataclass
class Bench:
    """What every section shares; ``raw`` (best raw images/s) is set by the ``raw`` section."""

    model: salient.Model
    image: salient.Image
    quick: bool
    device: torch.device
    engine_opts: dict[str, Any]
    raw: float = 0.0
    raw_batch: int = 0
    # every raw row: (images/s, batch, streams, threads, module, label), the fastest first
    raw_rows: list[tuple[float, int, int, int | None, torch.nn.Module, str]] = field(default_factory=list)
    fused: torch.nn.Module | None = None  # the model as the engine's CPU workers run it (None: not fused)
    notes: list[str] = field(default_factory=list)
    rounds: int = 3  # engine rounds per method (each paired with a raw run; the row pools them)
    methods: tuple[str, ...] = ()  # the engine section's methods (empty: all)


SECTIONS: dict[str, Callable[[Bench], None]] = {}


def section(name: str) -> Callable:
    def deco(fn: Callable[[Bench], None]) -> Callable[[Bench], None]:
        SECTIONS[name] = fn
        return fn

    return deco


HEADER = f"{'section':<8} {'what':<40} {'n':>6} {'seconds':>8} {'per s':>8} {'ratio':>7}  note"


def row(sec: str, what: str, n: int | str = "", seconds: float | None = None, rate: float | None = None,
        ratio: float | None = None, note: str = "") -> None:
    """One table row: ``rate`` defaults to n / seconds."""
    if rate is None and seconds and isinstance(n, int):
        rate = n / seconds
    sec_s = f"{seconds:8.2f}" if seconds is not None else " " * 8
    rate_s = f"{rate:8.1f}" if rate is not None else " " * 8
    ratio_s = f"{ratio:7.2f}" if ratio is not None else " " * 7
    print(f"{sec:<8} {what:<40} {n!s:>6} {sec_s} {rate_s} {ratio_s}  {note}".rstrip(), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- raw forward


def _batch(model: salient.Model, b: int, device: torch.device) -> torch.Tensor:
    x = torch.randn(b, *model.input_shape, device=device)
    return x.contiguous(memory_format=model.memory_format) if x.ndim == 4 else x


def raw_rate(model: salient.Model, b: int, device: torch.device, seconds: float, streams: int = 1,
             threads: int | None = None, module: torch.nn.Module | None = None) -> tuple[int, float]:
    """Images and seconds of ``streams`` threads each running full batches of ``b`` for ~``seconds``
    (after one warm-up batch), each with ``threads`` intra-op threads (None: torch's default), through
    ``module`` (default: the model's own)."""
    if module is None:
        module = model.module.to(device).eval().to(memory_format=model.memory_format)
    default = torch.get_num_threads()
    counts = [0] * streams
    start = threading.Barrier(streams + 1)
    stop_at = [0.0]

    def stream(k: int) -> None:
        torch.set_num_threads(threads or default)
        x = _batch(model, b, device)
        with torch.inference_mode():
            module(x)
            sync(device)
            start.wait()
            while time.perf_counter() < stop_at[0]:
                module(x)
                sync(device)
                counts[k] += b

    pool = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for t in pool:
        t.start()
    stop_at[0] = time.perf_counter() + 3600
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(default)
    return sum(counts), elapsed


@section("raw")
def raw_section(bench: Bench) -> None:
    dev = bench.device
    sizes = (1, 8, 16) if bench.quick else (1, 2, 4, 8, 16, 32, 64)
    secs = 1.0 if bench.quick else 4.0
    layouts = [("1 stream", 1, None)]
    cores = cpu_count()
    if dev.type == "cpu" and cores > 1:
        layouts.append((f"{cores} streams x 1 thread", cores, 1))
    modules = [("", bench.model.module.to(dev).eval().to(memory_format=bench.model.memory_format))]
    if bench.fused is not None:
        modules.append(("fused, ", bench.fused))
    best = (0.0, 0, "")
    for kind, module in modules:
        for name, streams, threads in layouts:
            for b in sizes:
                n, s = raw_rate(bench.model, b, dev, secs, streams, threads, module)
                rate = n / s
                row("raw", f"{kind}batch {b}, {name}", n, s, rate)
                bench.raw_rows.append((rate, b, streams, threads, module, f"{kind}batch {b}, {name}"))
                if rate > best[0]:
                    best = (rate, b, f"{kind}batch {b}, {name}")
    bench.raw_rows.sort(key=lambda r: -r[0])
    if not bench.quick:  # rows a few percent apart swap places from minute to minute: confirm the best
        top = bench.raw_rows[:3]
        n_s = [[0, 0.0] for _ in top]
        for _ in range(3):
            for k, (_, b, streams, threads, module, _) in enumerate(top):
                n, s = raw_rate(bench.model, b, dev, 2.0, streams, threads, module)
                n_s[k][0] += n
                n_s[k][1] += s
        rates = [n / s for n, s in n_s]
        k = max(range(len(top)), key=rates.__getitem__)
        bench.raw_rows.insert(0, bench.raw_rows.pop(k))
        best = (rates[k], top[k][1], top[k][5])
        row("raw", "best of the 3 fastest, measured again", sum(n for n, _ in n_s), sum(s for _, s in n_s),
            rate=rates[k], note="3 x 2 s each, alternating: "
            + ", ".join(f"{r[5]} {v:.1f}" for r, v in zip(top, rates, strict=True)))
    bench.raw, bench.raw_batch = best[0], best[1]
    row("raw", "best raw forward", "", None, best[0], note=best[2])


# ---------------------------------------------------------------- worker-side costs


def _time(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


@section("build")
def build_section(bench: Bench) -> None:
    """Per-input costs inside a worker at the engine's batch size: masked-input building and reduction,
    against the forward of the same batch (1 intra-op thread on CPU, as the engine's workers)."""
    dev, model = bench.device, bench.model
    b = int(bench.engine_opts.get("batch_size") or (CPU_BATCH_SIZE if dev.type == "cpu" else 8))
    x = model.preprocess(bench.image).to(dev)
    ctx = ItemContext("bench", x, model.black(dev))
    size = ctx.size
    buf = _batch(model, b, dev)
    repeat = 3 if bench.quick else 10
    default = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        module = bench.fused or model.module.to(dev).eval().to(memory_format=model.memory_format)
        with torch.inference_mode():
            fwd = _time(lambda: module(buf), dev, repeat) / b
        row("build", f"forward (batch {b})", b, fwd * b, note=f"{1e3 * fwd:.2f} ms per input")
        rq = RiseQuery("bench", (0,), seed=0, draw=0, n=128)  # a draw of the default size
        dida = BoxQuery("bench", (0,), boxes=tuple(map(tuple, grid_cells(size, 21).tolist())), fill="black")
        occ = BoxQuery("bench", (0,), boxes=tuple(map(tuple, sliding_windows(size, (32, 32), (16, 16)).tolist())))
        with torch.inference_mode():
            for name, q in (("rise masks", rq), ("dida boxes (21x21 grid)", dida), ("occlusion windows 32/16", occ)):
                t = _time(lambda q=q: q.build(ctx, 0, b, buf), dev, repeat) / b
                row("build", f"build {name}", b, t * b, ratio=t / fwd, note=f"{1e3 * t:.3f} ms per input")
            scores = [torch.rand(rq.n, 1000, device=dev)]
            t = _time(lambda: rq.finish([s[:, :1] for s in scores], ctx), dev, 1 if bench.quick else 3) / rq.n
            row("build", f"rise reduce (finish), {rq.n} masks", rq.n, t * rq.n, ratio=t / fwd,
                note=f"{1e3 * t:.3f} ms per input")
    finally:
        torch.set_num_threads(default)


# ---------------------------------------------------------------- the engine


def engine_jobs(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    if quick:
        return [("rise", {"n_masks": 256}), ("dida", {"grids": (5, 7), "weights": (0.5, 0.5)}),
                ("occlusion", {"window": 64, "stride": 32})]
    return [("rise", {}), ("dida", {}), ("occlusion", {"window": 32, "stride": 16})]  # defaults: 4000 masks


def time_forwards(executor: Any) -> list[float]:
    """Wrap each local worker's ``forward_logits`` and ``forward_local`` (incremental occlusion) to add
    their seconds to a shared counter (profiling from outside the engine: forward time vs the rest of
    a worker's busy time vs idle)."""
    spent = [0.0]
    for w in getattr(executor, "workers", []):
        for name in ("forward_logits", "forward_local"):
            inner = getattr(w, name)

            def timed(x: torch.Tensor, *rest: Any, inner=inner) -> torch.Tensor:
                t0 = time.perf_counter()
                out = inner(x, *rest)
                sync(x.device)
                spent[0] += time.perf_counter() - t0
                return out

            setattr(w, name, timed)
    return spent


def raw_for(bench: Bench, seconds: float) -> tuple[int, float]:
    """Images and seconds of the best raw row (its batch and layout) run again now for ``seconds``."""
    _, b, streams, threads, module, _ = bench.raw_rows[0]
    return raw_rate(bench.model, b, bench.device, seconds, streams, threads, module)


@section("engine")
def engine_section(bench: Bench) -> None:
    """Masked forward passes/s per method and their ratio to the best raw forward rate (goal >= 0.95).

    This VM's forward rate changes from one few-second stretch to the next, on each core on its own
    (2 s rates of one core: coefficient of variation ~12%), and short raw probes around a long job
    compare different stretches. So each of ``--rounds`` rounds runs one engine
    job and one raw run of the same duration (the best raw row's layout), in a seeded random order
    (round 1: the job first, to learn its duration); the ratio is that of the pooled rates (all forward
    passes over all seconds, each side), and the note lists the rounds' own ratios.
    The note also splits the workers' wall time into forward, other work (building inputs, reducing) and
    idle (waiting for the scheduler), plus padded rows. DiDA and occlusion run again with
    ``incremental=False``: every pass a whole forward, so their ratio is the engine's overhead alone."""
    rounds = 1 if bench.quick else bench.rounds
    rng = random.Random(0)
    jobs = [j for j in engine_jobs(bench.quick) if not bench.methods or j[0] in bench.methods]
    variants = [({}, "", jobs)]
    whole = [j for j in jobs if j[0] != "rise"]
    if bench.fused is not None and whole:
        variants.append(({"incremental": False}, ", whole forwards", whole))
    for extra, label, todo in variants:
        with salient.Engine(bench.model, **{**bench.engine_opts, **extra}) as eng:
            eng.explain(bench.image, "occlusion", window=112, stride=112)  # warm-up: threads, buffers, item
            ex = eng.executor
            fwd = time_forwards(ex)
            for method, params in todo:
                split = [0.0, 0.0, 0.0, 0, 0]  # forward s, busy s, worker wall s, rows, passes
                last: list = []

                def engine_round(method=method, params=params, split=split, last=last, eng=eng, ex=ex,
                                 fwd=fwd) -> Sample:
                    st0, f0 = ex.stats(), fwd[0]
                    t0 = time.perf_counter()
                    s = eng.explain(bench.image, method, seed=0, **params)
                    seconds = time.perf_counter() - t0
                    st = ex.stats()
                    for k, v in enumerate((fwd[0] - f0, st["busy_seconds"] - st0["busy_seconds"],
                                           seconds * st["workers"], st["n_forward"] - st0["n_forward"], s.n_forward)):
                        split[k] += v
                    last[:] = [s]
                    return Sample(s.n_forward, seconds)

                raw_round = (lambda secs: Sample(*raw_for(bench, secs))) if bench.raw else None
                runs, raws = ([(x.n, x.seconds) for x in side]
                              for side in alternate(engine_round, raw_round, rounds, rng))  # salient.bench.protocol
                s = last[0]
                n_e, t_e = map(sum, zip(*runs, strict=True))
                rate = n_e / t_e
                f, busy, wall, rows, passes = split
                note = (f"padding {100 * (1 - passes / rows):.1f}%"
                        + (f", fwd {100 * f / wall:.1f}% other {100 * (busy - f) / wall:.1f}% "
                           f"idle {100 * (1 - busy / wall):.1f}%" if getattr(ex, "workers", None) else ""))
                ratio = None
                if raws:
                    n_r, t_r = map(sum, zip(*raws, strict=True))
                    ratio = rate / (n_r / t_r)
                    each = " ".join(f"{(a / b) / (c / d):.2f}" for (a, b), (c, d) in zip(runs, raws, strict=True))
                    note = f"rounds {each}; raw {n_r / t_r:.1f}/s over {t_r:.0f} s, {note}"
                row("engine", f"{method} {_short(params)}{label}", s.n_forward, t_e / rounds, rate, ratio, note=note)
            st = ex.stats()
    row("engine", "layout", note=f"{st.get('workers')} workers x {st.get('threads')} threads, "
                                 f"batch {st.get('batch_size')}; ratio goal >= {RATIO_GOAL}; "
                                 f"{rounds} round{'s' * (rounds != 1)} per row, pooled")


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if not isinstance(v, tuple) else ','.join(map(str, v))}" for k, v in params.items())


# ---------------------------------------------------------------- Captum


@section("captum")
def captum_section(bench: Bench) -> None:
    """Captum's ``Occlusion`` (its defaults: one perturbation per forward, torch's threads) against ours
    on the same image, target, window and stride, in ``--rounds`` rounds alternating the two (this VM's
    speed drifts from minute to minute); the rows give the round with the median speed-up."""
    from captum.attr import Occlusion

    window, stride = (64, 64) if bench.quick else (32, 32), (64, 64) if bench.quick else (16, 16)
    model, dev = bench.model, bench.device
    x = model.preprocess(bench.image).to(dev)[None]
    module = model.module.to(dev).eval()
    with torch.inference_mode():
        target = int(module(x).argmax())

    def captum(net: torch.nn.Module) -> tuple[torch.Tensor, float]:
        occ = Occlusion(lambda t: net(t).softmax(-1))
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = occ.attribute(x, sliding_window_shapes=(x.shape[1], *window), strides=(x.shape[1], *stride),
                                baselines=0.0, target=target, perturbations_per_eval=1)
        sync(dev)
        return ref, time.perf_counter() - t0

    runs = []  # (speed-up, captum seconds, captum-on-fused seconds, our seconds)
    with salient.Engine(model, **bench.engine_opts) as eng:
        eng.explain(bench.image, "occlusion", window=112, stride=112)  # warm-up
        for _ in range(1 if bench.quick else bench.rounds):
            ref, t_captum = captum(module)
            ref_f, t_f = captum(bench.fused) if bench.fused is not None else (None, None)
            t0 = time.perf_counter()
            ours = eng.explain(bench.image, "occlusion", target=target, window=window, stride=stride)
            t_ours = time.perf_counter() - t0
            runs.append((t_captum / t_ours, t_captum, t_f, t_ours))
    runs.sort(key=lambda r: r[0])
    speedup, t_captum, t_f, t_ours = runs[len(runs) // 2]
    n = 1 + math.prod(math.ceil((s - w) / st) + 1 for s, w, st in zip(model.input_size, window, stride, strict=True))
    diff = float(np.abs(ref[0, 0].cpu().numpy() - ours.map).max())
    what = f"occlusion window {window[0]} stride {stride[0]}"
    row("captum", f"captum {what}", n, t_captum, note="perturbations_per_eval=1, the model as given")
    if ref_f is not None:
        diff_f = float(np.abs(ref_f[0, 0].cpu().numpy() - ref[0, 0].cpu().numpy()).max())
        row("captum", f"captum {what}, fused module", n, t_f, ratio=t_captum / t_f,
            note=f"Captum's speed-up from our fusion alone; max |diff| {diff_f:.1e}")
    row("captum", f"ours {what}", ours.n_forward, t_ours, ratio=speedup,
        note=f"speed-up over Captum (goal >= {CAPTUM_GOAL}); rounds {' '.join(f'{r[0]:.2f}' for r in runs)}; "
             f"max |diff| {diff:.1e}")


# ---------------------------------------------------------------- CAM family (issue 3)


@section("cam")
def cam_section(bench: Bench) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from cam_speed import cam_section as cam_rows

    layer = "_blocks.4" if bench.quick else "_swish@1"  # the default layer: the head's ReLU6
    for r in cam_rows(bench.model, bench.image, "_bn1", layer, repeats=2 if bench.quick else 3,
                      batch_size=bench.engine_opts.get("batch_size")):
        note = f"max |diff| vs pytorch-grad-cam {r['diff']:.1e}" if "diff" in r else ""
        if "speedup" in r:
            note = f"ours {r['speedup']:.2f}x faster (Score-CAM goal >= 3)"
        row("cam", r["what"], r["passes"], r["seconds"], r["rate"], r.get("speedup"), note)


# ---------------------------------------------------------------- Ray (issue 5)


@section("ray")
def ray_section(bench: Bench) -> None:
    """Forward passes/s through RayExecutor (one actor per core on CPU, 1 intra-op thread each, the
    engine's batch size) against the raw forward rate of the same layout on the same cores, measured
    here with Ray started and idle (goal >= 0.9). Starts a local Ray unless one is running."""
    import ray

    from salient.engine.ray_executor import start_local_ray
    from salient.engine.worker import CPU_BATCH_SIZE

    dev, model = bench.device, bench.model
    cpu = dev.type == "cpu"
    workers = int(bench.engine_opts.get("workers") or (cpu_count() if cpu else 1))
    b = int(bench.engine_opts.get("batch_size") or CPU_BATCH_SIZE)
    started = not ray.is_initialized()
    start_local_ray(num_cpus=max(workers, cpu_count()))
    try:
        t0 = time.perf_counter()
        opts = {k: v for k, v in bench.engine_opts.items() if k not in ("workers", "batch_size")}
        with salient.Engine(model, executor="ray", workers=workers, batch_size=b, **opts) as eng:
            row("ray", "start actors", workers, time.perf_counter() - t0, note="model shipped once (ray.put)")
            n, secs = raw_rate(model, b, dev, 1.0 if bench.quick else 4.0, streams=workers if cpu else 1,
                               threads=1 if cpu else None, module=bench.fused)
            raw = n / secs
            row("ray", f"raw forward batch {b}, {workers} x 1 thread", n, secs, raw, note="same cores, Ray idle")
            eng.explain(bench.image, "occlusion", window=112, stride=112)  # warm-up: buffers, the item
            for method, params in engine_jobs(bench.quick):
                t0 = time.perf_counter()
                s = eng.explain(bench.image, method, seed=0, **params)
                elapsed = time.perf_counter() - t0
                rate = s.n_forward / elapsed
                row("ray", f"{method} {_short(params)}", s.n_forward, elapsed, rate, rate / raw,
                    note=f"{rate / workers:.1f}/s per worker, goal >= 0.9")
            row("ray", "layout", note=f"{workers} Ray workers, batch {eng.executor.batch_size}, "
                                      f"{eng.executor.threads} threads each")
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--image", default="chelsea", help="a sample photo name or an image path")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="the engine's batch size (default: its own)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-fuse", action="store_true", help="CPU: run the model as given (no fused convolutions)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="engine rounds per method, each paired with an equally long raw run")
    ap.add_argument("--methods", default="", help="the engine section's methods, comma-separated (default: all)")
    args = ap.parse_args(argv)
    names = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    from salient.data import SAMPLE_NAMES, sample_images

    image = sample_images([args.image])[0] if args.image in SAMPLE_NAMES else salient.load_image(args.image)
    opts = {k: v for k, v in (("batch_size", args.batch_size), ("workers", args.workers),
                              ("threads", args.threads), ("device", args.device)) if v is not None}
    if args.no_fuse:
        opts["fuse"] = False
    device = pick_device(args.device)
    bench = Bench(salient.load_model(args.model), image, args.quick, device, opts, rounds=max(1, args.rounds),
                  methods=tuple(m for m in args.methods.split(",") if m))
    if device.type == "cpu" and not args.no_fuse:
        bench.fused = fuse_for_cpu(bench.model.module, _batch(bench.model, CPU_BATCH_SIZE, device))
    print(f"# salient {salient.__version__}, torch {torch.__version__}, {device}, {cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, model {args.model}, image {image.name}, "
          f"{'fused' if bench.fused is not None else 'not fused'}"
          f"{', QUICK (not results)' if args.quick else ''}")
    print(HEADER)
    for name in names:
        SECTIONS[name](bench)


if __name__ == "__main__":
    main()
