"""The store: positions are rows, whole-shard writes, resume of partial shards, damaged shards,
odd sizes, superseded rows, the single-writer lock, xarray."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

from salient.errors import SalientError
from salient.saliency import Saliency
from salient.store import COMPRESSORS, Store, check_maps, compact_results, item_key, read_map, read_results
from salient.store import files as store_mod
from salient.store.pipeline import _Writer
from salient.store.shards import _ShardCodec


def sal(m: np.ndarray, method: str = "rise", target: int = 1, label: str = "one", signed: bool = False) -> Saliency:
    return Saliency(m, signed, method, target, label, base_score=0.5, seed=3, params={"n_masks": 10})


def maps_for(n: int, shape=(8, 8), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


def crash(store: Store) -> None:
    """Abandon a store without closing it (what a SIGKILL leaves), releasing only the lock. The
    background writer first finishes what was submitted to it (a kill could come at any point of
    that; zarr and the store write files to temp names, so every point leaves whole files)."""
    store._writer.close()
    store._lock.release()


def slow_shard_writes(monkeypatch, seconds: float = 0.2) -> None:
    """Every shard's write starts ``seconds`` late on the writer (the caller runs ahead)."""
    orig = Store._shard_job

    def slow(self, *args):
        time.sleep(seconds)
        yield from orig(self, *args)

    monkeypatch.setattr(Store, "_shard_job", slow)


@pytest.mark.parametrize("mode", ["background", "caller", "zarr"])
def test_positions_are_rows_whatever_the_order(tmp_path, monkeypatch, mode):
    """Shards written on the background threads, on the caller's, or by zarr's array API (codecs
    without a synchronous path) hold the same maps."""
    if mode == "zarr":
        monkeypatch.setattr(_ShardCodec, "make", classmethod(lambda cls, arr: None))
    maps = maps_for(10)
    order = [3, 0, 1, 2, 9, 5, 4, 7, 6, 8]
    with Store(tmp_path, "toy", {"a": 1}, shard_items=4, flush_rows=3, threads=0 if mode == "caller" else 2) as st:
        assert (st._writer.threads == 0) == (mode == "caller")
        for p in order:
            if p == 5:
                st.add_error(f"i{p}", f"s{p}", "rise", "bad\nfile", position=p)
            else:
                st.add(f"i{p}", f"s{p}", [sal(maps[p])], position=p)
        assert (st._stacks["rise"].codec is None) == (mode == "zarr")
    arr = zarr.open_group(tmp_path / "saliency.zarr", mode="r")["maps/rise"]
    assert arr.shape == (10, 8, 8) and arr.chunks == (1, 8, 8) and arr.shards == (4, 8, 8)
    for p in range(10):
        if p == 5:
            assert np.isnan(arr[p]).all()
        else:
            assert np.array_equal(arr[p], maps[p])
    df = read_results(tmp_path)
    assert list(df["position"]) == list(range(10))
    assert list(df["index"]) == [p if p != 5 else -1 for p in range(10)]
    err = df[df["status"] == "error"].iloc[0]
    assert err["error"] == "bad file" and err["item_id"] == "i5"
    for _, row in df[df["status"] == "ok"].iterrows():
        assert np.array_equal(read_map(tmp_path, row), maps[int(row["position"])])


def test_shards_are_written_whole(tmp_path, monkeypatch):
    """Every write covers a whole shard (rows s0 .. min(s0 + shard, N)): never a piece of one."""
    writes = []
    orig = Store._shard_job

    def spy(self, stack, s0, hi, data, path):
        writes.append((s0, hi, stack.length))
        return orig(self, stack, s0, hi, data, path)

    monkeypatch.setattr(Store, "_shard_job", spy)
    maps = maps_for(10)
    with Store(tmp_path, shard_items=4, checkpoint_seconds=1e9) as st:
        for p in [1, 0, 3, 2, 5, 4, 6, 7, 9, 8]:
            st.add(f"i{p}", "", [sal(maps[p])], position=p)
    assert [(a, b) for a, b, _ in writes] == [(0, 4), (4, 8), (8, 10)]
    assert all(b - a == 4 or b == n for a, b, n in writes)


