"""Where one BOREx item's time goes (issue 22, part 1: measure first): one item at a time, 224 x 224, the
authors' RISE prior (100 masks), 50 iterations, the real EfficientNet-Lite0 on the local executor.

Per item, the driver's wall time split into: waiting for the workers (forward passes: the prior's, then two
per iteration in a batch padded to the engine's fixed batch), the GP fit (length scales), the posterior, the UCB
search, the final map, and the rest (the scheduler, the method's own bookkeeping). The split comes from timing
wrappers around the functions the method calls (this script only; nothing in the package is changed), and the
forwards' share from the driver's blocking waits. Rows: the faithful default (q = 1) and the opt-in q = 2
variant at the same forward budget (25 iterations of 2 states), next to the authors' quoted ~19-25 s per item
at one thread (quoted from the issue, not measured here).

    python benchmarks/borex_latency.py               # 3 photos (about a minute on 2 cores)
    python benchmarks/borex_latency.py --items 6
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import salient
import salient.methods.bo.gp as gp_module
import salient.methods.borex as borex_module
from salient.engine import Engine
from salient.engine.local import LocalExecutor

AUTHORS_SECONDS = (19.0, 25.0)  # per item at one thread, quoted in the issue
PARTS = ("wait", "fit", "posterior", "search", "final map")


def timed(store: dict[str, float], part: str, fn: Callable) -> Callable:
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            store[part] += time.perf_counter() - t0

    return wrapper


def instrument(store: dict[str, float]) -> Callable[[], None]:
    """Wrap the functions BOREx's driver-side work runs in; returns the undo."""
    saved = [(borex_module, "fit_lengthscales", borex_module.fit_lengthscales),
             (borex_module, "ucb_argmax", borex_module.ucb_argmax),
             (borex_module, "mean_grid", borex_module.mean_grid),
             (LocalExecutor, "wait", LocalExecutor.wait)]
    borex_module.fit_lengthscales = timed(store, "fit", borex_module.fit_lengthscales)
    borex_module.ucb_argmax = timed(store, "search", borex_module.ucb_argmax)
    borex_module.mean_grid = timed(store, "final map", borex_module.mean_grid)
    LocalExecutor.wait = timed(store, "wait", LocalExecutor.wait)
    fit = gp_module.Posterior.fit.__func__
    gp_module.Posterior.fit = classmethod(timed(store, "posterior", fit))

    def undo() -> None:
        for owner, name, value in saved:
            setattr(owner, name, value)
        gp_module.Posterior.fit = classmethod(fit)

    return undo


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=3)
    args = ap.parse_args(argv)
    images = salient.data.sample_images()[: args.items]
    variants = {"default (q=1, 50 it.)": {}, "q=2, 25 it. (opt-in)": {"q": 2, "iterations": 25}}
    print(f"BOREx, one item at a time, {len(images)} photos, EfficientNet-Lite0, RISE-100 prior; authors: "
          f"{AUTHORS_SECONDS[0]:g}-{AUTHORS_SECONDS[1]:g} s per item (quoted)")
    print(f"{'variant':<24} {'s/item':>7} {'x authors':>10} " + " ".join(f"{p:>10}" for p in PARTS)
          + f" {'rest':>7} {'passes':>7}")
    with Engine("efficientnet-lite0") as eng:
        eng.explain(images[0], method="rise", n_masks=100)  # warm-up
        for name, params in variants.items():
            store: dict[str, float] = defaultdict(float)
            undo = instrument(store)
            passes, t0 = 0, time.perf_counter()
            try:
                for img in images:
                    passes += eng.explain(img, method="borex", **params).n_forward
            finally:
                undo()
            wall = (time.perf_counter() - t0) / len(images)
            parts = {p: store[p] / len(images) for p in PARTS}
            rest = wall - sum(parts.values())
            speedup = f"{AUTHORS_SECONDS[0] / wall:.1f}-{AUTHORS_SECONDS[1] / wall:.1f}"
            print(f"{name:<24} {wall:7.2f} {speedup:>10} " + " ".join(f"{parts[p]:10.2f}" for p in PARTS)
                  + f" {rest:7.2f} {passes // len(images):7d}", flush=True)
    print("wait: the driver blocked on the workers (the forward passes, the prior's included); the other columns "
          "are driver-side seconds per item")


if __name__ == "__main__":
    main()
