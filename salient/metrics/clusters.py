"""Clustering of attention maps: which regions does the model attend to, per category? (k-means of
downsampled, normalised maps; the Grad-CAM++ clustering study's recipe).

For one method of a store, every ``ok`` row's map (``maps/<method>``, read a block of rows at a time,
or ``items/<key>/<method>`` for odd sizes; a clip's (T, H, W) map is averaged over t) becomes a
feature vector:
1. downsample to ``size`` (default 32 x 32) by the area average (each cell the mean of the map over
   the cell's area: :func:`salient.object_mask.coverage_weights`; a non-finite pixel counts as 0);
2. normalise per map, after downsampling: unsigned maps A = minmax(ReLU(S)); diverging signed maps
   (sign = support vs opposition: DiDA, occlusion) S / max|S|, in [−1, 1], sign kept; other signed
   maps (BOREx, GP: only the order counts) minmax(S). A constant map becomes all zeros.
3. k-means (scikit-learn ``KMeans``, k-means++ init, ``n_init`` restarts, ``random_state=seed``):
   the same seed gives the same clusters on the same machine (restarts on a seeded sample of at
   most :data:`SELECT_SAMPLE` maps, then Lloyd's iterations on all: :func:`kmeans`). ``k="auto"``
   picks k in :data:`AUTO_RANGE` (capped at n − 1) by the silhouette score (Euclidean): each
   candidate is fitted on that sample in its first :data:`SELECT_COMPONENTS` principal components
   and scored on at most :data:`SILHOUETTE_SAMPLE` of them; the chosen k is then fitted on all maps
   (ties in the score go to the smaller k).
Clusters are numbered by decreasing size (ties by k-means' order). A centroid is the mean
normalised map of its cluster: the representative attention region.

Outputs (the results parts are not rewritten): ``OUT/clusters/<method>.parquet`` (position,
item_id, target, rank, cluster per row), ``saliency.zarr/clusters/<method>`` float32 (k, h, w)
with attrs (k, sizes, make-up, normalisation, seed, ...), and ``OUT/clusters/<method>.png``: the
centroids with their sizes and class make-up (the ``by`` column, default the target's label).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SalientError
from ..object_mask import coverage_weights

AUTO_RANGE = (2, 10)  # k = "auto": candidates AUTO_RANGE[0] .. AUTO_RANGE[1]
SELECT_SAMPLE = 5000  # maps the candidate k are fitted on
SILHOUETTE_SAMPLE = 2000  # maps the silhouette score is computed on
SELECT_COMPONENTS = 64  # principal components the candidate k are compared in
SELECT_RESTARTS = 2  # k-means++ restarts per candidate k (the final fit: 4)
READ_BYTES = 32 << 20  # float32 map data read from the store at a time
CLUSTERS_DIR = "clusters"
MAKEUP_TOP = 3  # classes named per cluster in the grid and the lines


@dataclass
class Clusters:
    """The clustering of one method's maps (see the module docstring)."""

    method: str
    k: int
    rows: Any  # DataFrame: position, item_id, target, rank, cluster (and the ``by`` column)
    centroids: np.ndarray  # float32 (k, h, w)
    sizes: list[int]
    makeup: list[dict[str, int]]  # per cluster: by-value -> rows, most frequent first
    normalisation: str
    silhouette: float | None = None  # of the chosen k (on the sample); None for a fixed k
    scores: dict[int, float] = field(default_factory=dict)  # k -> silhouette, for k = "auto"
    by: str = "label"
    paths: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What ``salient cluster`` prints: k (and how it was chosen), then a line per cluster."""
        n = int(sum(self.sizes))
        how = (f"k = {self.k} by silhouette ({', '.join(f'{k}: {s:.3f}' for k, s in self.scores.items())})"
               if self.scores else f"k = {self.k}")
        out = [f"{self.method}: {n} maps, {how}; maps normalised as {self.normalisation}"]
        for c, (size, mix) in enumerate(zip(self.sizes, self.makeup, strict=True)):
            top = ", ".join(f"{v} {cnt / size:.0%}" for v, cnt in list(mix.items())[:MAKEUP_TOP])
            out.append(f"  cluster {c}: {size} maps ({size / n:.0%}); {self.by}: {top}")
        return out


def normalisation(signed: bool, diverging: bool) -> str:
    """The name of the per-map normalisation for maps of this kind (module docstring, step 2)."""
    if not signed:
        return "minmax(ReLU(S))"
    return "S / max|S|" if diverging else "minmax(S)"


def features(maps: np.ndarray, size: tuple[int, int], signed: bool, diverging: bool) -> np.ndarray:
    """Maps (n, H, W) -> float32 features (n, h·w): area-average downsampling, then the normalisation."""
    m = np.asarray(maps, dtype=np.float32)
    if not signed:
        m = np.maximum(m, 0.0)
    n, big_h, big_w = m.shape
    h, w = size
    wy = coverage_weights(big_h, h).astype(np.float32)
    wx = coverage_weights(big_w, w).astype(np.float32)
    def down(x: np.ndarray) -> np.ndarray:  # W_y · S · W_xᵀ, the x-step as one GEMM
        return np.matmul(wy, (x.reshape(len(x) * big_h, big_w) @ wx.T).reshape(len(x), big_h, w))

    small = down(m)
    bad = ~np.isfinite(small).all(axis=(1, 2))
    if bad.any():  # a non-finite pixel (none in an ok map) counts as 0
        small[bad] = down(np.nan_to_num(m[bad], nan=0.0, posinf=0.0, neginf=0.0))
    flat = small.reshape(n, h * w)
    if signed and diverging:
        scale = np.abs(flat).max(axis=1, keepdims=True)
        return np.divide(flat, scale, out=np.zeros_like(flat), where=scale > 0)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return np.divide(flat - lo, hi - lo, out=np.zeros_like(flat), where=hi > lo)


def read_features(out: str | os.PathLike, method: str, rows: Any, size: tuple[int, int]
                  ) -> tuple[np.ndarray, bool, bool]:
    """Features (n, h·w) of the table rows ``rows`` (ok rows of ``method``, in order), read from
    the store a block of item rows at a time (at most :data:`READ_BYTES` of maps); also (signed,
    diverging) from the maps' attrs."""
    import zarr

    from ..store import ZARR_NAME, item_key

    root = zarr.open_group(Path(out) / ZARR_NAME, mode="r")
    arr = root.get(f"maps/{method}")
    attrs = dict(arr.attrs) if arr is not None else {}
    index = rows["index"].to_numpy(np.int64)
    rank = rows["rank"].fillna(0).to_numpy(np.int64)
    odd = np.flatnonzero(index < 0)
    if arr is None and len(odd) < len(index):
        raise SalientError(f"{out}: rows of {method} point into maps/{method}, which the store does not have")
    if arr is None:
        attrs = dict(root[f"items/{item_key(str(rows['item_id'].iloc[odd[0]]))}/{method}"].attrs)
    signed = bool(attrs.get("signed", False))
    diverging = bool(attrs.get("diverging", signed))
    k = int(attrs.get("targets_per_item", 1))
    feats = np.zeros((len(rows), size[0] * size[1]), np.float32)
    stacked = np.flatnonzero(index >= 0)
    if len(stacked):
        order = stacked[np.argsort(index[stacked], kind="stable")]
        for lo, hi, data in read_blocks(Path(out) / ZARR_NAME, arr, index[order]):
            sel = order[(index[order] >= lo) & (index[order] < hi)]
            picked = data[index[sel] - lo, rank[sel]] if k > 1 else data[index[sel] - lo]
            feats[sel] = features(_plane(picked), size, signed, diverging)
    for i in odd:
        m = np.asarray(root[f"items/{item_key(str(rows['item_id'].iloc[i]))}/{method}"][int(rank[i])])
        feats[i] = features(_plane(m[None]), size, signed, diverging)[0]
    return feats, signed, diverging


