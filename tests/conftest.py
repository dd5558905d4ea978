"""Shared fixtures: the real model once per session; a local Ray session once (tests marked ``ray``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def real_model():
    import salient

    return salient.load_model("efficientnet-lite0")


@pytest.fixture(scope="session")
def real_engine(real_model):
    import salient

    with salient.Engine(real_model, batch_size=8) as eng:
        yield eng


@pytest.fixture(scope="session")
def samples():
    import salient

    return {im.name: im for im in salient.data.sample_images()}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (tests marked ``ray``): 4 logical CPUs (2 workers,
    a second engine's workers, a task), a small object store. Workers import what this process can."""
    import ray

    from salient.engine.ray_executor import start_local_ray

    started = not ray.is_initialized()
    start_local_ray(num_cpus=4, object_store_memory=96 * 2**20)
    yield ray
    if started:
        ray.shutdown()