def test_rows_only_after_their_shard(tmp_path):
    """A crash before a shard is written loses its rows too: no ok row without its map."""
    maps = maps_for(6)
    st = Store(tmp_path, shard_items=4, flush_rows=1, checkpoint_seconds=1e9)
    for p in range(6):
        st.add(f"i{p}", "", [sal(maps[p])], position=p)
    crash(st)  # shard 0 complete and written, shard 1 (positions 4, 5) only in memory
    df = read_results(tmp_path)
    assert list(df["position"]) == [0, 1, 2, 3]
    for _, row in df.iterrows():
        assert np.array_equal(read_map(tmp_path, row), maps[int(row["position"])])


def test_resume_keeps_maps_of_a_partial_shard(tmp_path):
    maps = maps_for(6)
    st = Store(tmp_path, shard_items=4, checkpoint_seconds=1e9)
    for p in (0, 1, 4):
        st.add(f"i{p}", "", [sal(maps[p])], position=p)
    st.flush()  # a checkpoint: partial shards written whole, their rows released
    crash(st)
    done = set(read_results(tmp_path)["position"])
    assert done == {0, 1, 4}
    with Store(tmp_path, shard_items=4) as st:
        for p in range(6):
            if p in done:
                st.skip(p, "rise")
            else:
                st.add(f"i{p}", "", [sal(maps[p])], position=p)
    arr = zarr.open_group(tmp_path / "saliency.zarr", mode="r")["maps/rise"]
    assert arr.shape[0] == 6
    for p in range(6):
        assert np.array_equal(arr[p], maps[p])
    assert list(read_results(tmp_path)["position"]) == list(range(6))


def test_a_damaged_chunk_loses_only_its_map(tmp_path):
    """A flipped byte fails one chunk's CRC32C, a truncated file loses its index (every map of the
    shard); a store reopened to redo them keeps every intact map of those shards."""
    maps = maps_for(8)
    with Store(tmp_path, shard_items=4) as st:
        for p in range(8):
            st.add(f"i{p}", "", [sal(maps[p])], position=p)
    shard = tmp_path / "saliency.zarr" / "maps" / "rise" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[40:48] = b"\xff" * 8  # flip bytes inside the shard's first chunk (position 4)
    shard.write_bytes(bytes(data))
    assert check_maps(tmp_path, read_results(tmp_path)).lost == {"rise": {4: "damaged"}}
    truncated = tmp_path / "saliency.zarr" / "maps" / "rise" / "c" / "0" / "0" / "0"
    truncated.write_bytes(truncated.read_bytes()[:100])
    lost = check_maps(tmp_path, read_results(tmp_path)).lost["rise"]
    assert lost == {0: "damaged", 1: "damaged", 2: "damaged", 3: "damaged", 4: "damaged"}
    with Store(tmp_path, shard_items=4) as st:
        for p in range(8):
            if p in lost:
                st.add(f"i{p}", "", [sal(maps[p])], position=p)
            else:
                st.skip(p, "rise")
    arr = zarr.open_group(tmp_path / "saliency.zarr", mode="r")["maps/rise"]
    assert all(np.array_equal(arr[p], maps[p]) for p in range(8))
    assert check_maps(tmp_path, read_results(tmp_path)).n_lost == 0


def test_maps_of_odd_sizes_are_checked_too(tmp_path):
    with Store(tmp_path, shard_items=2) as st:
        st.add("a", "", [sal(maps_for(1)[0])], position=0)
        st.add("b", "", [sal(m) for m in maps_for(2, shape=(5, 7))], position=1)  # items/b/rise, 2 targets
        st.add("c", "", [sal(maps_for(1, shape=(6, 6))[0])], position=2)
    assert check_maps(tmp_path, read_results(tmp_path)).n_lost == 0
    node = tmp_path / "saliency.zarr" / "items"
    chunk = next(p for p in (node / "b" / "rise").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-3])
    (node / "c" / "rise" / "zarr.json").unlink()  # the array is gone (its chunks stay)
    assert check_maps(tmp_path, read_results(tmp_path)).lost == {"rise": {1: "damaged", 2: "missing"}}


