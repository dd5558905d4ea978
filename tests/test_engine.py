"""The engine without Ray: routing, packing independence, backpressure, sharding, failures, summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_toys import Conv, Poison, Recording, Slow
from toy_models import Linear, toy

import salient
from salient.engine import Engine, Item, Task
from salient.engine.worker import CPU_BATCH_SIZE, autotune_batch, resolve_batch_size
from salient.errors import ItemError, SalientError
from salient.queries import BoxQuery, ScoreQuery

RNG = np.random.default_rng(0)
IMAGES = [RNG.random((32, 32, 3), dtype=np.float32) for _ in range(5)]
JOBS = {
    "rise": {"n_masks": 120, "chunk": 40, "cells": 4},
    "dida": {"grids": (2, 3, 5), "weights": (0.2, 0.3, 0.5)},
    "occlusion": {"window": (8, 8), "stride": (4, 4), "chunk": 16},
}


@pytest.fixture(scope="module")
def linear():
    return toy(Linear())


def maps(eng: Engine, method: str, images=IMAGES, target="top1", **params) -> list[np.ndarray]:
    out = dict(eng.explain_many(images, method, target=target, seed=3, **params))
    return [out[k] if isinstance(out[k], Exception) else np.stack([s.map for s in out[k]]) for k in sorted(out)]


def test_results_reach_their_queries(linear):
    """Box scores through the engine equal the logits computed directly, for queries of many items
    packed together over several rounds (a misrouted result would break this)."""
    w = linear.module.weight.detach().double()
    items = [Item(f"i{k}", torch.from_numpy(im).permute(2, 0, 1).contiguous()) for k, im in enumerate(IMAGES)]
    rng = np.random.default_rng(1)

    def box() -> tuple[int, int, int, int]:
        y0, x0 = (int(v) for v in rng.integers(0, 31, 2))
        return y0, y0 + int(rng.integers(1, 33 - y0)), x0, x0 + int(rng.integers(1, 33 - x0))

    def gen(item: Item):
        got = []
        for _ in range(3):
            boxes = tuple(box() for _ in range(int(rng.integers(1, 11))))
            (full,) = yield [ScoreQuery(item.id)]
            (scores,) = yield [BoxQuery(item.id, (0, 2), boxes)]
            got.append((boxes, full, scores))
        return got

    with Engine(linear, workers=2, batch_size=8, unit_batches=1) as eng:
        done = dict((t.key, out) for t, out in eng.run(Task(it.id, it, gen(it)) for it in items))
    for it in items:
        x = it.x.double()
        for boxes, full, scores in done[it.id]:
            np.testing.assert_allclose(full, torch.einsum("chw,kchw->k", x, w).numpy(), rtol=1e-5, atol=1e-5)
            for (y0, y1, x0, x1), row in zip(boxes, scores, strict=True):
                xm = x.clone()
                xm[:, y0:y1, x0:x1] = 0.0
                expect = torch.einsum("chw,kchw->k", xm, w).numpy()[[0, 2]]
                np.testing.assert_allclose(row, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", sorted(JOBS))
def test_maps_do_not_depend_on_workers_or_packing(linear, method):
    """Bitwise: one worker with one-batch units and depth 1 vs 2 and 3 workers with larger units."""
    runs = []
    for opts in ({"workers": 1, "unit_batches": 1, "depth": 1}, {"workers": 2}, {"workers": 3, "unit_batches": 16}):
        with Engine(linear, batch_size=8, **opts) as eng:
            runs.append(maps(eng, method, target="top2", **JOBS[method]))
    for other in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], other, strict=True))


def test_white_box_queries_on_concurrent_workers():
    """Grad-CAM hooks its worker's module: each local worker thread has its own replica, so maps from
    2 concurrent workers equal those from 1."""
    if "gradcam" not in salient.METHODS:
        pytest.skip("gradcam is not registered")
    images = [RNG.random((32, 32, 3), dtype=np.float32) for _ in range(12)]
    runs = []
    for workers in (1, 2):
        with Engine(toy(Conv()), batch_size=4, workers=workers, unit_batches=1) as eng:
            runs.append(maps(eng, "gradcam", images, target="top2"))
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_backpressure_bounds_inflight_units_and_live_tasks():
    """40 items against a slow worker: never more than ``depth`` units in flight, ``max_live`` tasks
    alive, and the maps equal those of a fast run of the same weights."""
    images = [RNG.random((32, 32, 3), dtype=np.float32) for _ in range(40)]
    with Engine(toy(Slow(0.0)), batch_size=4, workers=1) as eng:
        fast = maps(eng, "dida", images, grids=(2, 3), weights=(0.5, 0.5))
    with Engine(toy(Slow(0.002)), batch_size=4, workers=1, depth=2, max_live=6) as eng:
        eng.executor = rec = Recording(eng.executor)
        slow = maps(eng, "dida", images, grids=(2, 3), weights=(0.5, 0.5))
        assert rec.peak == {0: 2}
        assert eng.last_run["peak_live"] == 6 and eng.last_run["units"] >= 20
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))


def test_one_item_shards_over_workers(linear):
    with Engine(linear, batch_size=8, workers=2) as eng:
        eng.explain(IMAGES[0], "rise", n_masks=400, chunk=50, cells=4)
        per = eng.executor.stats()["per_worker"]
    assert all(p["n_batches"] >= 10 and p["items_received"] == 1 for p in per)


def test_lost_units_run_again_with_identical_maps(linear):
    with Engine(linear, batch_size=8, workers=2) as eng:
        clean = maps(eng, "dida", **JOBS["dida"])
        eng.executor = Recording(eng.executor, lose=(1, 3))  # 2: no item reaches 3 losses
        lossy = maps(eng, "dida", **JOBS["dida"])
        assert eng.last_run["lost"] == 2
    assert all(np.array_equal(a, b) for a, b in zip(clean, lossy, strict=True))


def test_a_unit_lost_again_and_again_fails_its_item_only(linear):
    with Engine(linear, batch_size=8, workers=1) as eng:
        eng.executor = Recording(eng.executor, lose=(1, 2, 3, 4, 5, 6))
        out = dict(eng.explain_many(IMAGES[:1], "rise", n_masks=16, chunk=16, cells=4))
    assert isinstance(out[0], ItemError) and "lost 3 times" in str(out[0])


def test_nan_item_fails_alone(linear):
    items = [Item(f"ok{k}", torch.from_numpy(im).permute(2, 0, 1).contiguous()) for k, im in enumerate(IMAGES)]
    bad = Item("bad", torch.full((3, 32, 32), float("nan")))
    with Engine(linear, batch_size=8, workers=2) as eng:
        clean = maps(eng, "dida", items, **JOBS["dida"])
        mixed = maps(eng, "dida", items[:2] + [bad] + items[2:], **JOBS["dida"])
    assert isinstance(mixed[2], ItemError) and "NaN" in str(mixed[2])
    assert all(np.array_equal(a, b) for a, b in zip(clean, mixed[:2] + mixed[3:], strict=True))


def test_item_that_breaks_the_model_fails_alone():
    """A RuntimeError from the model on one item's inputs: units that mixed items run again one item
    at a time; only the poisoned item fails, with the model's exception."""
    model = toy(Poison(limit=50.0))
    items = [Item(f"ok{k}", torch.from_numpy(im).permute(2, 0, 1).contiguous()) for k, im in enumerate(IMAGES)]
    poisoned = Item("poisoned", torch.full((3, 32, 32), 0.5))
    poisoned.x[0, 30:, 30:] = 100.0  # only the full image and masks keeping that corner trip it
    with Engine(model, batch_size=8, workers=2) as eng:
        clean = maps(eng, "dida", items, **JOBS["dida"])
        mixed = maps(eng, "dida", [poisoned] + items, **JOBS["dida"])
        assert eng.last_run["failed_units"] >= 2  # a mixed unit split, then the item's own unit failed
    assert isinstance(mixed[0], RuntimeError) and "poisoned input" in str(mixed[0])
    assert all(np.array_equal(a, b) for a, b in zip(clean, mixed[1:], strict=True))


