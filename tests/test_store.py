"""The store: positions are rows, whole-shard writes, resume of partial shards, damaged shards,
odd sizes, superseded rows, the single-writer lock, xarray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

from salient.errors import SalientError
from salient.jobs.store import Store, compact_results, item_key, read_map, read_results
from salient.saliency import Saliency


def sal(m: np.ndarray, method: str = "rise", target: int = 1, label: str = "one", signed: bool = False) -> Saliency:
    return Saliency(m, signed, method, target, label, base_score=0.5, seed=3, params={"n_masks": 10})


def maps_for(n: int, shape=(8, 8), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


def crash(store: Store) -> None:
    """Abandon a store without closing it (what a SIGKILL leaves), releasing only the lock."""
    store._lock.release()


def test_positions_are_rows_whatever_the_order(tmp_path):
    maps = maps_for(10)
    order = [3, 0, 1, 2, 9, 5, 4, 7, 6, 8]
    with Store(tmp_path, "toy", {"a": 1}, shard_items=4, flush_rows=3) as st:
        for p in order:
            if p == 5:
                st.add_error(f"i{p}", f"s{p}", "rise", "bad\nfile", position=p)
            else:
                st.add(f"i{p}", f"s{p}", [sal(maps[p])], position=p)
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
    orig = zarr.Array.__setitem__

    def spy(self, sel, value):
        if "maps/" in self.path:
            writes.append((sel.start, sel.stop, self.shape[0]))
        return orig(self, sel, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", spy)
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


def test_damaged_shard_is_found_and_removed(tmp_path):
    maps = maps_for(8)
    with Store(tmp_path, shard_items=4) as st:
        for p in range(8):
            st.add(f"i{p}", "", [sal(maps[p])], position=p)
    shard = tmp_path / "saliency.zarr" / "maps" / "rise" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[40:48] = b"\xff" * 8  # flip bytes inside a chunk: the chunk's CRC32C no longer matches
    shard.write_bytes(bytes(data))
    with Store(tmp_path, shard_items=4) as st:
        assert st.verify("rise", [0, 1]) == [1]
    assert not shard.exists()
    truncated = tmp_path / "saliency.zarr" / "maps" / "rise" / "c" / "0" / "0" / "0"
    truncated.write_bytes(truncated.read_bytes()[:100])
    with Store(tmp_path, shard_items=4) as st:
        assert st.verify("rise", [0]) == [0]


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
