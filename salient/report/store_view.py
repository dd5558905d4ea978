"""A store opened for looking at it (the static report and the viewer): its root attrs, its table,
what it lacks, and the map of any row, whatever its layout. Read-only, tolerant of a partly
written store.

- Not a store (no ``saliency.zarr/zarr.json`` and no ``results/part-*.parquet``): a one-line
  :class:`~salient.errors.SalientError`.
- An empty or partly written store opens: :attr:`StoreView.missing` says in words what is absent
  (no results yet, no maps, a job not complete, files :func:`~salient.store.check.damaged_metadata`
  names); what is there is shown.
- :meth:`StoreView.map_of` reads a row's map from ``maps/<method>[index]`` (at ``rank`` on a target
  axis), from ``items/<key>/<method>[rank]``, or from an OME-Zarr multiscale group there
  (:class:`~salient.report.pyramid.Pyramid`); a video map (T, H, W) gives frame ``t`` (or all of
  them). A map that is absent or all NaN (the fill value) raises :class:`MapMissing`, one line.
- Colour rule of a row's map: the array attrs ``diverging`` (a store without it: ``signed``).
- ``flagged`` (a column, when ``salient audit`` wrote ``OUT/audit/flagged.parquet``): the item is flagged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SalientError
from .pyramid import Pyramid, is_pyramid


class MapMissing(SalientError):
    """A row's map cannot be read (absent array, absent or damaged chunk, an error row)."""


