"""Clustering of attention maps (salient.metrics.clusters): planted clusters recovered, the same seed
the same clusters, block-wise reading equal to map-by-map, the outputs, the CLI and bad input."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score

from salient.cli import main
from salient.errors import SalientError
from salient.metrics import clusters as cl
from salient.saliency import Saliency
from salient.store import Store, read_map, read_results

CENTRES = [(10, 10), (10, 50), (50, 30)]  # three planted attention regions on a 64 x 64 map


def blob(centre, size=(64, 64), sigma=5.0):
    y, x = np.mgrid[: size[0], : size[1]]
    return np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * sigma**2))


def planted_store(out, n_per=12, seed=0, method="gradcampp", odd=True):
    """Maps of three planted clusters (a blob at a centre, jittered, scaled, noisy); the cluster of
    position i is i % 3; labels mix classes. With ``odd``, one item's map has another size (items/)."""
    rng = np.random.default_rng(seed)
    truth = []
    with Store(out, "toy", shard_items=4) as st:
        for i in range(3 * n_per):
            c = i % 3
            cy, cx = CENTRES[c]
            size = (48, 40) if odd and i == 7 else (64, 64)
            centre = (cy * size[0] / 64 + rng.normal(0, 1), cx * size[1] / 64 + rng.normal(0, 1))
            m = rng.uniform(0.5, 3.0) * blob(centre, size) + rng.uniform(0, 0.05, size)
            s = Saliency(m.astype(np.float32), False, method, target=int(rng.integers(0, 2)),
                         label=["cat", "dog"][int(rng.integers(0, 2))])
            st.add(f"item{i}", f"item{i}.png", [s], position=i)
            truth.append(c)
    return np.array(truth)


