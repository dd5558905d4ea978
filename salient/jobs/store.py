"""The output store: ``OUT/saliency.zarr`` (Zarr v3) beside ``OUT/results/`` (Parquet parts).

Contract (DESIGN.md): ``maps/<method>`` float32 (N, H, W), dimension names ("item", "y", "x"),
chunk (1, H, W), sharded along item; row i of the array is the table row with ``index == i`` for
that method. ``items/<item_id>/<method>`` holds maps whose size differs from the stacked array.
Root attrs: salient version, model id, the job spec, start time. Each array: method, parameters,
target ids and labels per row live in the table; the array attrs carry method, parameters, seed,
signed. Parquet parts are written to a temp file and renamed, so a crash never leaves a torn part.
This store has a single writer (the driver).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..saliency import Saliency

RESULT_COLUMNS = [
    ("item_id", pa.string()), ("index", pa.int64()), ("source", pa.string()), ("method", pa.string()),
    ("target", pa.int64()), ("label", pa.string()), ("base_score", pa.float64()), ("n_forward", pa.int64()),
    ("seconds", pa.float64()), ("insertion_auc", pa.float64()), ("deletion_auc", pa.float64()),
    ("status", pa.string()), ("error", pa.string()),
]
RESULT_SCHEMA = pa.schema(RESULT_COLUMNS)
SHARD_ITEMS = 64


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class Store:
    """Append maps and result rows; ``close()`` flushes the table and consolidates metadata."""

    def __init__(self, out: str | os.PathLike, model_id: str = "", spec: dict | None = None, flush_rows: int = 256):
        from .. import __version__

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results").mkdir(exist_ok=True)
        self.root = zarr.open_group(self.out / "saliency.zarr", mode="a", zarr_format=3)
        if "salient_version" not in self.root.attrs:
            self.root.attrs.update(_json_safe({
                "salient_version": __version__, "model": model_id, "spec": spec or {},
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }))
        self.flush_rows = flush_rows
        self._rows: list[dict[str, Any]] = []
        self._next_index: dict[str, int] = {}

    # -- maps
    def _stack(self, s: Saliency) -> zarr.Array:
        name = f"maps/{s.method}"
        shape = s.map.shape
        try:
            arr = self.root[name]
        except KeyError:
            dims = ("item", "y", "x") if len(shape) == 2 else ("item", "t", "y", "x")
            arr = self.root.create_array(
                name, shape=(0, *shape), dtype="float32", chunks=(1, *shape), shards=(SHARD_ITEMS, *shape),
                dimension_names=dims, fill_value=np.nan,
                attributes=_json_safe({"method": s.method, "parameters": s.params, "seed": s.seed,
                                       "signed": s.signed}),
            )
        return arr

    def add(self, item_id: str, source: str, results: list[Saliency]) -> None:
        """Store the maps of one item (one per target) and their ok rows."""
        for s in results:
            arr = self._stack(s)
            if tuple(arr.shape[1:]) == s.map.shape:
                i = self._next_index.get(s.method, arr.shape[0])
                if i >= arr.shape[0]:
                    arr.resize((i + 1, *arr.shape[1:]))
                arr[i] = s.map
                self._next_index[s.method] = i + 1
            else:  # a size that differs from the stacked array
                i = -1
                key = f"items/{item_id.replace('/', '|')}/{s.method}"
                self.root.create_array(key, data=s.map, chunks=s.map.shape, overwrite=True,
                                       attributes=_json_safe({"method": s.method, "parameters": s.params,
                                                              "seed": s.seed, "signed": s.signed,
                                                              "target": s.target, "label": s.label}))
            self._rows.append({
                "item_id": item_id, "index": i, "source": source, "method": s.method, "target": s.target,
                "label": s.label, "base_score": s.base_score, "n_forward": s.n_forward, "seconds": s.seconds,
                "insertion_auc": s.metrics.get("insertion_auc"), "deletion_auc": s.metrics.get("deletion_auc"),
                "status": "ok", "error": "",
            })
        if len(self._rows) >= self.flush_rows:
            self.flush()

    def add_error(self, item_id: str, source: str, method: str, error: str) -> None:
        self._rows.append({"item_id": item_id, "index": -1, "source": source, "method": method, "target": None,
                           "label": None, "base_score": None, "n_forward": 0, "seconds": 0.0,
                           "insertion_auc": None, "deletion_auc": None, "status": "error", "error": error})

    # -- table
    def flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=RESULT_SCHEMA)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.out / "results" / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.out / "results" / name)
        self._rows = []

    def close(self) -> None:
        self.flush()
        zarr.consolidate_metadata(self.out / "saliency.zarr")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_results(out: str | os.PathLike):
    """The results table of a store as a pandas DataFrame (empty if none)."""
    import pandas as pd

    parts = sorted((Path(out) / "results").glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame({n: pd.Series(dtype=object) for n, _ in RESULT_COLUMNS})
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
