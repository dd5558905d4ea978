"""What verifying a store costs: :func:`salient.store.check_maps` over every ``ok`` row's map.

Writes ``--shards`` shards of ``--shard-items`` synthetic 224 x 224 float32 maps (smooth fields
plus noise, like saliency maps) through :class:`salient.store.Store`, then times the check of
every map (each shard file read once, whole; the index and every chunk checksummed), warm (the
files in the page cache: what is left when the disk is fast) over ``--repeat`` runs, and prints
seconds per 1000 shards, per 1000 maps and per GB of shard files, for 1 and the default number of
threads. A resume (``salient run``) and ``salient show`` pay this once; from a cold disk add the
time to read the files once.

    python benchmarks/store_check.py                        # 1000 shards of 2 maps
    python benchmarks/store_check.py --shards 200 --shard-items 64
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from salient.saliency import Saliency
from salient.store import Store, check_maps, read_results


def write(out: Path, n: int, shard_items: int, size: int, compressor: str) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    with Store(out, "bench", shard_items=shard_items, compressor=compressor, flush_rows=4096) as st:
        for p in range(n):
            cx, cy = rng.random(2)
            m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * 8) + 0.05 * rng.random((size, size))
            st.add(f"i{p}", "", [Saliency(m.astype(np.float32), False, "rise", 1, "x", base_score=0.5)], position=p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--shard-items", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--compressor", default="lz4")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.shards * args.shard_items
    tmp = Path(tempfile.mkdtemp(prefix="store_check_"))
    try:
        write(tmp, n, args.shard_items, args.size, args.compressor)
        nbytes = sum(p.stat().st_size for p in (tmp / "saliency.zarr" / "maps").rglob("c/**/*") if p.is_file())
        df = read_results(tmp, columns=["position", "method", "status", "index", "rank", "item_id"])
        print(f"{args.shards} shards x {args.shard_items} maps of {args.size} x {args.size}, {args.compressor}: "
              f"{nbytes / 1e9:.3f} GB of shard files")
        print(f"{'threads':>7}  {'s':>7}  {'s/1000 shards':>13}  {'s/1000 maps':>11}  {'s/GB':>6}")
        for threads in (1, 4):
            check_maps(tmp, df, threads=threads)  # warm: the page cache, imports
            best = min(_timed(tmp, df, threads) for _ in range(args.repeat))
            print(f"{threads:>7}  {best:7.3f}  {best / args.shards * 1000:13.3f}  {best / n * 1000:11.3f}  "
                  f"{best / (nbytes / 1e9):6.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _timed(out: Path, df, threads: int) -> float:
    t0 = time.perf_counter()
    check = check_maps(out, df, threads=threads)
    dt = time.perf_counter() - t0
    assert check.n_lost == 0 and check.shards > 0, check.summary()
    return dt


if __name__ == "__main__":
    main()
