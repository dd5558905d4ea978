"""Store sink throughput: maps written per second and peak memory through ``salient.jobs.Store``.

Writes N synthetic float32 maps (smooth fields plus noise, like saliency maps) with their table
rows, in a shuffled completion order within a window (as a scheduler delivers them), then closes
the store (flush, final length, consolidation). Prints maps/s, MB/s of map data, maps per CPU-second
(all threads), the store's size on disk, and the process's resident memory at 25/50/75/100 % of the
maps (flat = no growth with N).

    python benchmarks/store_write.py                    # 10,000 maps of 224 x 224, lz4, durable
    python benchmarks/store_write.py --n 2000 --compressor none --no-durable
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from salient.jobs.store import COMPRESSORS, SHARD_ITEMS, Store
from salient.saliency import Saliency


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="maps to write (default 10000)")
    ap.add_argument("--size", type=int, default=224, help="map side (default 224)")
    ap.add_argument("--compressor", choices=COMPRESSORS, default="lz4")
    ap.add_argument("--shard-items", type=int, default=SHARD_ITEMS)
    ap.add_argument("--no-durable", action="store_true", help="skip fsync before each table part")
    ap.add_argument("--window", type=int, default=64, help="completion-order shuffle window (default 64)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir, removed after)")
    args = ap.parse_args()

    pool = synthetic_maps(97, args.size)  # a prime count: consecutive rows differ
    order = completion_order(args.n, args.window)
    base = Path(args.dir or tempfile.mkdtemp(prefix="salient-store-bench-"))
    out = base / "store"
    shutil.rmtree(out, ignore_errors=True)
    marks = {int(args.n * q): q for q in (0.25, 0.5, 0.75)}
    rss0 = rss_mb()
    samples = []
    t0, c0 = time.perf_counter(), time.process_time()
    with Store(out, "bench", {"bench": True}, compressor=args.compressor, shard_items=args.shard_items,
               durable=not args.no_durable) as st:
        for done, pos in enumerate(order, 1):
            s = Saliency(pool[pos % len(pool)], False, "rise", int(pos % 1000), "label", 0.5, n_forward=4000,
                         seconds=0.1, seed=0, params={"n_masks": 4000})
            s.metrics.update(insertion_auc=0.5, deletion_auc=0.1)
            st.add(f"item{pos:07d}.jpg", f"/data/item{pos:07d}.jpg", [s], position=int(pos))
            if done in marks:
                samples.append((marks[done], rss_mb()))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples.append((1.0, rss_mb()))
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    raw = args.n * args.size * args.size * 4
    print(f"store_write: {args.n} maps of {args.size}x{args.size}, compressor {args.compressor}, "
          f"shard {args.shard_items} items, durable {not args.no_durable}")
    print(f"  {args.n / seconds:,.0f} maps/s  ({raw / seconds / 2**20:,.0f} MB/s of map data, {seconds:.2f} s); "
          f"{args.n / cpu:,.0f} maps per CPU-second (all threads; less sensitive to a busy machine)")
    print(f"  on disk {disk / 2**20:,.1f} MB (ratio {raw / max(disk, 1):.2f})")
    print(f"  resident memory (MB): start {rss0:.0f}; "
          + ", ".join(f"{int(q * 100)}%: {m:.0f}" for q, m in samples)
          + f"; peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