def read_blocks(zdir: Path, arr: Any, wanted: np.ndarray, threads: int = 2):
    """Yield (lo, hi, maps[lo:hi]) for blocks of whole shards of the stacked array ``arr`` that hold
    the (sorted) item rows ``wanted``, each block at most :data:`READ_BYTES` (at least one shard;
    two blocks are in memory at a time: the next is read while the caller uses this one).
    Each shard file is read once and decoded by the store's own shard reader
    (:class:`salient.store.shards._ShardCodec`, no per-chunk asyncio; a missing or damaged map is NaN),
    or by zarr where the array's layout does not allow that."""
    from concurrent.futures import ThreadPoolExecutor

    from ..store.shards import _ShardCodec, shard_file

    n_items, per_item = int(arr.shape[0]), tuple(arr.shape[1:])
    shard = int(arr.shards[0]) if arr.shards else int(arr.chunks[0])
    codec = _ShardCodec.make(arr)
    block = max(1, READ_BYTES // (shard * int(np.prod(per_item)) * 4)) * shard

    def one(s: int) -> np.ndarray:
        s0 = s * shard
        n = min(shard, n_items - s0)
        if codec is None:
            return np.asarray(arr[s0 : s0 + n])
        rows = np.full((n, *per_item), np.nan, np.float32)
        path = shard_file(zdir, arr, s)
        codec.read(path.read_bytes() if path.is_file() else None, n, out=rows)
        return rows

    def submit(b: int) -> tuple[int, int, list]:
        lo, hi = int(b * block), int(min(n_items, (b + 1) * block))
        return lo, hi, [pool.submit(one, s) for s in range(lo // shard, -(-hi // shard))]

    with ThreadPoolExecutor(threads, thread_name_prefix="salient-cluster-read") as pool:
        todo = [int(b) for b in np.unique(wanted // block)]
        ahead = submit(todo[0]) if todo else None
        for i in range(len(todo)):  # the next block is read while the caller works on this one
            lo, hi, futs = ahead
            ahead = submit(todo[i + 1]) if i + 1 < len(todo) else None
            yield lo, hi, np.concatenate([f.result() for f in futs])


def _plane(maps: np.ndarray) -> np.ndarray:
    """(n, H, W) as is; (n, T, H, W) clips averaged over t."""
    return maps.mean(axis=1) if maps.ndim == 4 else maps


def sample_rows(feats: np.ndarray, m: int, seed: int) -> np.ndarray:
    """At most ``m`` rows of ``feats`` drawn without replacement by ``seed`` (in their order), as float64."""
    if len(feats) <= m:
        return np.asarray(feats, dtype=np.float64)
    return feats[np.sort(np.random.default_rng(seed).choice(len(feats), m, replace=False))].astype(np.float64)


def kmeans(feats: np.ndarray, k: int, seed: int, n_init: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids float32 (k, d)) of k-means on ``feats``, clusters renumbered by decreasing
    size (ties by k-means' order). ``n_init`` k-means++ restarts on a seeded sample of at most
    :data:`SELECT_SAMPLE` maps (float64); with more maps than that, Lloyd's iterations on all maps
    then start from the best restart's centres (k-means++ over 100,000 maps would cost more than
    the iterations; the sample's centres are already close)."""
    from sklearn.cluster import KMeans

    sample = sample_rows(feats, SELECT_SAMPLE, seed)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(sample)
    if len(sample) < len(feats):
        km = KMeans(n_clusters=k, init=km.cluster_centers_.astype(feats.dtype), n_init=1, random_state=seed,
                    copy_x=False).fit(feats)
    counts = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-counts, kind="stable")
    relabel = np.empty(k, np.int64)
    relabel[order] = np.arange(k)
    return relabel[km.labels_], km.cluster_centers_[order].astype(np.float32)


def choose_k(feats: np.ndarray, seed: int, k_range: tuple[int, int] = AUTO_RANGE) -> dict[int, float]:
    """Silhouette score per candidate k (module docstring): on the seeded sample of at most
    :data:`SELECT_SAMPLE` maps, projected on its first :data:`SELECT_COMPONENTS` principal components
    (PCA by the covariance's eigenvectors; smooth maps keep most of their variance there, and the
    candidates then cost little), each k fitted (:func:`kmeans`, :data:`SELECT_RESTARTS` restarts) and
    scored on at most
    :data:`SILHOUETTE_SAMPLE` of them (each labelled by its nearest centroid)."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    sample = sample_rows(feats, SELECT_SAMPLE, seed)
    n_comp = min(SELECT_COMPONENTS, sample.shape[1], len(sample))
    if n_comp < sample.shape[1]:
        sample = PCA(n_comp, svd_solver="covariance_eigh").fit_transform(sample)
    scored = sample_rows(sample, SILHOUETTE_SAMPLE, seed + 1)
    scores = {}
    for k in range(k_range[0], min(k_range[1], len(sample) - 1) + 1):
        _, centroids = kmeans(sample, k, seed, n_init=SELECT_RESTARTS)
        sub = np.argmin((centroids**2).sum(1)[None, :] - 2 * scored @ centroids.T, axis=1)  # nearest centroid
        scores[k] = float(silhouette_score(scored, sub)) if len(np.unique(sub)) > 1 else -1.0
    return scores


def parse_k(k: int | str) -> int | str:
    """``"auto"`` or a whole number >= 1 (as given on the command line)."""
    if isinstance(k, str) and k.strip().lower() == "auto":
        return "auto"
    try:
        n = int(k)
    except (TypeError, ValueError):
        raise SalientError(f"--k must be auto or a whole number >= 1, got {k!r}") from None
    if n < 1 or str(n) != str(k).strip():
        raise SalientError(f"--k must be auto or a whole number >= 1, got {k!r}")
    return n


def cluster_maps(out: str | os.PathLike, method: str, k: int | str = "auto", by: str = "label", seed: int = 0,
                 size: tuple[int, int] = (32, 32), write: bool = True) -> Clusters:
    """Cluster the maps of ``method`` in the store ``out`` (module docstring) into ``k`` clusters
    (a number, or ``"auto"``); ``by``: the table column of the class make-up. With ``write``, the
    three outputs are written. Bad input (no such store or method, k larger than the number of
    maps, ``by`` not a column, a job writing the store now) is a one-line SalientError, before any
    map is read. The store's lock is held while the outputs are written."""
    from ..store import read_results

    k = parse_k(k)
    if size[0] < 1 or size[1] < 1:
        raise SalientError(f"cluster size must be positive, got {size}")
    if seed < 0:
        raise SalientError(f"--seed must be >= 0, got {seed}")
    df = read_results(out)
    methods = sorted(df["method"].dropna().unique())
    if method not in methods:
        raise SalientError(f"method {method!r} is not in the store {out}; it has {', '.join(methods) or 'none'}")
    if by not in df.columns:
        raise SalientError(f"--by {by!r}: no such column in the results table")
    rows = df[(df["method"] == method) & (df["status"] == "ok")].reset_index(drop=True)
    n = len(rows)
    if k == "auto" and n < 3:
        raise SalientError(f"--k auto needs at least 3 maps of {method}; the store has {n}")
    if k != "auto" and k > n:
        raise SalientError(f"--k {k} is larger than the number of maps of {method} ({n})")
    lock = _store_lock(out) if write else None  # a job writing the store now: refused before the work
    try:
        return _cluster(out, method, k, by, seed, size, rows, lock is not None)
    finally:
        if lock is not None:
            lock.release()


def _store_lock(out: str | os.PathLike) -> Any:
    from ..store import ZARR_NAME
    from ..store.files import _Lock

    if not (Path(out) / ZARR_NAME / "zarr.json").is_file():
        raise SalientError(f"{out}: no {ZARR_NAME} to write the centroids to")
    return _Lock(Path(out) / ".lock")


def _cluster(out: str | os.PathLike, method: str, k: int | str, by: str, seed: int, size: tuple[int, int],
             rows: Any, write: bool) -> Clusters:
    import pandas as pd

    feats, signed, diverging = read_features(out, method, rows, size)
    scores: dict[int, float] = {}
    if k == "auto":
        scores = choose_k(feats, seed)
        k = max(scores, key=lambda c: (scores[c], -c))
    labels, centroids = kmeans(feats, int(k), seed)
    groups = rows[by].astype("string").fillna("<none>")
    makeup = [groups[labels == c].value_counts(sort=True).to_dict() for c in range(int(k))]
    makeup = [{str(v): int(cnt) for v, cnt in sorted(m.items(), key=lambda t: (-t[1], t[0]))} for m in makeup]
    result = Clusters(method, int(k), pd.DataFrame({
        "position": rows["position"].to_numpy(np.int64), "item_id": rows["item_id"].astype(str).to_numpy(),
        "target": rows["target"].to_numpy(np.int64), "rank": rows["rank"].fillna(0).to_numpy(np.int64),
        "cluster": labels.astype(np.int64)}), centroids.reshape(int(k), *size),
        [int(c) for c in np.bincount(labels, minlength=int(k))], makeup, normalisation(signed, diverging),
        scores.get(int(k)), scores, by)
    if write:
        result.paths = write_clusters(out, result, seed, diverging and signed)
    return result


def write_clusters(out: str | os.PathLike, c: Clusters, seed: int, diverging: bool) -> list[Path]:
    """The three outputs of a clustering (module docstring); returns the two files' paths."""
    import pyarrow as pa
    import zarr

    from ..store import ZARR_NAME
    from ..store.files import _write_table_atomic

    d = Path(out) / CLUSTERS_DIR
    d.mkdir(exist_ok=True)
    table = d / f"{c.method}.parquet"
    _write_table_atomic(pa.Table.from_pandas(c.rows, preserve_index=False), table)
    zdir = Path(out) / ZARR_NAME
    root = zarr.open_group(zdir, mode="r+", use_consolidated=False)  # only clusters/<method> is written
    group = root[CLUSTERS_DIR] if CLUSTERS_DIR in root else root.create_group(CLUSTERS_DIR)
    attrs = {"method": c.method, "k": c.k, "sizes": c.sizes, "makeup": c.makeup, "by": c.by, "seed": seed,
             "normalisation": c.normalisation, "downsampling": "area average", "silhouette": c.silhouette,
             "silhouette_by_k": {str(k): s for k, s in c.scores.items()}, "diverging": bool(diverging)}
    arr = group.create_array(c.method, shape=c.centroids.shape, dtype="float32", chunks=c.centroids.shape,
                             dimension_names=("cluster", "y", "x"), attributes=attrs, overwrite=True)
    arr[...] = c.centroids
    if "consolidated_metadata" in json.loads((zdir / "zarr.json").read_bytes()):
        from ..store.write import consolidate

        consolidate(zdir)  # the root's consolidated copy of the metadata must not hold a stale clusters/<method>
    png = d / f"{c.method}.png"
    draw_grid(c, png, diverging)
    return [table, png]


def draw_grid(c: Clusters, path: Path, diverging: bool) -> None:
    """A PNG grid of the centroids, each titled with its size, share and top classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(c.k, 5)
    rows = -(-c.k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    n = max(1, sum(c.sizes))
    cmap, lo, hi = ("RdBu_r", -1.0, 1.0) if diverging else ("inferno", 0.0, 1.0)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= c.k:
            continue
        ax.imshow(c.centroids[i], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        top = "\n".join(f"{v[:18]} {cnt / c.sizes[i]:.0%}" for v, cnt in list(c.makeup[i].items())[:MAKEUP_TOP])
        ax.set_title(f"#{i}: {c.sizes[i]} ({c.sizes[i] / n:.0%})\n{top}", fontsize=8)
    fig.suptitle(f"{c.method}: {c.k} clusters of {n} maps ({c.normalisation})", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
