"""RayExecutor on GPUs that do not exist: a 2-node Ray (in a subprocess: the session's Ray stays apart)
whose head declares no GPUs and whose second node declares 2 GPUs of type H100. GPU actors land one per
GPU (two per GPU at ``gpus_per_worker: 0.5``), never on the head, pinned through Ray's accelerator type;
each runs on the CPU (torch sees no device there) and gives the local executor's maps bit for bit. An
accelerator type no node has, and ``gpus_per_worker`` <= 0, fail at once with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy_models import Linear, toy

from salient.engine import Engine
from salient.engine.ray_placement import gpu_capacity, parse_gpus_per_worker
from salient.errors import SalientError

GPU_JOB = r"""
import json
import numpy as np
import ray
from ray.cluster_utils import Cluster
from toy_models import Linear, toy
from salient.engine import Engine
from salient.engine.ray_executor import local_runtime_env
from salient.errors import SalientError

model = toy(Linear())
rng = np.random.default_rng(3)
images = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(2)]
params = dict(n_masks=96, chunk=12, cells=4, seed=5)

def rise(eng):
    return {k: r[0].map for k, r in eng.explain_many(images, "rise", **params)}

with Engine(model, batch_size=4, workers=1) as eng:
    ref = rise(eng)
store = {"object_store_memory": 80 << 20}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
                                                        **store})
gpu_node = cluster.add_node(num_cpus=4, num_gpus=2, resources={"accelerator_type:H100": 1}, **store)
ray.init(address=cluster.address, log_to_driver=False, runtime_env=local_runtime_env())
out = {"gpu_node": gpu_node.node_id}
try:
    for name, opts in {"h100": {"accelerator": "H100"}, "half": {"gpus_per_worker": 0.5}}.items():
        with Engine(model, executor="ray", batch_size=4, **opts) as eng:
            st = eng.executor.stats()
            got = rise(eng)
            out[name] = {"device": st["device"], "per_worker": [{k: p[k] for k in (
                "gpu_ids", "node", "device", "threads", "resources")} for p in st["per_worker"]],
                "equal": sorted(got) == sorted(ref) and all(np.array_equal(ref[k], got[k]) for k in ref)}
    for name, opts in {"a100": {"accelerator": "A100"}, "zero": {"gpus_per_worker": 0},
                       "too_many": {"gpus_per_worker": 0.5, "workers": 5}}.items():
        try:
            Engine(model, executor="ray", batch_size=4, **opts).close()
            out[name] = None
        except SalientError as e:
            out[name] = str(e)
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def gpu_job():
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", GPU_JOB], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tests)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    return json.loads(line[7:])


@pytest.mark.ray
def test_one_actor_per_fake_gpu_pinned_to_h100_off_the_head_on_the_cpu(gpu_job):
    run = gpu_job["h100"]
    workers = run["per_worker"]
    assert run["device"] == "cuda" and len(workers) == 2
    assert sorted(i for w in workers for i in w["gpu_ids"]) == ["0", "1"]  # one GPU each, distinct
    assert {w["node"] for w in workers} == {gpu_job["gpu_node"]}  # never the head (it declares no GPUs)
    for w in workers:
        assert w["resources"]["GPU"] == 1 and w["resources"].get("accelerator_type:H100", 0) > 0
        assert w["device"] == "cpu" and w["threads"] == 1  # torch sees no GPU there: the CPU's rule
    assert run["equal"]  # the local executor's maps, bit for bit


@pytest.mark.ray
def test_half_a_gpu_per_worker_puts_two_actors_on_each_gpu(gpu_job):
    run = gpu_job["half"]
    ids = sorted(i for w in run["per_worker"] for i in w["gpu_ids"])
    assert ids == ["0", "0", "1", "1"]
    assert all(w["resources"]["GPU"] == 0.5 and "accelerator_type:H100" not in w["resources"]
               for w in run["per_worker"])
    assert run["equal"]


@pytest.mark.ray
def test_bad_gpu_options_fail_fast_with_one_line(gpu_job):
    assert gpu_job["a100"] == "accelerator A100: no node of the Ray cluster has it (accelerator types there: H100)"
    assert gpu_job["zero"] == "gpus_per_worker must be > 0, got 0"
    assert gpu_job["too_many"].startswith("workers must lie in [1, 4] on this Ray cluster (2 GPUs, 0.5 per worker)")


@pytest.mark.parametrize(("value", "match"), [(0, "must be > 0, got 0"), (-1, "got -1"), ("x", "got 'x'"),
                                              (float("nan"), "got nan"), (True, "got True"),
                                              (1.5, "above 1 must be a whole number")])
def test_gpus_per_worker_must_be_positive_and_whole_above_one(value, match):
    with pytest.raises(SalientError, match=match) as e:
        parse_gpus_per_worker(value)
    assert "\n" not in str(e.value)


def test_bad_gpu_options_fail_before_ray_starts(monkeypatch):
    """The option checks come before Ray starts (or is joined): starting it here would fail the test."""
    from salient.engine import ray_executor

    def no_ray(*_, **__):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_executor.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_executor, "start_local_ray", no_ray)
    monkeypatch.setattr(ray_executor, "join_ray", no_ray)
    for opts, match in [({"gpus_per_worker": 0}, "gpus_per_worker must be > 0, got 0"),
                        ({"accelerator": "accelerator_type:H100"}, "not an accelerator type"),
                        ({"accelerator": "H100", "address": "auto", "precision": "fp8"}, "precision 'fp8'"),
                        ({"kernels": "cuda"}, "kernels 'cuda'")]:
        with pytest.raises(SalientError, match=match):
            Engine(toy(Linear()), executor="ray", **opts)


def test_capacity_counts_gpus_and_cpus_per_node():
    """Per node: GPUs * floor(1 / g) workers (g <= 1) or floor(GPUs / g), at most its CPUs; only nodes
    with the accelerator type when one is asked for. Two 1-GPU nodes hold no 2-GPU worker."""
    h100 = {"CPU": 16, "GPU": 2, "accelerator_type:H100": 1}
    l4 = {"CPU": 2, "GPU": 1, "accelerator_type:L4": 1}
    head = {"CPU": 8}
    res = {"CPU": 26, "GPU": 3, "accelerator_type:H100": 1, "accelerator_type:L4": 1}
    nodes = [head, h100, l4]
    assert gpu_capacity(res, nodes, 1, None)[0] == 3
    assert gpu_capacity(res, nodes, 0.5, None)[0] == 4 + 2
    assert gpu_capacity(res, nodes, 0.3, None)[0] == 6 + 2  # 3 per GPU; the L4 node has 2 CPUs
    assert gpu_capacity(res, nodes, 2, None)[0] == 1
    assert gpu_capacity(res, [head, l4, l4], 2, None)[0] == 0
    assert gpu_capacity(res, nodes, 0.5, "H100") == (4, "2 GPUs on H100 nodes, 0.5 per worker")
    with pytest.raises(SalientError, match=r"accelerator A100: .*\(accelerator types there: H100, L4\)$"):
        gpu_capacity(res, nodes, 1, "A100")
