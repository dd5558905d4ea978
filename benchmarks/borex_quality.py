"""BOREx reproduces its paper's claim: refining a cheap prior raises its insertion AUC; and it is fast.

Items: scikit-image's bundled photos (no download) and a mirrored centre crop of each, explained for
their top-1 class under the real EfficientNet-Lite0. Priors: the BOREx authors' RISE (100 masks,
8 cells, p = 0.3) and Grad-CAM++ (skipped with a note when the method is not registered). Each is
refined by BOREx (50 iterations = 100 forward passes). The table gives the median insertion AUC
(the authors' zero substrate and RISE's blur substrate) and deletion AUC (zero) before and after,
with one-sided Wilcoxon signed-rank p-values over the items (insertion: after > before; deletion:
after < before); RISE with 4000 masks is a reference point.

Speed: BOREx of all items with one batched GP per iteration for up to ``--batch`` (16) items at a
time; then the first batch again as ``--groups`` (2) batched GPs whose GP work overlaps the forward
passes of the other group (``run_batch(..., groups=2)``), and one item at a time (same maps each
time). Every run is driven by a synchronous evaluation that spreads each round's queries over
every worker. Printed: seconds per image; the share of the wall time outside the forward passes,
i.e. while no evaluation is running (GP fitting, acquisition, final map; evaluations never overlap
each other, so this is the wall time minus their summed durations); the CPU seconds of the
driving thread (the GP work, which with overlap competes with the forward passes for the cores);
the speed-up of batching across items; and the engine's usual path (``explain_many``: per-item
GPs, queries of all items batched, the prior recomputed inside) for comparison.
For orientation (quoted from the issue, not measured here): the authors' code took about 19 s per
image on a 2-core CPU with this model, about 12 s of it in its GP.

    python benchmarks/borex_quality.py            # the full run: 11 photos, 22 items (about an hour on 2 cores)
    python benchmarks/borex_quality.py --quick    # 3 items, 10 iterations, no RISE-4000 reference, coarse curves
    python benchmarks/borex_quality.py --speed-only --items 16   # the speed section only (no AUC table)
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import numpy as np
import skimage.data
from scipy.stats import wilcoxon

import salient
from salient.engine import Task
from salient.engine.executor import Done, Unit
from salient.methods import METHODS, Request
from salient.methods.borex import run_batch
from salient.metrics.curves import curve
from salient.queries import ScoreQuery

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "horse", "clock", "hubble_deep_field",
          "moon", "immunohistochemistry")
KINDS = (("insertion", "zero"), ("insertion", "blur"), ("deletion", "zero"))


def photos_and_crops(n: int, crop: float = 0.6) -> list[salient.Image]:
    """Each photo, then its centre crop (``crop`` of each side) mirrored left-right; the first n."""
    out = []
    for name in PHOTOS:
        arr = np.asarray(getattr(skimage.data, name)())
        h, w = arr.shape[:2]
        ch, cw = int(h * crop), int(w * crop)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        out.append(salient.load_image(arr, name=name))
        out.append(salient.load_image(np.ascontiguousarray(arr[y0:y0 + ch, x0:x0 + cw][:, ::-1]), name=f"{name}-crop"))
    return out[:n]


def explain_all(eng: salient.Engine, items: list, method: str, **params: Any) -> tuple[list[np.ndarray], float]:
    """Maps of every item (top-1) with one engine run; and the seconds it took."""
    t0 = time.perf_counter()
    got = dict(eng.explain_many([(it.id, it) for it in items], method=method, **params))
    maps = []
    for it in items:
        out = got[it.id]
        if isinstance(out, Exception):
            raise out
        maps.append(out[0].map)
    return maps, time.perf_counter() - t0


def aucs(eng: salient.Engine, items: list, reqs: list[Request], maps: list[np.ndarray], step: int | None
         ) -> dict[tuple[str, str], np.ndarray]:
    """AUC of every (kind, substrate) curve of every map, in one engine run."""
    tasks = [Task((i, kind, sub), it, curve(it.id, it.size, m, r.targets[0], kind, step=step, substrate=sub))
             for i, (it, r, m) in enumerate(zip(items, reqs, maps, strict=True)) for kind, sub in KINDS]
    out = {k: np.zeros(len(items)) for k in KINDS}
    for task, res in eng.run(tasks):
        if isinstance(res, Exception):
            raise res
        i, kind, sub = task.key
        out[(kind, sub)][i] = res.auc
    return out


class ParallelEvaluate:
    """A synchronous ``evaluate(queries)`` over every worker: the queries, in order, cut into one unit
    per worker of about equal forward passes (results do not depend on the packing, see worker.py).
    ``seconds`` accumulates the time spent inside (masking and forward passes)."""

    def __init__(self, executor: Any, items: dict[str, Any]):
        self.executor, self.items, self.ids, self.seconds = executor, items, itertools.count(), 0.0

    def __call__(self, queries: list) -> list:
        t0 = time.perf_counter()
        n = self.executor.n_workers
        total = sum(q.n_inputs() for q in queries)
        units, cut, acc = [], 0, 0
        for i, q in enumerate(queries):
            acc += q.n_inputs()
            if acc >= total * (len(units) + 1) / n or i == len(queries) - 1:
                part = queries[cut:i + 1]
                units.append(Unit(next(self.ids), part, {q.item: self.items[q.item] for q in part}))
                cut = i + 1
        for w, unit in enumerate(units):
            self.executor.submit(w % n, unit)
        done: dict[int, list] = {}
        while len(done) < len(units):
            for ev in self.executor.wait(1.0):
                if not isinstance(ev, Done):
                    raise RuntimeError(f"unit failed: {ev}")
                done[ev.unit.id] = ev.results
        self.seconds += time.perf_counter() - t0
        return [r for unit in units for r in done[unit.id]]


def timed_borex(evaluate: ParallelEvaluate, reqs: list[Request], priors: list[np.ndarray], batch: int,
                groups: int = 1, **params: Any) -> tuple[list[np.ndarray], dict[str, float]]:
    """BOREx maps, ``batch`` requests per :func:`run_batch` split into ``groups`` overlapped batched GPs;
    and the timing: wall seconds, seconds outside ``evaluate`` and CPU seconds of this (driving) thread."""
    inside, t0, c0 = evaluate.seconds, time.perf_counter(), time.thread_time()
    maps: list[np.ndarray] = []
    for s in range(0, len(reqs), batch):
        out = run_batch(evaluate, reqs[s:s + batch], prior=priors[s:s + batch], groups=groups, **params)
        maps += [np.asarray(m[0]) for m in out]
    wall = time.perf_counter() - t0
    return maps, {"wall": wall, "outside": wall - (evaluate.seconds - inside), "cpu": time.thread_time() - c0,
                  "n": len(reqs)}


def speed_line(name: str, t: dict[str, float]) -> str:
    n = t["n"]
    return (f"  {name}: {t['wall'] / n:.2f} s/image, {t['outside'] / t['wall']:.0%} outside the forward passes "
            f"({t['outside'] / n:.2f} s/image), driving thread CPU {t['cpu'] / n:.2f} s/image")


def print_table(rows: list[tuple[str, dict, str | None]], n: int, step: int | None) -> None:
    """Median AUCs and one-sided Wilcoxon p-values of each refined map against its prior."""
    print(f"\nAUC medians over {n} items (curve step {step or 'H·W/224'}); "
          "p: one-sided Wilcoxon signed-rank, BOREx vs its prior")
    print(f"{'map':<28}{'ins zero':>10}{'p':>8}{'ins blur':>10}{'p':>8}{'del zero':>10}{'p':>8}")
    table = dict((name, a) for name, a, _ in rows)
    for name, a, base in rows:
        cells = []
        for kind, sub in KINDS:
            med = float(np.median(a[(kind, sub)]))
            p = ""
            if base is not None:
                alt = "greater" if kind == "insertion" else "less"
                diff = a[(kind, sub)] - table[base][(kind, sub)]
                p = f"{wilcoxon(diff, alternative=alt).pvalue:.3f}" if np.any(diff != 0) else "n/a"
            cells.append(f"{med:>10.3f}{p:>8}")
        print(f"{name:<28}{''.join(cells)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 items, 10 iterations, no reference, coarse curves")
    ap.add_argument("--items", type=int, default=2 * len(PHOTOS))
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--reference", type=int, default=4000, help="RISE masks of the reference (0: skip)")
    ap.add_argument("--step", type=int, default=None, help="pixels per curve step (default H·W/224)")
    ap.add_argument("--batch", type=int, default=16, help="items per run_batch call")
    ap.add_argument("--groups", type=int, default=2, help="overlapped batched GPs in the overlap row")
    ap.add_argument("--speed-only", action="store_true", help="RISE(100) prior and the speed section only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.items, args.iterations, args.reference, args.step = 3, 10, 0, args.step or 896

    model = salient.load_model("efficientnet-lite0")
    eng = salient.Engine(model)
    items = [eng.item(im, item_id=im.name) for im in photos_and_crops(args.items)]
    for it in items:
        eng.executor.hold(it)
    scores = eng.executor.evaluate([ScoreQuery(it.id) for it in items])
    reqs = [Request(it.id, it.size, (int(np.argmax(s)),), s[[int(np.argmax(s))]], args.seed, int(it.x.shape[0]))
            for it, s in zip(items, scores, strict=True)]
    print(f"{len(items)} items, batch size {eng.executor.batch_size}, {eng.executor.n_workers} worker(s); "
          f"classes: {', '.join(f'{it.id}={model.label(r.targets[0])}' for it, r in zip(items, reqs, strict=True))}")

    rows: list[tuple[str, dict, str | None]] = []  # (name, aucs, name of the row it refines)
    notes = []
    rise100, t = explain_all(eng, items, "rise", n_masks=100, cells=8, p=0.3, seed=args.seed)
    priors = {"RISE(100, 8, 0.3)": rise100}
    if not args.speed_only and "gradcampp" in METHODS:
        priors["Grad-CAM++"], _ = explain_all(eng, items, "gradcampp", seed=args.seed)
    elif not args.speed_only:
        notes.append("Grad-CAM++ prior skipped: method 'gradcampp' is not registered")
    evaluate = ParallelEvaluate(eng.executor, {it.id: it for it in items})
    run_batch(evaluate, reqs[:1], prior=rise100[:1], iterations=1)  # warm-up (gpytorch's import), not timed
    timing = {}
    for name, prior in priors.items():
        after, t = timed_borex(evaluate, reqs, prior, args.batch, iterations=args.iterations)
        timing.setdefault(name, (t, after))
        if not args.speed_only:
            rows.append((name, aucs(eng, items, reqs, prior, args.step), None))
            rows.append((f"BOREx({name})", aucs(eng, items, reqs, after, args.step), name))
    if args.reference and not args.speed_only:
        ref, _ = explain_all(eng, items, "rise", n_masks=args.reference, seed=args.seed)
        rows.append((f"RISE({args.reference})", aucs(eng, items, reqs, ref, args.step), None))

    if not args.speed_only:
        print_table(rows, len(items), args.step)

    name = "RISE(100, 8, 0.3)"
    plain, batched = timing[name]
    k = min(args.batch, len(items))  # the runs below cover the first batch
    first, first_priors = reqs[:k], priors[name][:k]
    overlap_maps, overlapped = timed_borex(evaluate, first, first_priors, k, args.groups, iterations=args.iterations)
    single, one = timed_borex(evaluate, first, first_priors, 1, iterations=args.iterations)
    t0 = time.perf_counter()
    engine_maps, _ = explain_all(eng, items[:k], "borex", iterations=args.iterations, seed=args.seed,
                                 **{"prior.n_masks": 100, "prior.cells": 8, "prior.p": 0.3})
    wall2 = time.perf_counter() - t0
    diff = max(float(np.abs(a - b).max()) for other in (overlap_maps, single)
               for a, b in zip(batched[:k], other, strict=True))
    diff2 = max(float(np.abs(a - b).max()) for a, b in zip(batched[:k], engine_maps, strict=True))
    n = len(items)
    groups = min(args.groups, k)
    print(f"\nBOREx speed, prior {name}, {args.iterations} iterations = {2 * args.iterations} forward passes "
          f"per image, {eng.executor.n_workers} worker(s), batch size {eng.executor.batch_size}:")
    print(speed_line(f"batched GP ({min(args.batch, n)} items per GP), all {n} items", plain))
    print(speed_line(f"{groups} overlapped batched GPs, first {k}", overlapped))
    print(speed_line(f"one item at a time, first {k}", one) + f"; max |map difference| {diff:.1e}")
    print(f"  speed-up of batching {k} items: {one['wall'] / k / (plain['wall'] / n):.2f}x as one batched GP, "
          f"{one['wall'] / overlapped['wall']:.2f}x as {groups} overlapped batched GPs")
    print(f"  engine explain_many (per-item GPs, the prior's 100 passes included), first {k}: {wall2 / k:.2f} s/image; "
          f"max |map difference| {diff2:.1e}")
    print("  the authors' code (quoted from the issue, 2-core CPU, same model): ~19 s/image, ~12 s in its GP")
    for note in notes:
        print(f"note: {note}")
    eng.close()


if __name__ == "__main__":
    main()
