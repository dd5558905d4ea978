"""Resume after SIGKILL: the driver is killed mid-job (twice), the same command is run again, and
the store ends equal to an undisturbed run's: same maps bitwise, same rows apart from timings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
import zarr
from job_toys import spec as toy_spec
from PIL import Image as PILImage

from salient.store import read_results

TESTS = Path(__file__).parent
N_ITEMS = 24


def make_job(root: Path, out: str) -> Path:
    job = {
        "model": toy_spec("slow"), "source": {"images": "photos/*.png"}, "targets": "top1",
        "methods": [{"name": "rise", "n_masks": 16, "chunk": 8},
                    {"name": "dida", "grids": [2, 4], "weights": [0.5, 0.5], "targets": "top2"}],
        "metrics": {"kinds": ["deletion"], "step": 256},
        "executor": {"batch_size": 8, "workers": 1, "max_live": 2}, "seed": 5, "out": out,
        "store": {"shard_items": 4, "flush_rows": 2, "checkpoint_seconds": 0.3},
    }
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def start(job: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "SALIENT_TOY_SLEEP": str(sleep)}
    return subprocess.Popen([sys.executable, "-m", "salient", "run", str(job), "--quiet"], cwd=job.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(job: Path) -> None:
    p = start(job, 0.0)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err


def rows_written(out: Path) -> int:
    parts = list((out / "results").glob("part-*.parquet"))
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def check_readable(out: Path) -> None:
    """No torn Parquet part, no array that fails to read."""
    for p in (out / "results").glob("part-*.parquet"):
        pq.read_table(p)
    maps = zarr.open_group(out / "saliency.zarr", mode="r", use_consolidated=False).get("maps")
    if maps is not None:
        for _, arr in maps.arrays():
            arr[:]


def kill_midway(job: Path, after_rows: int, delay: float) -> None:
    p = start(job, 0.03)
    out = job.parent / job.stem
    deadline = time.monotonic() + 120
    while rows_written(out) < after_rows:
        assert p.poll() is None, "the job ended before it could be killed: " + p.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_undisturbed_run(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(N_ITEMS):
        PILImage.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "photos" / f"{i:02d}.png")
    (tmp_path / "photos" / "07b.png").write_bytes(b"")
    ref, job = make_job(tmp_path, "ref"), make_job(tmp_path, "killed")
    finish(ref)
    total = len(read_results(tmp_path / "ref"))
    assert total == N_ITEMS * 3 + 2

    kill_midway(job, after_rows=3, delay=0.05)
    check_readable(tmp_path / "killed")
    first = rows_written(tmp_path / "killed")
    assert 0 < first < total  # killed in the middle
    kill_midway(job, after_rows=first + 10, delay=0.13)  # the rerun is killed too, later
    check_readable(tmp_path / "killed")
    assert rows_written(tmp_path / "killed") < total
    finish(job)

    a, b = read_results(tmp_path / "ref"), read_results(tmp_path / "killed")
    pd.testing.assert_frame_equal(a.drop(columns=["seconds"]), b.drop(columns=["seconds"]))
    raw = sum(len(pq.read_table(p)) for p in (tmp_path / "killed" / "results").glob("part-*.parquet"))
    assert raw == total  # superseded rows were compacted away
    za = zarr.open_group(tmp_path / "ref" / "saliency.zarr", mode="r")
    zb = zarr.open_group(tmp_path / "killed" / "saliency.zarr", mode="r")
    for m in ("rise", "dida"):
        x, y = za[f"maps/{m}"], zb[f"maps/{m}"]
        assert x.shape == y.shape and x.shape[0] == N_ITEMS + 1
        assert np.array_equal(x[:], y[:], equal_nan=True)
        assert np.isfinite(y[:]).all(axis=tuple(range(1, y.ndim))).sum() == N_ITEMS
    assert zb.attrs["complete"] is True and zb.attrs["runs"] == 3
    assert not list((tmp_path / "killed").rglob("*.partial")) and not list((tmp_path / "killed").rglob(".*.tmp"))
