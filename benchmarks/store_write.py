"""Store sink throughput: maps written per second and peak memory through ``salient.store.Store``.

Writes N synthetic float32 maps (smooth fields plus noise, like saliency maps) with their table
rows, in a shuffled completion order within a window (as a scheduler delivers them), then closes
the store (flush, final length, consolidation). One table row per configuration (compressor x
writer threads): maps/s, MB/s of map data, maps per CPU-second (all threads; less sensitive to a
busy machine), the store's size on disk and compression ratio, and the process's resident memory
at 25/50/75/100 % of the maps (flat = no growth with N). Configurations run one after the other in
this process, so compare them as ratios within one run. Imports (pandas, which pyarrow loads on
the first table part; a job has it loaded before its first map) are warmed before timing.
``--engine-ms`` makes the caller wait that long before each map (a sleep: the engine's forward
passes, which release the GIL), to show how much of the sink's work overlaps the engine's.

    python benchmarks/store_write.py                    # 10,000 maps of 224 x 224, lz4, durable
    python benchmarks/store_write.py --n 2000 --compressor all --threads 2,0
    python benchmarks/store_write.py --n 2000 --compressor none --no-durable
    python benchmarks/store_write.py --n 2000 --threads 2,0 --engine-ms 0.3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from salient.saliency import Saliency
from salient.store import COMPRESSORS, SHARD_ITEMS, Store, read_results


def rss_mb() -> float:
    """Current resident set size (Linux /proc), else the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_maps(k: int, size: int, seed: int = 0) -> np.ndarray:
    """k smooth maps (sums of random low-frequency waves) with a little noise, float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((k, size, size), np.float32)
    for i in range(k):
        f = rng.uniform(1, 6, 4)
        out[i] = (np.sin(f[0] * yy + f[1]) * np.cos(f[2] * xx + f[3]) + rng.normal(0, 0.01, (size, size)))
    return out


def completion_order(n: int, window: int, seed: int = 0) -> np.ndarray:
    """0..n-1 shuffled within consecutive windows (items finish out of order, but near their turn)."""
    rng = np.random.default_rng(seed)
    order = np.arange(n)
    for s in range(0, n, window):
        rng.shuffle(order[s : s + window])
    return order


def write(out: Path, pool: np.ndarray, order: np.ndarray, compressor: str, threads: int, shard_items: int,
          durable: bool, engine_s: float = 0.0) -> dict:
    """Write every map of ``order`` through a Store at ``out``; timings, size and memory."""
    shutil.rmtree(out, ignore_errors=True)
    n = len(order)
    marks = {int(n * q): q for q in (0.25, 0.5, 0.75)}
    rss0, samples = rss_mb(), []
    t0, c0 = time.perf_counter(), time.process_time()
    with Store(out, "bench", {"bench": True}, compressor=compressor, shard_items=shard_items, durable=durable,
               threads=threads) as st:
        for done, pos in enumerate(order, 1):
            if engine_s:
                time.sleep(engine_s)
            s = Saliency(pool[pos % len(pool)], False, "rise", int(pos % 1000), "label", 0.5, n_forward=4000,
                         seconds=0.1, seed=0, params={"n_masks": 4000})
            s.metrics.update(insertion_auc=0.5, deletion_auc=0.1)
            st.add(f"item{pos:07d}.jpg", f"/data/item{pos:07d}.jpg", [s], position=int(pos))
            if done in marks:
                samples.append(rss_mb())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples.append(rss_mb())
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": seconds, "cpu": cpu, "disk": disk, "rss0": rss0, "rss": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="maps to write (default 10000)")
    ap.add_argument("--size", type=int, default=224, help="map side (default 224)")
    ap.add_argument("--compressor", choices=(*COMPRESSORS, "all"), default="lz4", help="one, or all in turn")
    ap.add_argument("--threads", default="2", help="writer threads, comma-separated to compare (0: on the caller)")
    ap.add_argument("--shard-items", type=int, default=SHARD_ITEMS)
    ap.add_argument("--no-durable", action="store_true", help="skip fsync of shards and table parts")
    ap.add_argument("--window", type=int, default=64, help="completion-order shuffle window (default 64)")
    ap.add_argument("--engine-ms", type=float, default=0.0, help="caller's wait before each map (default 0)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir, removed after)")
    args = ap.parse_args()

    pool = synthetic_maps(97, args.size)  # a prime count: consecutive rows differ
    order = completion_order(args.n, args.window)
    base = Path(args.dir or tempfile.mkdtemp(prefix="salient-store-bench-"))
    compressors = COMPRESSORS if args.compressor == "all" else (args.compressor,)
    threads = [int(t) for t in args.threads.split(",")]
    write(base / "warmup", pool, order[:2 * args.shard_items], compressors[0], threads[0], args.shard_items, False)
    read_results(base / "warmup")  # imports pandas, as a job does before its first map
    raw = args.n * args.size * args.size * 4
    print(f"store_write: {args.n} maps of {args.size}x{args.size}, shard {args.shard_items} items, "
          f"durable {not args.no_durable}, completion window {args.window}, engine {args.engine_ms} ms/map")
    print(f"{'compressor':>10} {'threads':>7} {'maps/s':>8} {'MB/s':>6} {'maps/CPU-s':>10} {'disk MB':>8} "
          f"{'ratio':>6}  resident MB: start; 25/50/75/100 %")
    for comp in compressors:
        for t in threads:
            r = write(base / "store", pool, order, comp, t, args.shard_items, not args.no_durable,
                      args.engine_ms / 1000)
            print(f"{comp:>10} {t:>7} {args.n / r['seconds']:>8,.0f} {raw / r['seconds'] / 2**20:>6,.0f} "
                  f"{args.n / r['cpu']:>10,.0f} {r['disk'] / 2**20:>8,.1f} {raw / max(r['disk'], 1):>6.2f}  "
                  f"{r['rss0']:.0f}; " + "/".join(f"{m:.0f}" for m in r["rss"]))
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