def test_topk_adds_a_target_axis_and_odd_sizes_go_to_items(tmp_path):
    maps = maps_for(9)
    with Store(tmp_path, shard_items=2) as st:
        for p in range(3):
            st.add(f"dir/i{p}", "", [sal(maps[3 * p + j], "dida", j, f"c{j}", True) for j in range(3)], position=p)
        odd = np.arange(12, dtype=np.float32).reshape(3, 4)
        st.add("dir/odd", "", [sal(odd, "dida", 0, "c0", True)], position=3)
    ds = xr.open_zarr(tmp_path / "saliency.zarr", group="maps")
    assert ds["dida"].dims == ("item", "top3", "y", "x") and ds["dida"].shape == (4, 3, 8, 8)
    assert ds["dida"].attrs["signed"] is True and ds["dida"].attrs["target"] == "top3"
    assert np.array_equal(ds["dida"].values[1, 2], maps[5])
    assert np.isnan(ds["dida"].values[3]).all()
    df = read_results(tmp_path)
    assert list(df["rank"].iloc[:3]) == [0, 1, 2]
    odd_row = df[df["item_id"] == "dir/odd"].iloc[0]
    assert odd_row["index"] == -1
    assert np.array_equal(read_map(tmp_path, odd_row), odd)
    arr = zarr.open_group(tmp_path / "saliency.zarr", mode="r")[f"items/{item_key('dir/odd')}/dida"]
    assert arr.metadata.dimension_names == ("target", "y", "x") and arr.attrs["item_id"] == "dir/odd"
    for _, row in df.iloc[:9].iterrows():
        assert np.array_equal(read_map(tmp_path, row), maps[3 * int(row["position"]) + int(row["rank"])])


def test_superseded_rows_are_dropped(tmp_path):
    m = maps_for(2)
    st = Store(tmp_path, shard_items=4)
    st.add_error("i0", "", "rise", "first try failed", position=0)
    st.add("i1", "", [sal(m[1])], position=1)
    st.close()
    with Store(tmp_path, shard_items=4) as st:
        st.add("i0", "", [sal(m[0])], position=0)
        st.skip(1, "rise")
    df = read_results(tmp_path)
    assert list(df["status"]) == ["ok", "ok"]
    raw = [pq.read_table(p).to_pandas() for p in sorted((tmp_path / "results").glob("part-*.parquet"))]
    assert sum(len(t) for t in raw) == 2  # the error row was removed from its part by close()
    assert read_results(tmp_path, latest=False).shape[0] == 2
    assert compact_results(tmp_path) == 0


def test_read_results_prefers_the_latest_part(tmp_path):
    """Between a part's rewrite and the old part's removal both exist: readers see one set of rows."""
    st = Store(tmp_path)
    st.add_error("i0", "", "rise", "old", position=0)
    st.close()
    with Store(tmp_path) as st:
        st.add_error("i0", "", "rise", "new", position=0)
        st._parts_at_open = []  # no compaction at close
    assert len(read_results(tmp_path, latest=False)) == 2
    assert list(read_results(tmp_path)["error"]) == ["new"]


def test_one_writer_at_a_time(tmp_path):
    st = Store(tmp_path)
    with pytest.raises(SalientError, match="another process"):
        Store(tmp_path)
    st.close()
    Store(tmp_path).close()  # released by close()


