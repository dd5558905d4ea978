"""Synthetic stores for the report and viewer tests, written directly with salient.store.Store (no
model): photos with a known map, a video store (maps/<method> of shape (N, T, H, W)), an OME-Zarr
multiscale map at items/<key>/<method>, and a large table-only store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from salient import Saliency
from salient.store import ZARR_NAME, Store, item_key
from salient.store.write import consolidate

LABELS = ("cat", "dog", "fox")


def photo(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def blob(h: int, w: int, cy: float, cx: float, signed: bool = False) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    m = np.exp(-((y - cy * h) ** 2 + (x - cx * w) ** 2) / (0.05 * h * w)).astype(np.float32)
    return m - 0.3 if signed else m


def image_store(root: Path, n: int = 6, size: int = 32, k: int = 2) -> Path:
    """``n`` photos (48 x 64), methods rise (top1, unsigned) and dida (top ``k``, diverging), AUCs,
    a true label per item, and one error row."""
    out = root / "store"
    with Store(out, model_id="toy", spec={"model": "toy"}, threads=0, durable=False) as st:
        for i in range(n):
            src = photo(root / "photos" / f"p{i}.png", 48, 64, i)
            res = [Saliency(blob(size, size, 0.3 + 0.05 * i, 0.5), False, "rise", 0, "zero", 0.9 - 0.1 * i,
                            n_forward=10, seconds=0.5, metrics={"insertion_auc": 0.2 + 0.1 * i,
                                                               "deletion_auc": 0.5 - 0.05 * i})]
            res += [Saliency(blob(size, size, 0.6, 0.2 + 0.1 * j + 0.02 * i, signed=True), True, "dida", j,
                             f"class{j}", 0.5 - 0.1 * j, n_forward=20, seconds=1.0,
                             metrics={"insertion_auc": 0.3 + 0.05 * i + 0.01 * j, "deletion_auc": 0.4 - 0.01 * i})
                    for j in range(k)]
            st.add(f"p{i}.png", str(src), res, position=i, extra={"true_label": LABELS[i % len(LABELS)]})
        st.add_error("broken.png", str(root / "photos" / "broken.png"), "rise", "not a readable image", position=n)
        st.add_error("broken.png", str(root / "photos" / "broken.png"), "dida", "not a readable image", position=n)
    return out


def video_store(root: Path, n: int = 2, t: int = 5, size: int = 16) -> Path:
    """maps/rise3d of shape (N, T, H, W), dims (item, t, y, x), and maps/dida3d (N, 2, T, H, W) for two
    targets: a blob moving left to right; the last item's maps are larger (items/<key>/<method>,
    shape (K, T, H', W'))."""
    out = root / "video"
    with Store(out, model_id="toy-video", threads=0, durable=False) as st:
        for i in range(n + 1):
            src = photo(root / "frames" / f"v{i}.png", 32, 32, 10 + i)
            side = size if i < n else size + 8
            res = []
            for method, signed, targets in (("rise3d", False, (1,)), ("dida3d", True, (1, 2))):
                for k in targets:  # dida3d: two targets, (N, 2, T, H, W)
                    m = np.stack([blob(side, side, 0.3 * k, (f + 0.5) / t, signed) for f in range(t)])
                    res.append(Saliency(m, signed, method, k, f"c{k}", 0.8 / k, n_forward=5, seconds=0.2,
                                        metrics={"insertion_auc": 0.5}))
            st.add(f"v{i}.mp4", str(src), res, position=i)
    return out


def pyramid_store(root: Path, shape: tuple[int, int] = (512, 640), levels: int = 4) -> Path:
    """Item 0 at the stacked size; item 1 ``huge`` whose map is an OME-Zarr multiscale group at
    items/<key>/mosaic (levels "0", "1", ... each down by 2; level i holds the value i + the
    full-resolution blob, so a test sees which level a view read)."""
    import zarr

    out = root / "huge"
    with Store(out, model_id="toy-slide", threads=0, durable=False) as st:
        st.add("small.png", str(photo(root / "p" / "small.png", 16, 16, 0)),
               [Saliency(blob(16, 16, 0.5, 0.5), False, "mosaic", 0, "tumour", 0.7)], position=0)
        st.add("huge.tif", str(root / "p" / "huge.tif"),
               [Saliency(np.zeros((40, 40), np.float32), False, "mosaic", 0, "tumour", 0.9)], position=1)
    node = f"items/{item_key('huge.tif')}/mosaic"
    shutil.rmtree(out / ZARR_NAME / node)
    g = zarr.open_group(out / ZARR_NAME, mode="a").create_group(node)
    full = blob(*shape, 0.25, 0.75) * 10
    datasets = []
    for i in range(levels):
        f = 2 ** i
        lvl = full[::f, ::f] + i * 100.0
        g.create_array(str(i), data=lvl.astype(np.float32), chunks=(128, 128), dimension_names=("y", "x"))
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [f, f]}]})
    g.attrs.update({"ome": {"version": "0.5", "multiscales": [{"name": "mosaic", "axes": [
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": datasets}]},
        "method": "mosaic", "signed": False, "diverging": False})
    consolidate(out / ZARR_NAME)  # as a writer of pyramids does at its close
    return out


def large_store(root: Path, n: int = 100_000, labels: int = 300, size: int = 8,
                photos: list[Path] | None = None) -> Path:
    """``n`` rows of one method with small maps and ``labels`` true labels, written in one go: the
    table (Parquet) plus a stacked array; the report must stay bounded. ``photos``: the items'
    sources cycle over these files (else they point nowhere: maps alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    from salient.store.schema import result_schema

    out = root / "large"
    (out / "results").mkdir(parents=True)
    rng = np.random.default_rng(0)
    root_g = zarr.open_group(out / ZARR_NAME, mode="w", zarr_format=3)
    root_g.attrs.update({"salient_version": "0.1.0", "model": "toy-large", "spec": {}, "complete": True})
    arr = root_g.create_array("maps/rise", shape=(n, size, size), chunks=(1000, size, size), dtype="float32",
                              dimension_names=("item", "y", "x"),
                              fill_value=np.nan, attributes={"method": "rise", "signed": False, "diverging": False})
    arr[:] = rng.random((n, size, size), dtype=np.float32)
    pos = np.arange(n)
    sources = [str(photos[p % len(photos)]) for p in pos] if photos else [f"/nowhere/i{p}.png" for p in pos]
    cols = {"item_id": [f"i{p}.png" for p in pos], "index": pos, "source": sources,
            "method": ["rise"] * n, "target": np.zeros(n, np.int64), "label": ["zero"] * n,
            "base_score": rng.random(n), "n_forward": np.full(n, 10), "seconds": np.full(n, 0.01),
            "insertion_auc": rng.random(n), "deletion_auc": rng.random(n), "status": ["ok"] * n, "error": [""] * n,
            "position": pos, "rank": np.zeros(n, np.int64),
            "true_label": [f"class{p % labels}" for p in pos], "mask": [None] * n, "box": [None] * n}
    schema = result_schema()
    table = pa.table({f.name: pa.array(cols.get(f.name, [None] * n), type=f.type) for f in schema}, schema=schema)
    pq.write_table(table, out / "results" / "part-r0001-000001-00000000.parquet")
    return out
