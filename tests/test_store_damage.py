"""A damaged store says so, and is mended without losing an intact map (issue 20, sections 1-2).

Lost maps: a shard file deleted, truncated or with a flipped byte makes ``show`` report the maps
missing or damaged (not "complete"), and the rerun redoes exactly the affected (item, method)
pairs and ends bit for bit equal to an undisturbed run. Damaged metadata (a truncated results
part, a truncated ``zarr.json`` of the root, the ``maps`` group or an array, the whole
``saliency.zarr`` gone): ``show`` and ``run`` fail with one line naming the file and ``salient
repair``, the refused run changes no file, ``salient repair`` mends the store and the rerun redoes
only what was lost. Every store here is a copy of one reference run (toy model, 6 items, shards of
2, one results part per 2 rows).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
import zarr
from job_toys import spec as toy_spec
from PIL import Image as PILImage

from salient.cli import main
from salient.jobs.runner import run_job
from salient.store import read_results

N = 6
METHODS = ("rise", "dida")
CHECK_COLUMNS = ["position", "method", "status", "index", "rank", "item_id"]


def job_yaml(root: Path, photos: Path, out: str) -> Path:
    job = {"model": toy_spec("linear"), "source": {"images": str(photos / "*.png")}, "targets": "top1",
           "methods": [{"name": "rise", "n_masks": 16, "chunk": 8},
                       {"name": "dida", "grids": [2, 4], "weights": [0.5, 0.5], "targets": "top2"}],
           "metrics": {"kinds": ["deletion"], "step": 256}, "executor": {"batch_size": 8}, "seed": 5,
           "out": out, "store": {"shard_items": 2, "flush_rows": 2}}
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def photos(d: Path) -> Path:
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N):
        PILImage.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(d / f"{i:02d}.png")
    return d


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """The undisturbed run's folder (``ref/``, beside ``photos/``)."""
    root = tmp_path_factory.mktemp("damage")
    summary = run_job(job_yaml(root, photos(root / "photos"), "ref"), progress=False, echo=None)
    assert summary.complete and summary.done_now == N
    return root / "ref"


@pytest.fixture
def copy(ref, tmp_path) -> tuple[Path, Path]:
    """(job, out): the same job writing ``tmp_path/out``, a copy of the reference store."""
    shutil.copytree(ref, tmp_path / "out")
    return job_yaml(tmp_path, ref.parent / "photos", "out"), tmp_path / "out"


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def redone(out: Path) -> set[tuple[str, int]]:
    """The (method, position) pairs whose rows the second run wrote (its parts are ``part-r0002-*``)."""
    rows = [pq.read_table(p, columns=["method", "position"]).to_pylist()
            for p in (out / "results").glob("part-r0002-*.parquet")]
    return {(r["method"], r["position"]) for part in rows for r in part}


def assert_equals_ref(ref: Path, out: Path) -> None:
    a, b = read_results(ref).drop(columns=["seconds"]), read_results(out).drop(columns=["seconds"])
    pd.testing.assert_frame_equal(a, b)
    za, zb = zarr.open_group(ref / "saliency.zarr", mode="r"), zarr.open_group(out / "saliency.zarr", mode="r")
    for m in METHODS:
        x, y = za[f"maps/{m}"], zb[f"maps/{m}"]
        assert x.shape == y.shape and np.array_equal(x[:], y[:], equal_nan=True), m
    assert zb.attrs["complete"] is True
    assert lost_maps(out).n_lost == 0


def lost_maps(out: Path):
    from salient.store import check_maps  # imported here: each test fails on its own assertion without it

    return check_maps(out, read_results(out, columns=CHECK_COLUMNS))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- lost maps
def _delete(p: Path) -> None:
    p.unlink()


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[40:48] = bytes(b ^ 0xFF for b in data[40:48])  # inside the shard's first chunk
    p.write_bytes(bytes(data))


