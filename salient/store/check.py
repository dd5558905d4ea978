"""Check a store without its writer: can its metadata be read, and is every ``ok`` row's map there
and intact. A resume trusts an ``ok`` row only after this (``salient run``), ``salient show``
reports what is lost, ``salient repair`` mends the metadata.

- :func:`damaged_metadata` lists the files a reader cannot get past: a results part whose Parquet
  footer does not read (truncated), a ``zarr.json`` (the root, the ``maps``/``items`` groups, each
  ``maps/<method>`` array) that is missing, not JSON or not valid Zarr v3 metadata, and a store
  with results but no ``saliency.zarr``. :func:`check_metadata` raises the first as one line
  naming the file and what to do (``salient repair OUT``, :mod:`salient.store.repair`).
- :func:`check_maps` checks the map of every ``ok`` row: its shard file is there, the shard index
  and every chunk of the item pass their CRC32C (which covers every stored byte) and lie inside
  the file, and no chunk is absent (an absent chunk reads as NaN, the fill value: the writer
  stores every map of an ``ok`` row). Each shard file holding an ``ok`` row is read once, whole,
  in one read, and checked chunk by chunk (:meth:`~salient.store.shards._ShardCodec.read`), on a
  few threads; maps of odd sizes (``items/``) are read whole through zarr, one array per item,
and tile-mode mosaics band by band (:func:`~salient.store.mosaic.verify_mosaic`).

Cost of :func:`check_maps` (``benchmarks/store_check.py``, a shared 2-core dev VM, files in the
page cache, 224 x 224 float32 maps with noise, lz4, 164 kB a map; bound by the file reads and the
CRC32C, nothing is decompressed): 0.14 s per 1000 shards of 2 maps (0.07 s per 1000 maps, 0.44 s
per GB of shard files); 2.9 s per 1000 shards of 64 maps (0.045 s per 1000 maps, 0.27 s per GB).
A million-item store: about a minute, once per resume or ``show``. Reading from a disk adds the
time to read the shard files once (at 1 GB/s, 1 s per GB). More threads did not help on 2 cores
(the default 4 overlaps file reads on a slow or network disk).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import zarr

from .read import _parts, damaged
from .schema import ZARR_NAME, item_key
from .shards import DAMAGED, FINE, MISSING, _ShardCodec, shard_file

STATES = {MISSING: "missing", DAMAGED: "damaged"}


# -- metadata
def _node_problem(path: Path, kind: str) -> str | None:
    """What is wrong with the ``zarr.json`` at ``path`` of a node of ``kind`` (group, array); None if fine."""
    if not path.is_file():
        return "missing"
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return "damaged zarr.json (not valid JSON)"
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != kind:
        return f"damaged zarr.json (not Zarr v3 {kind} metadata)"
    if kind == "array":
        from zarr.core.metadata.v3 import ArrayV3Metadata

        try:
            ArrayV3Metadata.from_dict(meta)
        except Exception as e:  # noqa: BLE001 - any refusal of zarr's parser
            return f"damaged zarr.json ({type(e).__name__}: {e})"
    return None


def damaged_metadata(out: str | os.PathLike) -> list[tuple[Path, str]]:
    """(file, what is wrong) for every file of the store in ``out`` that a reader cannot get past."""
    out = Path(out)
    zdir, bad = out / ZARR_NAME, []
    parts = _parts(out)
    for p in parts:
        try:
            pq.read_metadata(p)
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a torn file vary
            bad.append((p, f"damaged results part ({type(e).__name__}: {e})"))
    if not zdir.is_dir():
        if parts:
            bad.append((zdir, f"missing, but {out / 'results'} holds results"))
        return bad
    if parts or (zdir / "zarr.json").exists():
        problem = _node_problem(zdir / "zarr.json", "group")
        if problem:
            bad.append((zdir / "zarr.json", problem))
    for group in ("maps", "items"):
        if (zdir / group).is_dir() and (problem := _node_problem(zdir / group / "zarr.json", "group")):
            bad.append((zdir / group / "zarr.json", problem))
    if (zdir / "maps").is_dir():
        for a in sorted(d for d in (zdir / "maps").iterdir() if d.is_dir()):
            if problem := _node_problem(a / "zarr.json", "array"):
                bad.append((a / "zarr.json", problem))
    return bad


def check_metadata(out: str | os.PathLike) -> None:
    """Raise a one-line SalientError naming the first damaged file of the store (see
    :func:`damaged_metadata`) and what to do; return if there is none."""
    bad = damaged_metadata(out)
    if bad:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more damaged file{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise damaged(path, reason + more, out)


# -- maps
@dataclass
class MapCheck:
    """What :func:`check_maps` found: per method, the positions whose map is missing or damaged."""

    lost: dict[str, dict[int, str]] = field(default_factory=dict)
    shards: int = 0  # shard files read
    nbytes: int = 0  # bytes read
    seconds: float = 0.0

    def counts(self, method: str) -> dict[str, int]:
        states = list(self.lost.get(method, {}).values())
        return {s: states.count(s) for s in STATES.values()}

    @property
    def n_lost(self) -> int:
        return sum(len(v) for v in self.lost.values())

    def summary(self) -> str:
        """``rise: 2 missing, dida: 1 damaged``."""
        return ", ".join(f"{m}: " + ", ".join(f"{n} {s}" for s, n in self.counts(m).items() if n)
                         for m in sorted(self.lost) if self.lost[m])


def _read_bytes(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError:  # unreadable: treated as damaged (an empty buffer fails the index check)
        return b""


def _open_root(out: Path) -> zarr.Group | None:
    try:
        return zarr.open_group(out / ZARR_NAME, mode="r", use_consolidated=False)
    except Exception:  # noqa: BLE001 - no readable root: every map is missing
        return None


def _node(root: zarr.Group | None, path: str) -> Any:
    """The node at ``path``; None if absent, the exception if its metadata does not read."""
    if root is None:
        return None
    try:
        return root.get(path)
    except Exception as e:  # noqa: BLE001 - damaged metadata
        return e


def _stacked_states(out: Path, arr: Any, positions: np.ndarray, pool: ThreadPoolExecutor,
                    check: MapCheck) -> np.ndarray:
    """The state of each of ``positions`` in ``maps/<method>`` (``arr``: the array, None if absent,
    an exception if it does not open)."""
    if not isinstance(arr, zarr.Array):
        return np.full(len(positions), MISSING if arr is None else DAMAGED, np.uint8)
    n_items, size = arr.shape[0], int(arr.shards[0]) if arr.shards else int(arr.chunks[0])
    codec = _ShardCodec.make(arr)
    state = np.full(max(n_items, int(positions.max()) + 1), MISSING, np.uint8)
    shards = [int(s) for s in np.unique(positions // size) if s * size < n_items]

    def one(shard: int) -> tuple[int, np.ndarray, int]:
        s0 = shard * size
        n = min(size, n_items - s0)
        if codec is None:  # zarr's read: a failure loses the shard, an all-NaN row is missing
            try:
                rows = np.asarray(arr[s0 : s0 + n]).reshape(n, -1)
            except Exception:  # noqa: BLE001 - damaged
                return s0, np.full(n, DAMAGED, np.uint8), 0
            return s0, np.where(np.isnan(rows).all(axis=1), MISSING, FINE).astype(np.uint8), rows.nbytes
        raw = _read_bytes(shard_file(out / ZARR_NAME, arr, shard))
        return s0, codec.read(raw, n), len(raw or b"")

    for i in range(0, len(shards), 256):  # a bounded number of shards in flight
        for s0, st, nbytes in pool.map(one, shards[i : i + 256]):
            state[s0 : s0 + len(st)] = st
            check.shards += 1
            check.nbytes += nbytes
    return state[positions]


def _odd_state(root: zarr.Group | None, method: str, item_id: str, n_targets: int) -> int:
    """The state of an item's ``items/<key>/<method>`` array holding ``n_targets`` maps."""
    arr = _node(root, f"items/{item_key(item_id)}/{method}")
    if arr is None:
        return MISSING
    if isinstance(arr, zarr.Group):  # a mosaic of tile mode: complete, every band of every level intact
        from .mosaic import verify_mosaic

        return FINE if verify_mosaic(arr) else DAMAGED
    from .frames import is_frames, verify_frames

    if is_frames(arr):  # a long video's map along t: band by band, never the whole video in memory
        return FINE if verify_frames(arr) else DAMAGED
    try:
        maps = np.asarray(arr[:])
    except Exception:  # noqa: BLE001 - damaged metadata or chunk
        return DAMAGED
    if maps.shape[0] < n_targets or np.isnan(maps[:n_targets].reshape(n_targets, -1)).all(axis=1).any():
        return MISSING
    return FINE


def check_maps(out: str | os.PathLike, df: Any, threads: int = 4) -> MapCheck:
    """Check the map of every ``ok`` row of ``df`` (the latest rows of the table, with the columns
    position, method, status, index, rank and item_id): see the module docstring. Read-only."""
    t0 = time.perf_counter()
    out, check = Path(out), MapCheck()
    ok = df[df["status"] == "ok"]
    root = _open_root(out)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for method, g in ok.groupby("method", sort=True):
            lost: dict[int, str] = {}
            stacked = g[g["index"] >= 0]
            if len(stacked):
                positions = np.unique(stacked["index"].to_numpy(np.int64))
                states = _stacked_states(out, _node(root, f"maps/{method}"), positions, pool, check)
                lost.update((int(p), STATES[int(s)]) for p, s in zip(positions, states, strict=True) if s)
            for pos, rows in g[g["index"] < 0].groupby("position", sort=True):
                ranks = rows["rank"].fillna(0).astype(int)
                state = _odd_state(root, str(method), str(rows["item_id"].iloc[0]), int(ranks.max()) + 1)
                if state:
                    lost[int(pos)] = STATES[state]
            check.lost[str(method)] = lost
    check.seconds = time.perf_counter() - t0
    return check
