"""The context table: ``OUT/context/part-*.parquet``, one row per (item, context variant).

Columns (:data:`CONTEXT_SCHEMA`): position, item_id, true_label, variant, group (original, change,
removal, perturbation), partner (the item whose background a mixed variant took), status (ok/error),
error, pred / pred_label / pred_score (the variant's top-1 class and its score), ref_class /
ref_label (the model's top-1 class on the original item), ref_score (that class's score on the
variant), base_score (its score on the original), true_class (the class the true label names, -1 if
it names none), kept (pred == ref_class), correct (pred == true_class; null without a true class).

Parts are written whole (temp file + rename, :mod:`salient.store.files`), in the store's run order;
an item's rows are written together, and a later part's rows for a position supersede an earlier
part's (a resumed item), as in the results table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..store.files import _write_table_atomic
from ..store.read import damaged

CONTEXT_DIR = "context"
CONTEXT_SCHEMA = pa.schema([
    ("position", pa.int64()), ("item_id", pa.string()), ("true_label", pa.string()), ("variant", pa.string()),
    ("group", pa.string()), ("partner", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("pred", pa.int64()), ("pred_label", pa.string()), ("pred_score", pa.float64()), ("ref_class", pa.int64()),
    ("ref_label", pa.string()), ("ref_score", pa.float64()), ("base_score", pa.float64()),
    ("true_class", pa.int64()), ("kept", pa.bool_()), ("correct", pa.bool_()),
])


class ContextWriter:
    """Buffers the rows of finished items and writes them as whole parts of ``flush_rows`` rows or more."""

    def __init__(self, out: str | os.PathLike, run: int, flush_rows: int = 512, durable: bool = True):
        self.dir = Path(out) / CONTEXT_DIR
        self.run, self.flush_rows, self.durable = int(run), int(flush_rows), durable
        self.seq = 0
        self.rows: list[dict[str, Any]] = []
        for tmp in self.dir.glob(".part-*.tmp"):  # a killed run's temp file
            tmp.unlink(missing_ok=True)

    def add_item(self, rows: list[dict[str, Any]]) -> None:
        """All rows of one item (written in the same part)."""
        self.rows.extend(rows)
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.seq += 1
        table = pa.Table.from_pylist(self.rows, schema=CONTEXT_SCHEMA)
        _write_table_atomic(table, self.dir / f"part-r{self.run:04d}-{self.seq:06d}.parquet", self.durable)
        self.rows = []


def read_context(out: str | os.PathLike, latest: bool = True):
    """The context table as a pandas DataFrame sorted by position and variant (empty with the schema's
    columns when there is none); ``latest`` keeps, per position, the rows of the latest part."""
    import pandas as pd

    parts = sorted((Path(out) / CONTEXT_DIR).glob("part-*.parquet"))
    if not parts:
        return CONTEXT_SCHEMA.empty_table().to_pandas()
    frames = []
    for rank, p in enumerate(parts):
        try:
            df = pq.read_table(p, schema=CONTEXT_SCHEMA).to_pandas()
        except (pa.ArrowException, OSError) as e:
            raise damaged(p, f"damaged context part ({type(e).__name__}: {e})", out) from None
        frames.append(df.assign(_part=rank))
    df = pd.concat(frames, ignore_index=True)
    if latest:
        df = df[df["_part"] == df.groupby("position")["_part"].transform("max")]
    return df.drop(columns="_part").sort_values(["position", "variant"], kind="stable").reset_index(drop=True)


def done_positions(out: str | os.PathLike, variants: list[str]) -> set[int]:
    """Positions whose latest rows hold every variant of ``variants``, all ``ok`` (error rows are
    redone, like the results table's; an item without a mask costs no forward pass)."""
    df = read_context(out)
    if not len(df):
        return set()
    want = set(variants)
    got = df[df["status"] == "ok"].groupby("position")["variant"].agg(set)
    return {int(p) for p, v in got.items() if want <= v}