def test_appending_without_positions(tmp_path):
    """``salient explain`` adds without positions: a second session appends after the first."""
    m = maps_for(3)
    with Store(tmp_path) as st:
        st.add("a", "", [sal(m[0])])
        st.add("b", "", [sal(m[1])])
    with Store(tmp_path) as st:
        st.add("c", "", [sal(m[2])])
    df = read_results(tmp_path)
    assert list(df["position"]) == [0, 1, 2] and list(df["item_id"]) == ["a", "b", "c"]
    for _, row in df.iterrows():
        assert np.array_equal(read_map(tmp_path, row), m[int(row["position"])])


def test_no_temp_files_and_attrs(tmp_path):
    with Store(tmp_path, "toy-model", {"seed": 1}) as st:
        st.add("a", "", [sal(maps_for(1)[0])], position=0, extra={"true_label": 7, "box": (1, 2, 3, 4)})
    assert not [p for p in (tmp_path / "results").iterdir() if not p.name.startswith("part-")]
    assert not [p for p in Path(tmp_path).rglob("*.partial")]
    root = zarr.open_group(tmp_path / "saliency.zarr", mode="r")
    assert root.attrs["model"] == "toy-model" and root.attrs["spec"] == {"seed": 1} and "started" in root.attrs
    attrs = dict(root["maps/rise"].attrs)
    for key in ("method", "parameters", "target", "label", "seed", "signed"):
        assert key in attrs
    row = read_results(tmp_path).iloc[0]
    assert row["true_label"] == "7" and list(row["box"]) == [1.0, 2.0, 3.0, 4.0]


