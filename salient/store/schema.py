"""The names the store's writer and readers agree on: the table's columns, the Zarr group's name,
the node name of an item, the default shard size and the compressor names.

- ``results/part-*.parquet``: one row per (item, method, target) with the contract columns
  :func:`result_columns` (one float column per registered metric, :mod:`salient.methods.metric`,
  between ``seconds`` and ``status``: ``insertion_auc``, ``deletion_auc`` today) plus
  :data:`EXTRA_COLUMNS` (position, rank, the manifest's true_label, mask, box, and for a tile-mode
  mosaic its tile count, skipped and failed tiles, for a video's map along t its clip count and
  failed clips; ``metric_note``: why a metric is NaN, e.g.
  ``no object mask (object_share, pointing_game)``);
  :func:`result_schema` is both together. A part written before a metric was registered reads
  with that column null.
- ``OUT/`` :data:`ZARR_NAME` holds the maps; ``items/<key>/<method>`` is named by
  :func:`item_key` of the item id.
- Every part's Parquet key-value metadata holds, under :data:`METADATA_KEY`, the store's metadata
  when it was written (:func:`metadata_backup`): ``{"root": root attrs, "arrays": {path:
  zarr.json}}`` for the ``maps/<method>`` arrays; :func:`read_backup` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from ..methods.metric import NOTE_COLUMN, metric_columns

ITEM_COLUMNS = [
    ("item_id", pa.string()), ("index", pa.int64()), ("source", pa.string()), ("method", pa.string()),
    ("target", pa.int64()), ("label", pa.string()), ("base_score", pa.float64()), ("n_forward", pa.int64()),
    ("seconds", pa.float64()),
]
STATUS_COLUMNS = [("status", pa.string()), ("error", pa.string())]
EXTRA_COLUMNS = [
    ("position", pa.int64()), ("rank", pa.int64()),
    ("true_label", pa.string()), ("mask", pa.string()), ("box", pa.list_(pa.float64())),
    ("tiles", pa.int64()), ("skipped_tiles", pa.int64()), ("failed_tiles", pa.int64()),  # tile mode (mosaics)
    ("clips", pa.int64()), ("failed_clips", pa.int64()),  # a long video's map along t (its clips)
    (NOTE_COLUMN, pa.string()),  # why a metric of the row is NaN (salient.methods.metric.Undefined), or null
]


def result_columns() -> list[tuple[str, pa.DataType]]:
    """The contract columns: the item's, one per registered metric, then status and error."""
    return ITEM_COLUMNS + [(c, pa.float64()) for c in metric_columns()] + STATUS_COLUMNS


def result_schema() -> pa.Schema:
    return pa.schema(result_columns() + EXTRA_COLUMNS)


META_KEYS = ("true_label", "mask", "box")
SHARD_ITEMS = 64
COMPRESSORS = ("lz4", "zstd", "none")
ZARR_NAME = "saliency.zarr"


def item_key(item_id: str) -> str:
    """The zarr node name of an item id: percent-encoded (``/`` -> ``%2F``), hashed if too long."""
    key = quote(item_id, safe="") or "%00"
    if key.startswith("__") or set(key) == {"."}:
        key = "%" + key
    if len(key) > 180:
        key = key[:160] + "-" + hashlib.sha1(item_id.encode()).hexdigest()[:16]
    return key


METADATA_KEY = b"salient.metadata"


def metadata_backup(root_attrs: dict[str, Any], arrays: Iterable[Any]) -> dict[bytes, bytes]:
    """The Parquet key-value metadata of a part: the root attrs and each array's ``zarr.json``."""
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    meta = {a.path: json.loads(a.metadata.to_buffer_dict(proto)["zarr.json"].to_bytes()) for a in arrays}
    return {METADATA_KEY: json.dumps({"root": root_attrs, "arrays": meta}).encode()}


def read_backup(part: Path) -> dict[str, Any] | None:
    """The metadata backup of a part (None for a part without one or that cannot be read)."""
    import pyarrow.parquet as pq

    try:
        kv = pq.read_schema(part).metadata or {}
        got = json.loads(kv[METADATA_KEY])
    except Exception:  # noqa: BLE001 - no usable backup in this part
        return None
    return got if isinstance(got, dict) and isinstance(got.get("root"), dict) else None