def test_nested_and_abandoned_runs_share_the_executor(linear):
    with Engine(linear, batch_size=8, workers=2) as eng:
        ref = maps(eng, "rise", **JOBS["rise"])
        for key, res in eng.explain_many(IMAGES, "rise", seed=3, **JOBS["rise"]):  # a run inside a run
            inner = eng.explain(IMAGES[(key + 1) % 5], "rise", seed=3, **JOBS["rise"])
            assert np.array_equal(res[0].map, ref[key][0])
            assert np.array_equal(inner.map, ref[(key + 1) % 5][0])
        for _ in eng.explain_many(IMAGES, "rise", seed=3, **JOBS["rise"]):
            break  # abandoned with units in flight
        assert all(np.array_equal(a, b) for a, b in zip(ref, maps(eng, "rise", **JOBS["rise"]), strict=True))


def test_task_errors_are_per_task(linear):
    item = Item("a", torch.zeros(3, 32, 32))

    def boom(it):
        yield [ScoreQuery(it.id)]
        raise ValueError("method bug")

    def stranger(it):
        yield [ScoreQuery("nobody-holds-this")]

    def fine(it):
        (s,) = yield [ScoreQuery(it.id)]
        return s

    with Engine(linear, batch_size=8, workers=1) as eng:
        out = {t.key: o for t, o in eng.run([Task("boom", item, boom(item)), Task("stranger", item, stranger(item)),
                                             Task("fine", item, fine(item))])}
    assert isinstance(out["boom"], ValueError)
    assert isinstance(out["stranger"], ItemError) and "nobody-holds-this" in str(out["stranger"])
    assert out["fine"].shape == (3,)