def test_item_keys_are_distinct_node_names():
    ids = ["a/b.jpg", "a|b.jpg", "a%2Fb.jpg", "..", "__x", "x" * 400, "x" * 399 + "y"]
    keys = [item_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    assert all("/" not in k and len(k) <= 180 and not k.startswith("__") and set(k) != {"."} for k in keys)


def test_leftover_temp_files_are_removed(tmp_path):
    Store(tmp_path).close()
    (tmp_path / "results" / ".part-r0001-000001-x.tmp").write_bytes(b"torn")
    (tmp_path / "saliency.zarr" / "zarr.json.abc.partial").write_bytes(b"torn")
    Store(tmp_path).close()
    assert not list((tmp_path / "results").glob(".*.tmp")) and not list(Path(tmp_path).rglob("*.partial"))
    assert os.path.exists(tmp_path / "saliency.zarr" / "zarr.json")


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_shard_files_equal_zarrs_own_write(tmp_path, compressor):
    """The store encodes whole shards itself with the array's codecs: the files are byte for byte
    what zarr writes for the same data (all-NaN chunks left out, a short last shard, a target axis)."""
    maps = maps_for(16)
    with Store(tmp_path / "ours", shard_items=4, compressor=compressor) as st:
        for p in range(7):
            if p == 5:
                st.add_error(f"i{p}", "", "rise", "bad", position=p)
                st.add_error(f"i{p}", "", "dida", "bad", position=p)
                continue
            st.add(f"i{p}", "", [sal(maps[p])], position=p)
            st.add(f"i{p}", "", [sal(maps[p + j], "dida", j, "c", True) for j in range(2)], position=p)
        assert all(s.codec is not None for s in st._stacks.values())  # the fast path is the one tested
    ours = zarr.open_group(tmp_path / "ours" / "saliency.zarr", mode="r")
    for name in ("rise", "dida"):
        arr = ours[f"maps/{name}"]
        ref = zarr.create_array(tmp_path / "ref" / name, shape=arr.shape, chunks=arr.chunks, shards=arr.shards,
                                dtype=arr.dtype, fill_value=np.nan, compressors=arr.compressors)
        ref[:] = arr[:]
        mine = arr.store_path.store.root / arr.path / "c"
        theirs = tmp_path / "ref" / name / "c"
        files = sorted(str(f.relative_to(mine)) for f in mine.rglob("*") if f.is_file())
        assert files == sorted(str(f.relative_to(theirs)) for f in theirs.rglob("*") if f.is_file())
        assert len(files) == 2
        for f in files:
            assert (mine / f).read_bytes() == (theirs / f).read_bytes(), (name, f)
        assert np.isnan(arr[5]).all() and np.array_equal(arr[6], maps[6] if name == "rise" else maps[6:8])


@pytest.mark.parametrize("threads", [0, 2])
def test_a_failed_write_is_raised_and_stops_later_rows(tmp_path, monkeypatch, threads):
    """A shard that cannot be written (disk full) fails the store loudly; no part is written after
    it, so no ok row ever points at a missing map; the lock is released."""
    orig = store_mod._atomic_steps

    def full_disk(path, tmp, write, durable):
        def torn(t):
            t.write_bytes(b"part of a shard")
            raise OSError(28, "No space left on device")

        bad = "maps" in path.parts and path.parts[-3] == "1"  # shard 1
        yield from orig(path, tmp, torn if bad else write, durable)

    monkeypatch.setattr(store_mod, "_atomic_steps", full_disk)
    maps = maps_for(8)
    st = Store(tmp_path, shard_items=2, flush_rows=1, threads=threads)
    with pytest.raises(SalientError, match="a write failed .*No space left"):
        try:
            for p in range(8):
                st.add(f"i{p}", "", [sal(maps[p])], position=p)
        finally:
            st.close()  # raises too, after stopping the writer
    assert st.closed and not st._writer._threads
    df = read_results(tmp_path)
    assert set(df["position"]) <= {0, 1}
    for _, row in df.iterrows():
        assert np.array_equal(read_map(tmp_path, row), maps[int(row["position"])])
    assert not list(tmp_path.rglob("*.partial"))  # the torn temp file was removed
    assert not (tmp_path / "saliency.zarr" / "maps" / "rise" / "c" / "1" / "0" / "0").exists()
    Store(tmp_path).close()  # the lock was released


def test_parts_are_written_after_their_shards(tmp_path, monkeypatch):
    """With slow shard writes, every part reaches the disk after the shards (and odd-size maps) of
    its rows, each shard fsynced under its temp name before the rename that makes it visible."""
    events = []
    orig_steps, orig_fsync = store_mod._atomic_steps, store_mod._fsync

    def steps(path, tmp, fn, durable):
        if "maps" in path.parts:
            time.sleep(0.01)
        yield from orig_steps(path, tmp, fn, durable)
        events.append(("renamed", path))

    monkeypatch.setattr(store_mod, "_atomic_steps", steps)
    monkeypatch.setattr(store_mod, "_fsync", lambda path, directory=False: (events.append(("fsync", path)),
                                                                            orig_fsync(path, directory)))
    maps = maps_for(12)
    order = [1, 0, 3, 2, 4, 6, 5, 7, 11, 9, 8, 10]
    with Store(tmp_path, shard_items=2, flush_rows=1) as st:
        for p in order:
            st.add(f"i{p}", "", [sal(maps[p])], position=p)
            if p == 6:
                st.add("odd", "", [sal(np.ones((3, 5), np.float32))], position=12)
    at = {path: i for i, (kind, path) in enumerate(events) if kind == "renamed"}
    synced = [i for i, (kind, _) in enumerate(events) if kind == "fsync"]
    parts = sorted((p for p in at if p.suffix == ".parquet"), key=at.get)
    assert len(parts) >= 6
    arr_dir = tmp_path / "saliency.zarr" / "maps" / "rise" / "c"
    odd_chunk = next((tmp_path / "saliency.zarr" / "items" / "odd").rglob("c/*/*/*"))
    for part in parts:
        for pos in pq.read_table(part, columns=["position"])["position"].to_pylist():
            if pos == 12:
                assert any(events[i][1] == odd_chunk for i in synced if i < at[part])
                continue
            shard = arr_dir / str(pos // 2) / "0" / "0"
            assert at[shard] < at[part], (pos, part.name)
            assert any(events[i][1].name.startswith("0.") and events[i][1].suffix == ".partial"
                       and events[i][1].parent == shard.parent for i in synced if i < at[shard])


def test_a_checkpoint_writes_the_shard_as_it_was(tmp_path, monkeypatch):
    """A checkpoint writes a shard that stays in use: the writer encodes a copy, so a change made
    while the write is queued neither reaches that write nor breaks its released ok row."""
    slow_shard_writes(monkeypatch)
    maps = maps_for(1)
    st = Store(tmp_path, shard_items=4, checkpoint_seconds=1e9)
    st.add("i0", "", [sal(maps[0])], position=0)
    st._checkpoint()  # submitted, not waited for
    st.add_error("i0", "", "rise", "redone later", position=0)  # sets the buffered row to NaN
    crash(st)
    df = read_results(tmp_path)
    assert list(df["status"]) == ["ok"]
    assert np.array_equal(read_map(tmp_path, df.iloc[0]), maps[0])


def test_writer_keeps_order_bounds_its_queues_and_stops_at_an_error():
    """Jobs pass the writer's stages first in, first out; at most one job per stage plus ``depth``
    per queue are in flight; after an error no later step runs and the error is raised."""
    steps, done, outstanding, peak = [], [], [0], [0]
    lock = threading.Lock()
    w = _Writer(threads=3, depth=2)
    assert w.map(lambda x: x * x, list(range(10))) == [x * x for x in range(10)]

    def job(i):
        for stage in range(3):
            time.sleep(0.001 * ((i + stage) % 3))
            with lock:
                steps.append((stage, i))
            if stage < 2:
                yield
        with lock:
            done.append(i)
            outstanding[0] -= 1

    for i in range(20):
        with lock:
            outstanding[0] += 1
        w.submit(job(i))
        peak[0] = max(peak[0], outstanding[0])
    w.join()
    assert done == list(range(20))
    for stage in range(3):
        assert [i for st, i in steps if st == stage] == list(range(20))
    assert peak[0] <= 3 * (2 + 1)

    def failing():
        yield
        raise ValueError("write failed")

    w.submit(failing())
    w.submit(job(99))
    w.join()
    assert 99 not in done
    with pytest.raises(SalientError, match="ValueError: write failed"):
        w.submit(job(100))
    w.close()
    assert not w._threads


def test_a_redone_item_in_a_queued_shard_keeps_its_neighbours(tmp_path, monkeypatch):
    """An item added again after its shard was submitted (still queued) reloads the shard only once
    that write is done: the neighbours' maps are kept."""
    slow_shard_writes(monkeypatch)
    maps = maps_for(3)
    with Store(tmp_path, shard_items=2) as st:
        st.add("i0", "", [sal(maps[0])], position=0)
        st.add("i1", "", [sal(maps[1])], position=1)  # shard 0 complete: submitted
        st.add("i0", "", [sal(maps[2])], position=0)  # redone
    arr = zarr.open_group(tmp_path / "saliency.zarr", mode="r")["maps/rise"]
    assert np.array_equal(arr[0], maps[2]) and np.array_equal(arr[1], maps[1])


def test_a_shard_rewritten_without_maps_is_removed(tmp_path):
    """A shard whose maps all became NaN (an item redone as an error after a checkpoint wrote it)
    is deleted, as zarr does with chunks equal to the fill value, not kept with the old map."""
    maps = maps_for(3)
    shard0 = tmp_path / "saliency.zarr" / "maps" / "rise" / "c" / "0" / "0" / "0"
    with Store(tmp_path, shard_items=2, checkpoint_seconds=1e9) as st:
        st.add("i0", "", [sal(maps[0])], position=0)
        st.flush()
        assert shard0.exists()
        st.add_error("i0", "", "rise", "now unreadable", position=0)
        st.add_error("i1", "", "rise", "unreadable", position=1)
        st.add("i2", "", [sal(maps[2])], position=2)
    assert not shard0.exists()
    arr = zarr.open_group(tmp_path / "saliency.zarr", mode="r")["maps/rise"]
    assert np.isnan(arr[:2]).all() and np.array_equal(arr[2], maps[2])
    assert list(read_results(tmp_path)["status"]) == ["error", "error", "ok"]