@dataclass
class StoreView:
    """``out``: the folder; ``attrs``: the root attrs ({} when unreadable); ``df``: the latest rows
    with a ``row`` column (0..n-1, the id the viewer and the report use); ``missing``: what is absent."""

    out: Path
    attrs: dict[str, Any]
    df: Any
    missing: list[str] = field(default_factory=list)
    _nodes: dict[str, Any] = field(default_factory=dict, repr=False)  # zarr nodes opened so far
    _strided: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)  # the last strided video read

    # -- rows
    def row(self, i: int) -> Any:
        if not 0 <= int(i) < len(self.df):
            raise MapMissing(f"no row {i} (the table has {len(self.df)})")
        return self.df.iloc[int(i)]

    def item_rows(self, position: int, method: str | None = None) -> Any:
        """The rows of one item (every method, or one), ordered by method and rank."""
        g = self.df.iloc[self._by_position.get(int(position), [])]
        return g if method is None else g[g["method"] == method]

    @cached_property
    def _by_position(self) -> dict[int, np.ndarray]:
        return {int(k): v for k, v in self.df.groupby("position", sort=False).indices.items()} if len(self.df) else {}

    @cached_property
    def methods(self) -> list[str]:
        return sorted(str(m) for m in self.df["method"].dropna().unique())

    @cached_property
    def metric_columns(self) -> list[str]:
        """The registered metric columns that hold at least one value."""
        from ..methods.metric import metric_columns

        return [c for c in metric_columns() if c in self.df.columns and self.df[c].notna().any()]

    # -- arrays
    @cached_property
    def root(self) -> Any:
        import zarr

        from ..store import ZARR_NAME

        try:
            # not the consolidated copy: a node removed since (a lost array) must read as missing
            return zarr.open_group(self.out / ZARR_NAME, mode="r", use_consolidated=False)
        except Exception:  # noqa: BLE001 - no or damaged group: every map is then missing
            return None

    def node(self, row: Any) -> Any:
        """The zarr node holding ``row``'s map (an array or an OME-Zarr group), or raise MapMissing."""
        from ..store import item_key

        if row["status"] != "ok":
            raise MapMissing(f"{row['item_id']} [{row['method']}]: status {row['status']}: {row['error'] or 'no map'}")
        stacked = int(row["index"]) >= 0
        path = f"maps/{row['method']}" if stacked else f"items/{item_key(str(row['item_id']))}/{row['method']}"
        if path not in self._nodes:
            try:
                self._nodes[path] = self.root[path]
            except Exception:  # noqa: BLE001 - KeyError, damaged metadata, no root
                self._nodes[path] = None
        if self._nodes[path] is None:
            raise MapMissing(f"{row['item_id']} [{row['method']}]: its map array {path} is missing")
        return self._nodes[path]

    def node_attrs(self, row: Any) -> dict[str, Any]:
        return dict(self.node(row).attrs)

    def diverging(self, row: Any) -> bool:
        """Whether ``row``'s map is shown on the red/blue scale around 0 (else relative, sequential)."""
        a = self.node_attrs(row)
        return bool(a.get("diverging", a.get("signed", False)))

    def pyramid(self, row: Any) -> Pyramid | None:
        """The OME-Zarr multiscale group of ``row``, or None for a plain array."""
        node = self.node(row)
        return Pyramid(node) if is_pyramid(node) else None

    def dims(self, row: Any) -> tuple[str, ...]:
        """The map's own dimension names (after item/target axes): ("y", "x") or ("t", "y", "x")."""
        node = self.node(row)
        if is_pyramid(node):
            return ("y", "x")
        names = tuple(node.metadata.dimension_names or ())
        # item axis (+ a target axis when K > 1) of maps/<method>; the target axis of items/<key>/<method>
        lead = 1 if int(row["index"]) < 0 else 1 + (int(node.attrs.get("targets_per_item", 1)) > 1)
        return names[lead:] if names else (("t", "y", "x") if node.ndim - lead == 3 else ("y", "x"))

    def map_of(self, row: Any, t: int | None = None, max_frames: int | None = None) -> np.ndarray:
        """``row``'s map as float32: (H, W), or (T, H, W) for video (frame ``t`` when given; with
        ``max_frames``, a long video's frames evenly strided down to at most that many, so memory stays
        bounded whatever its length). A pyramid gives its full-resolution level (use :meth:`pyramid`
        to read a coarser one)."""
        node = self.node(row)
        where = f"{row['item_id']} [{row['method']}]"
        try:
            if is_pyramid(node):
                m = Pyramid(node).level(0)[...]
            else:
                rank = as_int(row["rank"])
                if int(row["index"]) >= 0:
                    key: tuple = (int(row["index"]),)
                    if int(node.attrs.get("targets_per_item", 1)) > 1:
                        key += (rank,)
                else:
                    key = (rank,)
                strided = False
                if t is not None and node.ndim - len(key) == 3:
                    key += (int(np.clip(t, 0, node.shape[len(key)] - 1)),)
                elif max_frames and node.ndim - len(key) == 3 and node.shape[len(key)] > max_frames:
                    key += (slice(None, None, -(-int(node.shape[len(key)]) // max_frames)),)
                    strided = True
                if not strided:
                    m = node[key]
                else:  # the frames of an animation each draw on the same strided reference: read it once
                    cached = (id(node), key[:-1], key[-1].step)  # (a slice is not hashable)
                    if cached not in self._strided:
                        self._strided.clear()
                        self._strided[cached] = np.asarray(node[key], dtype=np.float32)
                    m = self._strided[cached]
        except MapMissing:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged or absent shard
            raise MapMissing(f"{where}: its map cannot be read ({type(e).__name__})") from None
        m = np.asarray(m, dtype=np.float32)
        if m.size == 0 or not np.isfinite(m).any():
            raise MapMissing(f"{where}: its map is missing (no data in the store)")
        return np.nan_to_num(m, nan=0.0)

    def frames(self, row: Any) -> int:
        """Frames of a video map (1 for an image)."""
        try:
            d = self.dims(row)
            return int(self.node(row).shape[-3]) if d and d[0] == "t" else 1
        except MapMissing:
            return 1


def as_int(v: Any, default: int = 0) -> int:
    """A table cell as an int (``default`` for null/NaN)."""
    try:
        return default if v is None or v != v else int(v)
    except (TypeError, ValueError):
        return default


def import_metrics() -> None:
    """Register every metric (their modules register their columns on import)."""
    try:
        import salient.metrics  # noqa: F401
    except Exception:  # noqa: BLE001 - a metric module being written elsewhere must not stop a report
        pass


def open_store(out: str | os.PathLike) -> StoreView:
    """Open ``out`` for reading (see the module docstring); a folder that is not a store is a one-line error."""
    from ..store import ZARR_NAME, read_results
    from ..store.check import damaged_metadata

    out = Path(out)
    if not out.is_dir():
        raise SalientError(f"{out}: no such folder")
    import_metrics()  # the table is read with every registered metric's column
    has_zarr = (out / ZARR_NAME / "zarr.json").is_file()
    parts = sorted((out / "results").glob("part-*.parquet"))
    if not has_zarr and not parts:
        raise SalientError(f"{out}: not a salient store (no {ZARR_NAME} and no results/); "
                           "make one with salient run, explain or demo")
    missing = [f"{p}: {why}" for p, why in damaged_metadata(out)]
    attrs = _root_attrs(out / ZARR_NAME / "zarr.json") if has_zarr else {}
    bad_parts = {str(p).split(":")[0] for p in missing}
    try:
        df = read_results(out)
    except SalientError as e:  # a torn part: read what the others hold
        missing.append(str(e))
        df = _read_good_parts(out, [p for p in parts if str(p) not in bad_parts])
    df = df.reset_index(drop=True)
    df.insert(0, "row", np.arange(len(df), dtype=np.int64))
    flagged = _flagged_positions(out)
    if flagged is not None:
        df["flagged"] = df["position"].isin(flagged)
    if not len(df):
        missing.append("no results yet (results/part-*.parquet): the job has not written a row")
    if has_zarr and not (out / ZARR_NAME / "maps").is_dir() and not (out / ZARR_NAME / "items").is_dir():
        missing.append("no maps yet (saliency.zarr/maps/)")
    if attrs.get("complete") is False or (attrs.get("spec_hash") and not attrs.get("complete")):
        missing.append("the job is not complete (rerun the same salient run command to finish it)")
    return StoreView(out, attrs, df, list(dict.fromkeys(missing)))


def _flagged_positions(out: Path) -> Any:
    """Positions ``salient audit`` flagged (``OUT/audit/flagged.parquet``), or None without one."""
    import pyarrow.parquet as pq

    path = out / "audit" / "flagged.parquet"
    try:
        return pq.read_table(path, columns=["position"]).column("position").to_numpy() if path.is_file() else None
    except Exception:  # noqa: BLE001 - unreadable findings: no flagged column
        return None


def _root_attrs(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_bytes())
        return dict(meta.get("attributes") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def _read_good_parts(out: Path, parts: list[Path]) -> Any:
    """The table from the parts that read (a damaged one left out), latest rows only."""
    import pandas as pd
    import pyarrow.parquet as pq

    from ..store import read_results

    frames = []
    for p in parts:
        try:
            frames.append(pq.read_table(p).to_pandas())
        except Exception:  # noqa: BLE001 - damaged: already named in ``missing``
            continue
    empty = read_results(out / "__none__")
    if not frames:
        return empty
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(["position", "method", "rank"], keep="last")
    for c in empty.columns:
        if c not in df.columns:
            df[c] = None
    return df.sort_values(["position", "method", "rank"]).reset_index(drop=True)[list(empty.columns)]
