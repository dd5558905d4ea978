"""The real model (EfficientNet-Lite0, CPU): maps are bitwise identical whatever the executor, the
number of workers and the packing. Its outputs depend in the last bits on the batch shape and on the
intra-op thread count, so this holds only because every worker shares one batch size and forwards
with the same thread count (see salient/engine/worker.py)."""

from __future__ import annotations

import numpy as np
import pytest

from salient.engine import Engine

PARAMS = {"n_masks": 48, "chunk": 16, "cells": 7}


@pytest.fixture(scope="module")
def local_maps(real_model, samples):
    with Engine(real_model, batch_size=8, workers=1, unit_batches=1) as eng:
        return [eng.explain(samples[n], "rise", seed=2, **PARAMS).map for n in ("chelsea", "coffee")]


@pytest.mark.slow
def test_real_model_local_workers_and_packing(real_model, samples, local_maps):
    with Engine(real_model, batch_size=8, workers=2, unit_batches=8) as eng:
        out = dict(eng.explain_many([samples["chelsea"], samples["coffee"]], "rise", seed=2, **PARAMS))
    assert all(np.array_equal(local_maps[k], out[k][0].map) for k in (0, 1))


@pytest.mark.slow
@pytest.mark.ray
def test_real_model_local_equals_ray(ray_session, real_model, samples, local_maps):
    with Engine(real_model, executor="ray", batch_size=8, workers=2) as eng:
        out = dict(eng.explain_many([samples["chelsea"], samples["coffee"]], "rise", seed=2, **PARAMS))
    assert all(np.array_equal(local_maps[k], out[k][0].map) for k in (0, 1))
