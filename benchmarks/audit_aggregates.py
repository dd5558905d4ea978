"""The audit's aggregate steps on a synthetic store (issue 17, "Speed"): prints one table.

Each step runs in its own subprocess on a store built once (not timed): seconds (wall) and peak
memory (the process's peak RSS above its RSS after the imports, so the libraries' own footprint is
not counted). Goal: each step under 10 s at 100,000 rows.

- ``compare``: ``salient compare OUT rise gradcampp --metric insertion_auc --by label``'s work
  (read the results table, :func:`salient.metrics.paired.compare` overall and per class) on a store
  of ``--rows`` rows (two methods x rows/2 items, 100 classes).
- ``cluster k=8`` / ``cluster k=auto``: :func:`salient.metrics.clusters.cluster_maps` on a store of
  ``--rows`` maps of one method (``--map-size`` square, 8 planted attention regions plus noise,
  10 classes), writing its three outputs. The maps are read from the Zarr store a block at a time;
  the read rate is printed so that larger maps can be extrapolated (224² maps are 12x the bytes of 64²).

A new step is one entry in :data:`STEPS` (a store it needs and a function that runs it).

    python benchmarks/audit_aggregates.py                      # 100,000 rows (builds ~1 min, then the steps)
    python benchmarks/audit_aggregates.py --rows 20000 --dir /tmp/agg   # keep the stores for reruns
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

GOAL_S = 10.0
N_CLASSES_COMPARE, N_CLASSES_CLUSTER, N_PLANTED = 100, 10, 8


# -- synthetic stores (built with the real writer, so the layout is the store contract's)
def build_table_store(out: Path, rows: int, seed: int = 0) -> None:
    """rows/2 items x methods rise and gradcampp: 8 x 8 maps, insertion_auc (rise better by 0.02 on average)."""
    from salient.saliency import Saliency
    from salient.store import Store

    rng = np.random.default_rng(seed)
    n = rows // 2
    base = rng.uniform(0.2, 0.8, n)
    gain = rng.normal(0.02, 0.05, n)
    labels = rng.integers(0, N_CLASSES_COMPARE, n)
    tiny = np.zeros((8, 8), np.float32)
    with Store(out, "bench", shard_items=1024, flush_rows=8192, durable=False) as st:
        for i in range(n):
            res = []
            for m, v in (("rise", base[i] + gain[i]), ("gradcampp", base[i])):
                s = Saliency(tiny, False, m, target=int(labels[i]), label=f"class{labels[i]}")
                s.metrics["insertion_auc"] = float(v)
                res.append(s)
            st.add(f"item{i}", f"item{i}.png", res, position=i)


def planted(size: int) -> np.ndarray:
    """N_PLANTED Gaussian blobs (size x size) on a ring: the planted attention regions."""
    y, x = np.mgrid[:size, :size] / size
    angles = np.arange(N_PLANTED) * 2 * np.pi / N_PLANTED
    centres = 0.5 + 0.3 * np.stack([np.sin(angles), np.cos(angles)], 1)
    return np.stack([np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 0.08**2)) for cy, cx in centres]).astype(np.float32)


def build_map_store(out: Path, rows: int, size: int, seed: int = 0) -> None:
    """``rows`` maps of method gradcampp: a planted blob (scaled) plus uniform noise, 10 classes."""
    from salient.saliency import Saliency
    from salient.store import Store

    rng = np.random.default_rng(seed)
    protos = planted(size)
    with Store(out, "bench", shard_items=256, flush_rows=8192, durable=False) as st:
        for lo in range(0, rows, 1024):
            hi = min(rows, lo + 1024)
            which = rng.integers(0, N_PLANTED, hi - lo)
            maps = (protos[which] * rng.uniform(0.5, 2.0, (hi - lo, 1, 1)).astype(np.float32)
                    + 0.1 * rng.random((hi - lo, size, size), dtype=np.float32))
            labels = (which + rng.integers(0, 3, hi - lo)) % N_CLASSES_CLUSTER
            for j in range(hi - lo):
                st.add(f"item{lo + j}", "", [Saliency(maps[j], False, "gradcampp", target=int(labels[j]),
                                                      label=f"class{labels[j]}")], position=lo + j)


# -- steps: each runs in a subprocess and returns extra facts for the table
def step_compare(d: Path, args: argparse.Namespace) -> str:
    from salient.metrics.paired import compare
    from salient.store import read_results

    t = time.perf_counter()
    df = read_results(d / "table")
    read_s = time.perf_counter() - t
    got = compare(df, "rise", "gradcampp", "insertion_auc", by="label")
    overall = got.iloc[0]
    return f"read {read_s:.1f} s; {len(got) - 1} classes; n={overall['n']}, p={overall['p']:.2g}"


def _cluster(d: Path, k: int | str) -> str:
    from salient.metrics import clusters

    spent: dict[str, float] = {}
    for phase in ("read_features", "choose_k", "write_clusters"):  # time the phases (this process only)
        real = getattr(clusters, phase)

        def timed(*a, _real=real, _phase=phase, **kw):
            t = time.perf_counter()
            try:
                return _real(*a, **kw)
            finally:
                spent[_phase] = spent.get(_phase, 0.0) + time.perf_counter() - t

        setattr(clusters, phase, timed)
    t = time.perf_counter()
    res = clusters.cluster_maps(d / "maps", "gradcampp", k=k, seed=0)
    total = time.perf_counter() - t
    fit = total - sum(spent.values())
    phases = ", ".join(f"{n.split('_')[0]} {v:.1f}" for n, v in spent.items())
    return f"k={res.k}; {phases}, k-means+table {fit:.1f} s"


STEPS: dict[str, tuple[str, Callable[[Path, argparse.Namespace], str]]] = {
    "compare": ("table", step_compare),
    "cluster k=8": ("maps", lambda d, a: _cluster(d, 8)),
    "cluster k=auto": ("maps", lambda d, a: _cluster(d, "auto")),
}
BUILDERS = {"table": lambda out, a: build_table_store(out, a.rows),
            "maps": lambda out, a: build_map_store(out, a.rows, a.map_size)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_step(name: str, d: Path, args: argparse.Namespace) -> None:
    """In the subprocess: import, note the RSS, run the step, print one JSON line."""
    import pandas  # noqa: F401 - imports before the baseline
    import sklearn.cluster  # noqa: F401
    import zarr  # noqa: F401

    import salient  # noqa: F401

    base = _rss_mb()
    t = time.perf_counter()
    note = STEPS[name][1](d, args)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak - base, "note": note}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--map-size", type=int, default=64)
    ap.add_argument("--dir", default=None, help="where the stores are (built if absent; default: a temp dir)")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: run one step in this process
    args = ap.parse_args()
    d = Path(args.dir or tempfile.mkdtemp(prefix="salient-agg-"))
    if args.step:
        run_step(args.step, d, args)
        return
    for kind in sorted({kind for kind, _ in STEPS.values()}):
        if not (d / kind / "results").is_dir():
            t = time.perf_counter()
            BUILDERS[kind](d / kind, args)
            print(f"built {d / kind}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    maps_mb = args.rows * args.map_size**2 * 4 / 2**20
    print(f"{args.rows} rows; cluster maps {args.map_size}x{args.map_size} ({maps_mb:.0f} MB of float32); "
          f"{os.cpu_count()} CPUs")
    head = f"{'step':<16} {'seconds':>8} {'peak MB':>8} {'goal':>6}  notes"
    print(head + "\n" + "-" * len(head))
    for name in STEPS:
        cmd = [sys.executable, __file__, "--step", name, "--dir", str(d), "--rows", str(args.rows),
               "--map-size", str(args.map_size)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{name:<16} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        note = r["note"]
        ok = "ok" if r["seconds"] < GOAL_S else "SLOW"
        print(f"{name:<16} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} {ok:>6}  {note}")


if __name__ == "__main__":
    main()