def test_recovers_planted_clusters_and_writes_outputs(tmp_path):
    out = tmp_path / "out"
    truth = planted_store(out)
    parts = {p.name: p.read_bytes() for p in (out / "results").glob("*.parquet")}
    for k in (3, "auto"):
        res = cl.cluster_maps(out, "gradcampp", k=k, seed=0)
        assert res.k == 3 and adjusted_rand_score(truth, res.rows["cluster"]) == 1.0
    assert set(res.scores) == set(range(2, 11)) and max(res.scores, key=res.scores.get) == 3
    assert res.sizes == [12, 12, 12] and sum(sum(m.values()) for m in res.makeup) == 36
    # outputs: the table, the centroids in the store, the grid; the results parts untouched
    rows = pq.read_table(out / "clusters" / "gradcampp.parquet").to_pandas()
    assert list(rows.columns) == ["position", "item_id", "target", "rank", "cluster"]
    assert list(rows["position"]) == list(range(36)) and np.array_equal(rows["cluster"], res.rows["cluster"])
    arr = zarr.open_group(out / "saliency.zarr", mode="r")["clusters/gradcampp"]  # the consolidated view is current
    assert arr.shape == (3, 32, 32) and arr.dtype == np.float32 and arr.attrs["sizes"] == [12, 12, 12]
    assert np.array_equal(arr[:], res.centroids)
    for c in range(3):  # a centroid is the mean normalised map of its cluster, peaking at its planted centre
        peak = np.unravel_index(np.argmax(arr[c]), (32, 32))
        centre = CENTRES[truth[res.rows["cluster"].to_numpy() == c][0]]
        assert abs(peak[0] - centre[0] / 2) <= 1.5 and abs(peak[1] - centre[1] / 2) <= 1.5
    assert (out / "clusters" / "gradcampp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name: p.read_bytes() for p in (out / "results").glob("*.parquet")} == parts
    assert len(read_results(out)) == 36  # the store still reads


def test_same_seed_same_clusters(tmp_path):
    out = tmp_path / "out"
    planted_store(out, n_per=10, seed=4)
    a = cl.cluster_maps(out, "gradcampp", k=4, seed=7, write=False)
    b = cl.cluster_maps(out, "gradcampp", k=4, seed=7, write=False)
    assert np.array_equal(a.rows["cluster"], b.rows["cluster"]) and np.array_equal(a.centroids, b.centroids)


def test_block_reads_equal_map_by_map(tmp_path, monkeypatch):
    """Features read a block of whole shards at a time (and odd-size maps one by one) equal the
    features of each row's map read alone; no block holds more than READ_BYTES (or one shard);
    zarr's own reader (an array the shard reader cannot read) gives the same."""
    out = tmp_path / "out"
    planted_store(out, n_per=4)  # shards of 4 items
    df = read_results(out)
    rows = df[df["status"] == "ok"].reset_index(drop=True)
    assert (rows["index"] == -1).sum() == 1  # the odd-size item
    one_by_one = np.concatenate([cl.features(read_map(out, r)[None], (32, 32), False, False)
                                 for _, r in rows.iterrows()])
    blocks, real = [], cl.read_blocks

    def spy(*a, **k):
        for lo, hi, data in real(*a, **k):
            blocks.append(data.nbytes)
            yield lo, hi, data

    monkeypatch.setattr(cl, "read_blocks", spy)
    for budget in (1, 9 * 64 * 64 * 4):  # one shard per block; two shards (8 items) per block
        blocks.clear()
        monkeypatch.setattr(cl, "READ_BYTES", budget)
        feats, signed, diverging = cl.read_features(out, "gradcampp", rows, (32, 32))
        assert not signed and not diverging and np.allclose(feats, one_by_one, rtol=0, atol=1e-6)  # BLAS: batch size
        assert len(blocks) >= 2 and max(blocks) <= max(budget, 4 * 64 * 64 * 4)
    from salient.store import shards

    monkeypatch.setattr(shards._ShardCodec, "make", classmethod(lambda cls, arr: None))
    assert np.allclose(cl.read_features(out, "gradcampp", rows, (32, 32))[0], one_by_one, rtol=0, atol=1e-6)


def test_normalisation_of_signed_maps():
    m = np.zeros((1, 4, 4), np.float32)
    m[0, 0, 0], m[0, 3, 3] = 2.0, -4.0
    assert cl.features(m, (4, 4), True, True).reshape(4, 4)[0, 0] == 0.5  # S / max|S|: sign kept
    assert cl.features(m, (4, 4), True, True).reshape(4, 4)[3, 3] == -1.0
    mm = cl.features(m, (4, 4), True, False).reshape(4, 4)  # minmax(S)
    assert mm[0, 0] == 1.0 and mm[3, 3] == 0.0 and mm[1, 1] == pytest.approx(4 / 6)
    un = cl.features(m, (4, 4), False, False).reshape(4, 4)  # minmax(ReLU(S))
    assert un[0, 0] == 1.0 and un[3, 3] == 0.0 and un[1, 1] == 0.0
    assert not cl.features(np.ones((1, 4, 4)), (2, 2), False, False).any()  # constant: zeros
    big = np.arange(36, dtype=np.float32).reshape(1, 6, 6)  # area average, ratio 6 -> 4 (not whole)
    w = np.array([1.0, 0.5])  # cell (0, 0) covers rows/cols [0, 1.5): pixel 0 whole, pixel 1 half
    ref = (w[:, None] * w[None, :] * big[0, :2, :2]).sum() / 2.25
    raw = np.matmul(np.matmul(cl.coverage_weights(6, 4), big[0]), cl.coverage_weights(6, 4).T)
    assert raw[0, 0] == pytest.approx(ref)


def test_bad_input_and_cli(tmp_path, capsys):
    out = tmp_path / "out"
    planted_store(out, n_per=2, odd=False)
    with pytest.raises(SalientError, match=r"--k 7 is larger than the number of maps of gradcampp \(6\)"):
        cl.cluster_maps(out, "gradcampp", k=7)
    with pytest.raises(SalientError, match="method 'rise' is not in the store"):
        cl.cluster_maps(out, "rise", k=2)
    for k in ("0", "two", "2.5"):
        with pytest.raises(SalientError, match="--k must be auto or a whole number"):
            cl.cluster_maps(out, "gradcampp", k=k)
    with pytest.raises(SalientError, match="--by 'colour'"):
        cl.cluster_maps(out, "gradcampp", k=2, by="colour")
    assert main(["cluster", str(out), "--method", "gradcampp", "--k", "3", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "gradcampp: 6 maps, k = 3" in printed and "cluster 0: 2 maps (33%)" in printed
    assert main(["cluster", str(out), "--method", "gradcampp", "--k", "9"]) == 2
    assert "larger than the number of maps" in capsys.readouterr().err
    assert main(["cluster", str(out), "--method", "gradcampp", "--k", "2"]) == 0  # rewritten, k = 2 now
    assert zarr.open_group(out / "saliency.zarr", mode="r")["clusters/gradcampp"].shape == (2, 32, 32)
    with Store(out, "toy"):  # a job writing the store: refused, nothing written
        with pytest.raises(SalientError, match="being written by another process"):
            cl.cluster_maps(out, "gradcampp", k=3)
    assert cl.cluster_maps(out, "gradcampp", k=3, write=False).k == 3  # reading alone is fine