def test_summary_counts_items_and_forward_passes(linear):
    with Engine(linear, batch_size=8, workers=2) as eng:
        res = dict(eng.explain_many(IMAGES[:3], "dida", **JOBS["dida"]))
        s = eng.summary()
    per_item = 1 + 4 + 9 + 25
    assert (s.items, s.failed, s.workers, s.batch_size, s.executor) == (3, 0, 2, 8, "local")
    assert s.n_forward == 3 * per_item == sum(r[0].n_forward for r in res.values())
    assert s.seconds > 0 and s.forward_per_s_per_worker == pytest.approx(s.n_forward / s.seconds / 2)
    assert "3 items (0 failed), 117 forward passes" in str(s) and "forward/s per worker (2 local workers" in str(s)


def test_batch_size_policy(linear):
    cpu = torch.device("cpu")
    assert resolve_batch_size(linear, cpu, None) == CPU_BATCH_SIZE
    assert resolve_batch_size(linear, cpu, "12") == 12
    assert autotune_batch(linear, cpu, candidates=(2, 4), min_seconds=0.01) in (2, 4)
    for bad in (0, -3, "x"):
        with pytest.raises(SalientError, match="batch_size"):
            resolve_batch_size(linear, cpu, bad)
    with pytest.raises(SalientError, match="workers must be >= 1"):
        Engine(linear, workers=0)
    with Engine(linear, workers=2) as eng:
        assert eng.executor.batch_size == CPU_BATCH_SIZE
        assert {w.batch_size for w in eng.executor.workers} == {CPU_BATCH_SIZE}


def test_local_executor_never_imports_ray(linear):
    import subprocess
    import sys

    code = ("import sys, torch, numpy as np, salient\n"
            "m = salient.load_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2)), input_size=8)\n"
            "salient.explain(m, np.zeros((8, 8, 3), np.float32), 'dida', grids=(2,), weights=(1.0,))\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_salient_explain_uses_the_cached_local_engine(linear):
    a = salient.explain(linear, IMAGES[0], "dida", seed=3, **JOBS["dida"])
    with Engine(linear, batch_size=CPU_BATCH_SIZE, workers=1) as eng:
        b = eng.explain(IMAGES[0], "dida", seed=3, **JOBS["dida"])
    assert np.array_equal(a.map, b.map)
