"""Read a store without its writer: the results table (pandas) and the map of any of its rows.

- ``results/part-*.parquet`` holds one row per (item, method, target). When an item is redone
  (resume), its newer rows supersede the older: :func:`read_results` keeps, for each (position,
  method), the rows of the latest part (parts sort by run, then sequence), and the writer's close
  rewrites parts that hold superseded rows (``compact_results``), which reads the same.
- :func:`read_map` finds a row's map: ``maps/<method>[index]`` (at ``rank`` on the target axis),
  or ``items/<key>/<method>[rank]`` for maps of odd sizes (``index == -1``).
- :func:`item_status`: per (method, position), whether every row of the item is ``ok``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import SalientError
from .schema import EXTRA_COLUMNS, ZARR_NAME, item_key, result_columns, result_schema


def _parts(out: str | os.PathLike) -> list[Path]:
    return sorted((Path(out) / "results").glob("part-*.parquet"))


def damaged(path: Path, reason: str, out: str | os.PathLike | None = None) -> SalientError:
    """The one-line error for a damaged or lost file of the store in ``out`` (the folder above
    ``results/`` or ``saliency.zarr/`` by default), with what to do."""
    if out is None:
        out = next((q.parent for q in path.parents if q.name in ("results", ZARR_NAME)), path.parent)
    reason = " ".join(str(reason).split())[:160]
    return SalientError(f"{path}: {reason}; run `salient repair {out}` (it keeps every intact map; the next "
                        "`salient run` redoes only what was lost)")


def _read_part(p: Path, columns: list[str] | None) -> pa.Table:
    try:
        names = set(pq.read_schema(p).names)  # a part older than a metric lacks its column: null there
        return pq.read_table(p, columns=None if columns is None else [c for c in columns if c in names])
    except (pa.ArrowException, OSError) as e:
        raise damaged(p, f"damaged results part ({type(e).__name__}: {e})") from None


def _read_parts(parts: list[Path], columns: list[str] | None) -> pa.Table:
    """Concatenate parts with a ``_part`` rank column (parts sort by run, then sequence). A part
    that cannot be read raises a one-line SalientError naming it (:func:`damaged`)."""
    tables = []
    for rank, p in enumerate(parts):
        t = _read_part(p, columns)
        tables.append(t.append_column("_part", pa.array(np.full(t.num_rows, rank, dtype=np.int64))))
    return pa.concat_tables(tables, promote_options="default")


def _latest_mask(position: np.ndarray, method: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Rows whose part is the latest to hold their (position, method): older rows are superseded."""
    import pandas as pd

    df = pd.DataFrame({"p": position, "m": method, "r": part})
    return (df["r"] == df.groupby(["p", "m"], sort=False)["r"].transform("max")).to_numpy()


def read_results(out: str | os.PathLike, columns: list[str] | None = None, latest: bool = True):
    """The results table as a pandas DataFrame, one row per (item, method, target), sorted by
    position, method and rank. ``latest`` drops rows superseded by a later attempt at the same
    (position, method). Empty (with the schema's columns) if there are no parts."""
    import pandas as pd

    schema = result_schema()
    want = [n for n, _ in result_columns() + EXTRA_COLUMNS] if columns is None else list(columns)
    parts = _parts(out)
    if not parts:
        return pd.DataFrame({n: pd.Series(dtype=schema.field(n).type.to_pandas_dtype()) for n in want})
    need = list(dict.fromkeys([*want, "position", "method", "rank"]))
    table = _read_parts(parts, need)
    for n in need:
        if n not in table.column_names:
            table = table.append_column(n, pa.nulls(table.num_rows, schema.field(n).type))
    if latest:
        keep = _latest_mask(table["position"].to_numpy(), table["method"].to_numpy(zero_copy_only=False),
                            table["_part"].to_numpy())
        table = table.filter(pa.array(keep))
    table = table.sort_by([("position", "ascending"), ("method", "ascending"), ("rank", "ascending")])
    return table.select(want).to_pandas()


def read_map(out: str | os.PathLike, row: Any, level: int = 0) -> np.ndarray:
    """The map of one table row (a DataFrame row or dict): ``maps/<method>[index]`` (at ``rank``
    on the target axis), ``items/<key>/<method>[rank]`` for odd sizes, or level ``level`` of the
    OME-Zarr mosaic ``items/<key>/<method>`` of tile mode (:mod:`.mosaic`)."""
    root = zarr.open_group(Path(out) / ZARR_NAME, mode="r")
    get = row.get if hasattr(row, "get") else row.__getitem__
    if get("status") != "ok":
        raise SalientError(f"row of {get('item_id')!r} / {get('method')} has status {get('status')}: no map")
    rank = int(get("rank") or 0)
    if int(get("index")) >= 0:
        arr = root[f"maps/{get('method')}"]
        m = arr[int(get("index"))]
        return np.asarray(m[rank] if int(arr.attrs.get("targets_per_item", 1)) > 1 else m)
    node = root[f"items/{item_key(str(get('item_id')))}/{get('method')}"]
    if isinstance(node, zarr.Group):
        from .mosaic import read_level

        return read_level(node, level)
    return np.asarray(node[rank])


def item_status(df) -> Any:
    """A boolean Series indexed by (method, position): True where every row of that item is ok."""
    return (df["status"] == "ok").groupby([df["method"], df["position"]], sort=False).all()
