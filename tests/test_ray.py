"""RayExecutor: the same maps as the local executor (bitwise, CPU), killed workers, a lost node,
sharding, backpressure. One Ray session for the whole test session (``ray_session``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from engine_toys import Recording, Slow
from toy_models import Linear, toy

from salient.engine import Engine
from salient.engine.worker import BATCH_CANDIDATES
from salient.errors import SalientError
from salient.methods import METHODS

pytestmark = pytest.mark.ray

RNG = np.random.default_rng(7)
IMAGES = [RNG.random((32, 32, 3), dtype=np.float32) for _ in range(4)]
JOBS = {
    "rise": {"n_masks": 240, "chunk": 30, "cells": 4},
    "dida": {"grids": (2, 3, 5, 7), "weights": (0.1, 0.2, 0.3, 0.4)},
    "borex": {"iterations": 5, "sizes": (6.0, 10.0), "prior.n_masks": 40},
    "gp": {"iterations": 5, "sizes": (6.0, 10.0)},
}


def maps(eng: Engine, method: str, images=IMAGES, **kw) -> list[np.ndarray]:
    out = dict(eng.explain_many(images, method, target="top2", seed=11, **JOBS[method], **kw))
    assert not any(isinstance(v, Exception) for v in out.values()), out
    return [np.stack([s.map for s in out[k]]) for k in sorted(out)]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def wait_all_ready(eng: Engine, timeout: float = 120.0) -> None:
    """Let a restarted worker come back (its probe completes inside ``wait``)."""
    ex, deadline = eng.executor, time.monotonic() + timeout
    while len(ex.ready()) < ex.n_workers and time.monotonic() < deadline:
        ex.wait(0.5)
    assert len(ex.ready()) == ex.n_workers


@pytest.fixture(scope="module")
def engines(ray_session):
    model = toy(Linear())
    engs = {"local": Engine(model, batch_size=8, workers=2),
            "ray1": Engine(model, executor="ray", workers=1, batch_size=8),
            "ray2": Engine(model, executor="ray", workers=2, batch_size=8)}
    yield engs
    for e in engs.values():
        e.close()


@pytest.mark.parametrize("method", ["rise", "dida", "borex", "gp"])
def test_same_maps_from_local_and_ray_with_1_and_2_workers(engines, method):
    if method not in METHODS:
        pytest.skip(f"method {method} is not registered")
    local = maps(engines["local"], method)
    assert same(local, maps(engines["ray1"], method))
    assert same(local, maps(engines["ray2"], method))


def test_one_item_shards_over_two_ray_workers(engines):
    eng = engines["ray2"]
    wait_all_ready(eng)
    before = eng.executor.stats()["per_worker"]
    eng.explain(RNG.random((32, 32, 3), dtype=np.float32), "rise", n_masks=400, chunk=25, cells=4)
    after = eng.executor.stats()["per_worker"]
    for b, a in zip(before, after, strict=True):
        assert a["n_batches"] - b["n_batches"] >= 10
        assert a["items_received"] - b["items_received"] == 1


def test_worker_killed_mid_job_gives_identical_maps(engines):
    eng = engines["ray2"]
    wait_all_ready(eng)
    ref = maps(engines["local"], "rise")
    restarts = eng.executor.restarts
    import ray

    ray.get(eng.executor.actors[0].crash_after.remote(4))  # os._exit on its 4th batch from now
    got = maps(eng, "rise")
    assert eng.executor.restarts == restarts + 1 and eng.last_run["lost"] >= 1
    assert same(ref, got)
    wait_all_ready(eng)  # back, with an empty cache: items are sent again
    assert same(ref, maps(eng, "rise"))


def test_backpressure_against_a_slow_ray_worker(engines):
    images = [RNG.random((32, 32, 3), dtype=np.float32) for _ in range(24)]
    with Engine(toy(Slow(0.0)), batch_size=4, workers=1) as eng:
        fast = maps(eng, "dida", images)
    with Engine(toy(Slow(0.003)), executor="ray", workers=1, batch_size=4, depth=2, max_live=5) as eng:
        eng.executor = rec = Recording(eng.executor)
        slow = maps(eng, "dida", images)
        assert rec.peak == {0: 2} and eng.last_run["units"] >= 12 and eng.last_run["peak_live"] == 5
    assert same(fast, slow)


@pytest.mark.slow
def test_autotuned_batch_size_is_measured_once_on_a_worker_slot(engines):
    """``batch_size="auto"`` (the GPU default): one autotune task on a worker-like slot, before any
    actor starts; every actor gets that size."""
    with Engine(toy(Linear()), executor="ray", workers=1, batch_size="auto") as eng:
        b = eng.executor.batch_size
        assert b in BATCH_CANDIDATES
        assert [p["batch_size"] for p in eng.executor.stats()["per_worker"]] == [b]


def test_resource_checks_fail_fast(ray_session):
    model = toy(Linear())
    with pytest.raises(SalientError, match=r"workers must lie in \[1, "):
        Engine(model, executor="ray", workers=99)
    with pytest.raises(SalientError, match="0 GPUs"):  # instead of an actor waiting forever for a GPU
        Engine(model, executor="ray", device="cuda")


NODE_JOB = r"""
import json, sys, time
import numpy as np
import ray
from ray.cluster_utils import Cluster
from engine_toys import Slow
from toy_models import toy
from salient.engine import Engine
from salient.engine.worker import BATCH_CANDIDATES
from salient.engine.ray_executor import local_runtime_env

model = toy(Slow(0.004))
rng = np.random.default_rng(0)
images = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(6)]
params = dict(n_masks=320, chunk=16, cells=4, seed=5)
with Engine(model, batch_size=8, workers=1) as eng:
    ref = {k: r[0].map for k, r in eng.explain_many(images, "rise", **params)}
store = {"object_store_memory": 80 << 20}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **store})
node = cluster.add_node(num_cpus=1, **store)
ray.init(address=cluster.address, log_to_driver=False, runtime_env=local_runtime_env())
try:
    eng = Engine(model, executor="ray", workers=2, batch_size=8, unit_batches=1)
    nodes = [s["node"] for s in eng.executor.stats()["per_worker"]]
    removed = []

    def progress(n):
        if not removed:
            cluster.remove_node(node)  # the second node, with one worker and its units in flight
            removed.append(n)

    got = {k: r[0].map for k, r in eng.explain_many(images, "rise", on_progress=progress, **params)}
    out = {"on_node": node.node_id in nodes, "removed": bool(removed), "lost": eng.last_run["lost"],
           "lost_worker": nodes.index(node.node_id) if node.node_id in nodes else -1,
           "equal": sorted(got) == sorted(ref) and all(np.array_equal(ref[k], got[k]) for k in ref),
           "ready": eng.executor.ready()}
    eng.close()
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_job_survives_the_loss_of_a_node():
    """A 2-node cluster on this machine (its own Ray, in a subprocess: the session's Ray stays apart):
    the node holding a worker is removed mid-job; the job completes on the other with the same maps."""
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", NODE_JOB], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tests)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    out = json.loads(line[7:])
    assert out["on_node"] and out["removed"] and out["lost"] >= 1, out
    assert out["equal"], out
    assert out["ready"] == [1 - out["lost_worker"]], out  # the lost worker never came back (no room for it)