SHARD_CASES = {  # shard file, damage, the (method, position) pairs lost, how show counts them
    "rise shard deleted": ("maps/rise/c/1/0/0", _delete, {("rise", 2), ("rise", 3)}, "missing"),
    "rise shard truncated": ("maps/rise/c/1/0/0", _truncate, {("rise", 2), ("rise", 3)}, "damaged"),
    "one chunk flipped": ("maps/rise/c/1/0/0", _flip, {("rise", 2)}, "damaged"),
    "topK shard deleted": ("maps/dida/c/2/0/0/0", _delete, {("dida", 4), ("dida", 5)}, "missing"),
    "topK chunk flipped": ("maps/dida/c/0/0/0/0", _flip, {("dida", 0)}, "damaged"),
}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_lost_maps_are_reported_and_exactly_they_are_redone(case, ref, copy, capsys):
    job, out = copy
    rel, damage, lost, kind = SHARD_CASES[case]
    damage(out / "saliency.zarr" / rel)

    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "missing or damaged" in shown[0] and ", complete" not in shown[0], shown
    method = next(iter(lost))[0]
    cols = shown[1].split()
    row = dict(zip(cols, next(r for r in shown[2:] if r.split()[0] == method).split(), strict=False))
    per_item = 2 if method == "dida" else 1  # top2: two maps an item
    assert (int(row["ok"]), int(row[kind]), int(row["maps"])) == (N - len(lost), len(lost), per_item * (N - len(lost)))
    check = lost_maps(out)
    assert {(m, p) for m, ps in check.lost.items() for p in ps} == lost
    assert {s for ps in check.lost.values() for s in ps.values()} == {kind}

    summary = run_job(job, progress=False, echo=None)
    assert (summary.done_now, summary.skipped) == (len({p for _, p in lost}), N - len({p for _, p in lost}))
    assert summary.lost == {method: {"missing": 0, "damaged": 0, kind: len(lost)}}
    assert redone(out) == lost
    assert_equals_ref(ref, out)


def test_check_reads_each_shard_file_once(ref, monkeypatch):
    from salient.store import check as check_mod

    reads = []
    orig = check_mod._read_bytes
    monkeypatch.setattr(check_mod, "_read_bytes", lambda p: reads.append(p) or orig(p))
    check = lost_maps(ref)
    assert check.n_lost == 0 and check.shards == 6 == len(reads) == len(set(reads))  # 3 shards x 2 methods
    assert check.nbytes == sum(p.stat().st_size for p in reads)


# -- damaged metadata
def _first_part(out: Path) -> Path:
    return sorted((out / "results").glob("part-*.parquet"))[0]


def _rows_of(part: Path) -> set[tuple[str, int]]:
    return {(r["method"], r["position"]) for r in pq.read_table(part, columns=["method", "position"]).to_pylist()}


META_CASES = {  # the damaged file (from OUT), the damage, what the rerun redoes (None: the rows of the file)
    "results part truncated": (_first_part, _truncate, None),
    "array zarr.json truncated": (lambda out: out / "saliency.zarr/maps/rise/zarr.json", _truncate, set()),
    "root zarr.json truncated": (lambda out: out / "saliency.zarr/zarr.json", _truncate, set()),
    "maps group zarr.json truncated": (lambda out: out / "saliency.zarr/maps/zarr.json", _truncate, set()),
    "saliency.zarr deleted": (lambda out: out / "saliency.zarr", lambda p: shutil.rmtree(p),
                              {(m, p) for m in METHODS for p in range(N)}),
}


@pytest.mark.parametrize("case", META_CASES)
def test_damaged_metadata_is_one_line_refused_without_change_and_repaired(case, ref, copy, capsys):
    job, out = copy
    where, damage, lost = META_CASES[case]
    path = where(out)
    lost = _rows_of(path) if lost is None else lost
    damage(path)
    before = snapshot(out)

    for argv in (["show", str(out)], ["run", str(job), "--quiet"]):
        assert main(argv) == 2, argv
        err = one_line(capsys.readouterr().err)
        assert err.startswith(f"salient: error: {path}: ") and f"salient repair {out}" in err, err
        assert snapshot(out) == before, argv  # nothing written, no flag flipped

    assert main(["repair", str(out)]) == 0
    said = capsys.readouterr().out
    assert str(path) in said and "salient run" in said
    assert main(["run", str(job), "--quiet"]) == 0
    ran = capsys.readouterr().out
    n = len({p for _, p in lost})
    assert f"({n} explained now, {N - n} done before)" in ran, ran
    assert redone(out) == lost
    assert_equals_ref(ref, out)
    assert main(["show", str(out)]) == 0 and ", complete" in capsys.readouterr().out.splitlines()[0]


def test_repair_of_an_intact_store_changes_nothing(ref, copy, capsys):
    _, out = copy
    before = snapshot(out)
    assert main(["repair", str(out)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert snapshot(out) == before


def test_a_refused_run_changes_nothing(tmp_path, capsys):
    """A source changed since the first run is refused before the store is opened for writing."""
    job = job_yaml(tmp_path, photos(tmp_path / "photos"), "out")
    assert main(["run", str(job), "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "out")
    (tmp_path / "photos" / "00.png").rename(tmp_path / "photos" / "00b.png")
    assert main(["run", str(job), "--quiet"]) == 2
    assert "the item at position 0 is now '00b.png'" in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "out") == before
