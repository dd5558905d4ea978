"""Huge images (issue 14): speed and memory of tile mode and whole mode; prints one table per part.

- part (a), tile mode: a synthetic 20,000 x 20,000 tiled TIFF (``--side``), a small model
  (mobilenet_v3_small, seeded) and Grad-CAM into an OME-Zarr mosaic: tiles/s, forward passes/s against
  the raw forward rate, the share of wall time spent reading and stitching/writing, RSS at 25/50/75/100 %
  of the slide's bands (:func:`part_a`).
- part (b), whole mode: the real EfficientNet-Lite0 (it accepts any input size) on a photo resized to
  2,048 and 4,096 a side, RISE with a small budget (``--masks``, default 32): masked forward passes/s
  through ``salient.Engine(...).explain(..., whole=True)`` against the raw forward rate of the same
  module at the same size, batch and layout, and the peak RSS of the process (:func:`part_b`).

Each size of part (b) runs in its own subprocess, so its peak RSS is its own. The engine's rate counts
the item's useful forward passes (the masks and the unmasked scores) over the wall time of ``explain``
(reading excluded; the acceptance probe, building masks and the RISE reductions included). The raw rate
runs the worker's own module (the fused copy on CPU) on random full batches of the same shape, with the
same threads. Engine job and raw run alternate: round 1 runs the job first (to learn its duration),
then a raw run of equal length; later rounds (``--rounds``) in a seeded random order; rates are pooled.

Run on a quiet machine; timings taken while other jobs run are not results.

    python benchmarks/huge_image.py --part b                 # whole mode, 2048 and 4096 (~15 min on 1 CPU core)
    python benchmarks/huge_image.py --part b --sides 1024 --masks 16   # a smoke run
    python benchmarks/huge_image.py --part a                 # tile mode, 20,000 x 20,000 (minutes on 2 cores)
    python benchmarks/huge_image.py --part a --side 4000     # a smoke run
    python benchmarks/huge_image.py --part all
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

import salient
from salient.engine import memory

# ---------------------------------------------------------------- part (a): tile mode


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _synthetic_tiff(path: str, side: int, tile: int = 512) -> None:
    """An RGB uint8 tiled TIFF of side x side written from a generator (8 seeded textures cycled, so
    tiles differ and nothing holds the image)."""
    import tifffile

    rng = np.random.default_rng(0)
    textures = [(rng.random((tile, tile, 3)) * 200 + 30).astype(np.uint8) for _ in range(8)]

    def tiles():
        for i in range((-(-side // tile)) ** 2):
            yield textures[i % 8]

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")


def _raw_cam(module: torch.nn.Module, streams: int, seconds: float) -> float:
    """Tiles per second of ``streams`` threads (1 intra-op thread each) each running the least Grad-CAM
    costs a tile: a forward of one 224 x 224 input recording autograd (its backward, from the logit to
    the last spatial layer, runs only the head, and its score forward is not counted)."""
    counts = [0] * streams
    stop_at = time.perf_counter() + seconds

    def stream(k: int) -> None:
        torch.set_num_threads(1)
        x = torch.randn((1, 3, 224, 224), generator=torch.Generator().manual_seed(k))
        with torch.enable_grad():
            while time.perf_counter() < stop_at:
                module(x)
                counts[k] += 1

    pool = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def part_a(args: argparse.Namespace) -> None:
    """Tile mode: a synthetic ``--side`` tiled TIFF, torchvision's mobilenet_v3_small (seeded, no
    weights; 224 x 224) and Grad-CAM into an OME-Zarr mosaic; the raw forward rate of the same module
    at the same batch and worker count, measured after the run for as long as a tenth of it."""
    import tempfile

    import torchvision
    import zarr

    from salient.jobs.tiles import explain_tiles
    from salient.store.mosaic import MosaicWriter

    torch.manual_seed(0)
    model = salient.load_model(torchvision.models.mobilenet_v3_small(num_classes=10), input_size=224)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/slide.tif"
        t0 = time.perf_counter()
        _synthetic_tiff(path, args.side)
        made = time.perf_counter() - t0
        opts = {"workers": args.tile_workers} if args.tile_workers else {}
        with salient.Engine(model, **opts) as eng:
            root = zarr.open_group(f"{tmp}/out.zarr", mode="w")
            writer = MosaicWriter(root, "items/slide/gradcam", (args.side, args.side))
            marks, rss = {round(writer.n_bands * q / 4) for q in (1, 2, 3, 4)}, []

            def sink(rows: np.ndarray) -> None:
                writer.write_band(rows)
                if writer.done in marks:
                    rss.append((100 * writer.done // writer.n_bands, _rss_mb(),
                                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

            t0 = time.perf_counter()
            run, _ = explain_tiles(eng, path, "gradcam", target=0, sink=sink, overlap=args.overlap)
            wall = time.perf_counter() - t0
            writer.close()
            w = eng.executor.workers[0] if hasattr(eng.executor, "workers") else None
            module = w.module if w is not None else model.module
            b, n_w = eng.executor.batch_size, eng.executor.n_workers
            n_raw, t_raw = _raw(module, (3, 224, 224), b, n_w, max(5.0, wall / 20), model.memory_format)
            cam = _raw_cam(module, n_w, max(5.0, wall / 20))
    raw = n_raw / t_raw
    print(f"part (a), tile mode: {args.side} x {args.side} tiled TIFF ({3 * args.side**2 / 1e9:.2f} GB of pixels, "
          f"written in {made:.0f} s), mobilenet_v3_small 224 x 224, Grad-CAM, overlap {args.overlap}, "
          f"{n_w} worker(s), batch {b}")
    print(f"{'tiles':>6} {'wall s':>7} {'tiles/s':>8} {'raw CAM tiles/s':>16} {'ratio':>6} {'fwd/s':>7} "
          f"{'raw fwd/s':>10} {'ratio':>6} {'read %':>7} {'stitch %':>9} {'write %':>8}")
    read, stitch, write = (100 * run.timing[k] / wall for k in ("read", "stitch", "write"))
    tps = run.n_tiles / wall
    print(f"{run.n_tiles:>6} {wall:>7.1f} {tps:>8.2f} {cam:>16.2f} {tps / cam:>6.2f} {run.n_forward / wall:>7.2f} "
          f"{raw:>10.2f} {run.n_forward / wall / raw:>6.2f} {read:>6.1f}% {stitch:>8.1f}% {write:>7.1f}%")
    print("RSS along the slide: " + ", ".join(f"{q}%: {cur:.0f} MB (peak {peak:.0f} MB)" for q, cur, peak in rss))
    print("raw CAM tiles/s: one autograd-recording forward of one input per tile on as many threads (the least "
          "Grad-CAM costs a tile without the engine; its score forward and the head's backward not counted); "
          "fwd/s: the engine's forward passes (per tile "
          "a score forward and a CAM pass, itself a forward + backward) per second of wall time; raw fwd/s: "
          "inference-mode forwards of the same module at the engine's batch; read / stitch / write: CPU seconds "
          "as a share of the wall time, of reading and preprocessing tiles (2 reader threads), blending (the "
          "driver thread) and building the levels and writing zarr (the writer thread), all beside the forwards")


# ---------------------------------------------------------------- part (b): whole mode


def _photo(side: int) -> np.ndarray:
    """The bundled 'astronaut' photo resized (bicubic) to side x side, float32 (H, W, 3) in [0, 1]."""
    (img,) = salient.data.sample_images(["astronaut"])
    pil = PILImage.fromarray((img.pixels * 255).round().astype(np.uint8)).resize((side, side), PILImage.BICUBIC)
    return np.asarray(pil, dtype=np.float32) / 255


def _raw(module: torch.nn.Module, shape: tuple[int, ...], b: int, streams: int, seconds: float,
         memory_format: torch.memory_format) -> tuple[int, float]:
    """Images and seconds of ``streams`` threads (1 intra-op thread each) running full batches of ``b``
    inputs of ``shape`` through ``module`` for about ``seconds`` (after one warm-up batch each)."""
    counts = [0] * streams
    start = threading.Barrier(streams + 1)
    stop_at = [time.perf_counter() + 3600]

    def stream(k: int) -> None:
        torch.set_num_threads(1)
        x = torch.randn((b, *shape), generator=torch.Generator().manual_seed(k)).contiguous(
            memory_format=memory_format)
        with torch.inference_mode():
            module(x)
            start.wait()
            while time.perf_counter() < stop_at[0]:
                module(x)
                counts[k] += b

    pool = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in pool:
        t.join()
    return sum(counts), time.perf_counter() - t0


def whole_child(side: int, masks: int, workers: int, rounds: int, limit: str | None) -> dict[str, Any]:
    """One size of part (b), in this process: the engine's and the raw forward rates, the batch, peak RSS."""
    model = salient.load_model("efficientnet-lite0")
    img = _photo(side)
    shape = (3, side, side)
    opts = {"workers": workers, "batch_size": 4, **({"memory_limit": limit} if limit else {})}
    rng = random.Random(0)
    runs, raws = [], []
    with salient.Engine(model, **opts) as eng:
        item = eng.item(img, whole=True)  # read and checked once (the probe); explained in every round
        w = eng.executor.workers[0]
        b = memory.batch_for(model, shape, eng.executor.batch_size, eng.executor.memory_limit)
        module = w.fused if w.fused is not None else w.module
        eng.explain(item, "rise", whole=True, n_masks=b, chunk=b)  # warm-up: kernels for this shape, buffers
        rows0 = eng.executor.stats()["n_forward"]
        seconds = 0.0
        for r in range(rounds):
            raw_first = r > 0 and rng.random() < 0.5
            if raw_first:
                raws.append(_raw(module, shape, b, workers, seconds, model.memory_format))
            t0 = time.perf_counter()
            s = eng.explain(item, "rise", seed=r, whole=True, n_masks=masks, chunk=masks)
            seconds = time.perf_counter() - t0
            runs.append((s.n_forward, seconds))
            if not raw_first:
                raws.append(_raw(module, shape, b, workers, seconds, model.memory_format))
        stats = eng.executor.stats()
        batches = {k: v for p in stats["per_worker"] for k, v in p["shape_batches"].items()}
        rows = stats["n_forward"] - rows0
    n_e, t_e = map(sum, zip(*runs, strict=True))
    n_r, t_r = map(sum, zip(*raws, strict=True))
    return {"side": side, "masks": masks, "workers": workers, "batch": b, "batches": batches,
            "padding": 1 - n_e / rows,
            "estimate_gb": memory.input_bytes(model, shape) * b * workers / 1e9,
            "engine": n_e / t_e, "raw": n_r / t_r, "seconds": t_e / rounds,
            "rounds": [round((a / x) / (c / y), 3) for (a, x), (c, y) in zip(runs, raws, strict=True)],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def part_b(args: argparse.Namespace) -> None:
    """Whole mode on the real EfficientNet-Lite0 at each side in ``--sides``: one subprocess per side."""
    print(f"part (b), whole mode: efficientnet-lite0, RISE {args.masks} masks, {args.workers} worker(s) x 1 thread, "
          f"{args.rounds} round(s) per row; peak RSS of the process (model, photo, item, batches)")
    head = f"{'side':>6} {'batch':>5} {'est GB':>7} {'engine fwd/s':>13} {'raw fwd/s':>10} {'ratio':>6} " \
           f"{'padding':>7} {'s/run':>7} {'peak RSS GB':>12}  rounds"
    print(head)
    for side in args.sides:
        cmd = [sys.executable, __file__, "--child", str(side), "--masks", str(args.masks), "--workers",
               str(args.workers), "--rounds", str(args.rounds)] + (["--memory-limit", args.memory_limit]
                                                                    if args.memory_limit else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            err = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{side:>6} failed: {err}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{r['side']:>6} {r['batch']:>5} {r['estimate_gb']:>7.2f} {r['engine']:>13.3f} {r['raw']:>10.3f} "
              f"{r['engine'] / r['raw']:>6.2f} {100 * r['padding']:>6.1f}% {r['seconds']:>7.1f} "
              f"{r['peak_rss_gb']:>12.2f}  {r['rounds']}")
    print("est GB: the memory rule's estimate for the workers' batches (salient.engine.memory.input_bytes); "
          "ratio: engine / raw forward passes per second; padding: forward rows that carried no query (the "
          "unmasked scores fill one row of a batch)")


PARTS = {"a": part_a, "b": part_b}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--side", type=int, default=20000, help="part (a): the synthetic slide's side")
    p.add_argument("--overlap", type=float, default=0.0, help="part (a): tile overlap")
    p.add_argument("--tile-workers", type=int, help="part (a): local workers (default: the engine's, one per core)")
    p.add_argument("--sides", type=int, nargs="+", default=[2048, 4096], help="part (b): image sides")
    p.add_argument("--masks", type=int, default=32, help="part (b): RISE masks")
    p.add_argument("--workers", type=int, default=1, help="part (b): local workers (1 thread each)")
    p.add_argument("--rounds", type=int, default=1, help="part (b): engine/raw rounds per size")
    p.add_argument("--memory-limit", help="part (b): per-worker memory limit (default: the engine's)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(whole_child(args.child, args.masks, args.workers, args.rounds, args.memory_limit)))
        return
    for name, fn in PARTS.items():
        if args.part in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
