"""The output store: ``OUT/saliency.zarr`` (Zarr v3) beside ``OUT/results/`` (Parquet parts).

Contract (DESIGN.md), as written here:
- Root attrs: ``salient_version``, ``model``, ``spec`` (the job spec), ``started``; a job also sets
  ``spec_hash``, ``batch_size`` and ``complete``.
- ``maps/<method>``: float32, one row per item, ``index`` = the item's position in the source.
  Shape (N, H, W) with ``dimension_names`` ("item", "y", "x"), or (N, T, H, W) with
  ("item", "t", "y", "x") for video; when a method explains the top K > 1 classes of every item
  a target axis follows the item axis: (N, K, H, W) with ("item", "topK", "y", "x"), ``rank`` in
  the table being the position on it. One chunk per map (1, [1,] H, W); shards of
  ``shard_items`` items along "item". Rows of items without a map (errors, odd sizes, not done yet)
  are NaN (the fill value). Every method's array has the same N, so ``xr.open_zarr(OUT /
  "saliency.zarr", group="maps")`` opens all of them as one Dataset.
- ``items/<key>/<method>`` (key = :func:`item_key` of the item id): maps whose size or target
  count differs from the stacked array's, shape (K, ...) with dims ("target", ...), chunked
  spatially; their table rows have ``index == -1``.
- Array attrs: method, parameters, target (the target spec), label, seed, signed.
- ``results/part-*.parquet``: one row per (item, method, target) with the contract columns
  :data:`RESULT_COLUMNS` plus :data:`EXTRA_COLUMNS` (position, rank, and the manifest's
  true_label, mask, box). When an item is redone (resume), its newer rows supersede the older:
  :func:`read_results` keeps, for each (position, method), the rows of the latest part, and
  :meth:`Store.close` rewrites parts that hold superseded rows.

Safety rules (one writer, nothing torn, nothing lost):
- This process is the only writer of the store (an exclusive ``flock`` on ``OUT/.lock``; a
  second writer is refused). With executor workers on other processes or machines, maps come back
  to the driver, which writes them; no worker ever writes.
- Shards are never written piecewise: the maps of a shard are gathered in an in-memory buffer
  (loaded from disk first, so maps of an earlier run are kept) and the whole shard is written at
  once when all its items are resolved, at a checkpoint, or at close. A rewrite is whole, so a
  retried item simply rewrites its shard. zarr's LocalStore writes every file to a temporary name
  and renames it, so a SIGKILL leaves the old shard or the new one, never half of one; inner
  chunks carry a CRC32C checksum, so a damaged shard fails loudly when read (a job's resume reads
  the shards it will rewrite, see :meth:`Store.verify`).
- A map's table row is written only after its shard is on disk (and fsynced when ``durable``):
  an ``ok`` row always has its map. Parquet parts are written to a hidden temp file, fsynced and
  renamed, so a crash never leaves a torn part.
Compression: Blosc lz4 with byte shuffle by default (``zstd``, or ``none`` for the fastest writes),
always followed by the CRC32C checksum. Writes are synchronous on the driver (a whole shard at a
time); benchmarks/store_write.py measures the rate.
Memory: one buffer of ``shard_items`` maps per method per shard that has a live item (usually one
or two), plus ``flush_rows`` table rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ..errors import SalientError
from ..saliency import Saliency

RESULT_COLUMNS = [
    ("item_id", pa.string()), ("index", pa.int64()), ("source", pa.string()), ("method", pa.string()),
    ("target", pa.int64()), ("label", pa.string()), ("base_score", pa.float64()), ("n_forward", pa.int64()),
    ("seconds", pa.float64()), ("insertion_auc", pa.float64()), ("deletion_auc", pa.float64()),
    ("status", pa.string()), ("error", pa.string()),
]
EXTRA_COLUMNS = [
    ("position", pa.int64()), ("rank", pa.int64()),
    ("true_label", pa.string()), ("mask", pa.string()), ("box", pa.list_(pa.float64())),
]
RESULT_SCHEMA = pa.schema(RESULT_COLUMNS + EXTRA_COLUMNS)
META_KEYS = ("true_label", "mask", "box")
SHARD_ITEMS = 64
COMPRESSORS = ("lz4", "zstd", "none")
ZARR_NAME = "saliency.zarr"


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def item_key(item_id: str) -> str:
    """The zarr node name of an item id: percent-encoded (``/`` -> ``%2F``), hashed if too long."""
    key = quote(item_id, safe="") or "%00"
    if key.startswith("__") or set(key) == {"."}:
        key = "%" + key
    if len(key) > 180:
        key = key[:160] + "-" + hashlib.sha1(item_id.encode()).hexdigest()[:16]
    return key


def _compressors(kind: str) -> tuple:
    if kind not in COMPRESSORS:
        raise SalientError(f"store compressor {kind!r}: choose one of {', '.join(COMPRESSORS)}")
    head = {"lz4": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),), "zstd": (ZstdCodec(level=1),),
            "none": ()}[kind]
    return (*head, Crc32cCodec())


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Lock:
    """An exclusive advisory lock on ``OUT/.lock``; the kernel drops it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SalientError(
                f"{path.parent} is being written by another process (pid {holder}); wait for it or use another out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


@dataclass
class _Buffer:
    """The in-memory image of one shard: its maps and the ok rows waiting for it to reach disk."""

    data: np.ndarray
    rows: list[dict[str, Any]] = field(default_factory=list)
    dirty: bool = False


@dataclass
class _Stack:
    """One ``maps/<method>`` array: K maps of ``map_shape`` per item (K > 1 adds a target axis)."""

    arr: zarr.Array
    k: int
    map_shape: tuple[int, ...]
    shard: int
    buffers: dict[int, _Buffer] = field(default_factory=dict)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.k, *self.map_shape) if self.k > 1 else self.map_shape

    def fits(self, maps: np.ndarray) -> bool:
        return maps.shape[0] == self.k and tuple(maps.shape[1:]) == self.map_shape


class Store:
    """Append maps and result rows; ``close()`` writes what is buffered and consolidates metadata.

    ``add(item_id, source, results, position=None, extra=None)`` stores the maps of one item (one
    Saliency per target; several methods may be mixed) and their ``ok`` rows; ``add_error`` one
    ``error`` row; ``skip(position, method)`` marks an item done by an earlier run (a job's resume).
    ``position`` is the item's place in the source order: it is the row of the map in
    ``maps/<method>``, so a resumed or reordered run fills the same rows. Without it, items get the
    positions after everything already in the store (appending).
    """

    def __init__(self, out: str | os.PathLike, model_id: str = "", spec: dict | None = None, flush_rows: int = 256,
                 *, shard_items: int = SHARD_ITEMS, checkpoint_seconds: float = 60.0, compressor: str = "lz4",
                 durable: bool = True, attrs: dict[str, Any] | None = None):
        if shard_items < 1 or flush_rows < 1:
            raise SalientError("store: shard_items and flush_rows must be >= 1")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results").mkdir(exist_ok=True)
        self._lock = _Lock(self.out / ".lock")
        try:
            self._open(model_id, spec, flush_rows, shard_items, checkpoint_seconds, compressor, durable, attrs or {})
        except BaseException:
            self._lock.release()
            raise

    def _open(self, model_id: str, spec: dict | None, flush_rows: int, shard_items: int,
              checkpoint_seconds: float, compressor: str, durable: bool, extra: dict[str, Any]) -> None:
        from .. import __version__

        self.flush_rows, self.shard_items, self.durable = flush_rows, shard_items, durable
        self.checkpoint_seconds = checkpoint_seconds
        self.compressors = _compressors(compressor)
        self._clean_leftovers()
        self.root = zarr.open_group(self.out / ZARR_NAME, mode="a", zarr_format=3, use_consolidated=False)
        attrs = dict(self.root.attrs)
        if "salient_version" not in attrs:
            attrs = {"salient_version": __version__, "model": model_id, "spec": spec or {},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        attrs.update(extra)
        attrs["runs"] = int(attrs.get("runs", 0)) + 1
        self.root.attrs.update(_json_safe(attrs))  # one atomic write of the root's zarr.json
        self.run = attrs["runs"]
        self._parts_at_open = sorted(p.name for p in (self.out / "results").glob("part-*.parquet"))
        self._stacks: dict[str, _Stack] = {}
        maps = self.root.get("maps")
        if isinstance(maps, zarr.Group):
            for name, arr in maps.arrays():
                self._stacks[name] = self._open_stack(arr)
        self._resolved: dict[str, dict[int, set[int]]] = {}
        self._method_attrs: dict[str, dict[str, Any]] = {}
        self._rows: list[dict[str, Any]] = []
        self._unsynced: set[Path] = set()
        self._seq = 0
        self._hi = max((s.arr.shape[0] for s in self._stacks.values()), default=0)  # positions covered
        self._next_auto: int | None = None
        self._wrote_rows = False
        self._last_checkpoint = time.monotonic()
        self.closed = False

    # -- setup
    def _clean_leftovers(self) -> None:
        """Remove temp files a killed writer left behind (zarr's ``*.partial``, our ``.part-*.tmp``)."""
        for p in (self.out / "results").glob(".part-*.tmp"):
            p.unlink(missing_ok=True)
        zdir = self.out / ZARR_NAME
        if zdir.is_dir():
            for dirpath, _, files in os.walk(zdir):
                for f in files:
                    if f.endswith(".partial"):
                        Path(dirpath, f).unlink(missing_ok=True)

    def _open_stack(self, arr: zarr.Array) -> _Stack:
        k = int(arr.attrs.get("targets_per_item", 1))
        shape = tuple(arr.shape[2:] if k > 1 else arr.shape[1:])
        return _Stack(arr, k, shape, int(arr.shards[0]) if arr.shards else int(arr.chunks[0]))

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes (a copy); update them with :meth:`set_attrs`."""
        return dict(self.root.attrs)

    def set_attrs(self, **attrs: Any) -> None:
        self.root.attrs.update(_json_safe(attrs))

    def describe(self, name: str, **attrs: Any) -> None:
        """Attrs for ``maps/<name>`` (target spec, label, parameters, seed, signed), set when it is
        created; without them they are taken from the first map."""
        self._method_attrs[name] = _json_safe(attrs)

    def stack(self, method: str) -> zarr.Array | None:
        s = self._stacks.get(method)
        return s.arr if s else None

    # -- positions
    def _position(self, position: int | None) -> int:
        if position is not None:
            if position < 0:
                raise SalientError(f"item position must be >= 0, got {position}")
            return int(position)
        if self._next_auto is None:
            prev = read_results(self.out, columns=["position"])
            last = int(prev["position"].max()) + 1 if len(prev) else 0
            self._next_auto = max(last, self._hi)
        self._next_auto += 1
        return self._next_auto - 1

    def _shard_size(self, method: str) -> int:
        s = self._stacks.get(method)
        return s.shard if s else self.shard_items

    def _resolve(self, method: str, pos: int) -> None:
        """Record that ``pos`` needs nothing more for ``method``; write its shard once all are resolved."""
        self._hi = max(self._hi, pos + 1)
        size = self._shard_size(method)
        shard = pos // size
        done = self._resolved.setdefault(method, {}).setdefault(shard, set())
        done.add(pos)
        if len(done) == size:
            del self._resolved[method][shard]
            stack = self._stacks.get(method)
            buf = stack.buffers.pop(shard, None) if stack else None
            if buf is not None:
                self._write_shard(stack, shard, buf)
        self._maybe_flush()

    # -- maps
    def _create_stack(self, method: str, first: Saliency, maps: np.ndarray) -> _Stack:
        k, shape = maps.shape[0], tuple(maps.shape[1:])
        lead = ("item", f"top{k}") if k > 1 else ("item",)
        dims = (*lead, "y", "x") if len(shape) == 2 else (*lead, "t", "y", "x")
        per_item = (k, *shape) if k > 1 else shape
        one = (1,) * (len(per_item) - len(shape))
        attrs = {"method": method, "parameters": first.params, "seed": first.seed, "signed": first.signed,
                 "target": f"top{k}" if k > 1 else first.target, "label": "" if k > 1 else first.label}
        attrs.update(self._method_attrs.get(method, {}))
        attrs["targets_per_item"] = k
        arr = self.root.create_array(
            f"maps/{method}", shape=(self._hi, *per_item), dtype="float32", chunks=(1, *one, *shape),
            shards=(self.shard_items, *per_item), dimension_names=dims, fill_value=np.nan,
            compressors=self.compressors, attributes=_json_safe(attrs),
        )
        stack = _Stack(arr, k, shape, self.shard_items)
        self._stacks[method] = stack
        return stack

    def _buffer(self, stack: _Stack, shard: int) -> _Buffer:
        buf = stack.buffers.get(shard)
        if buf is None:
            data = np.full((stack.shard, *stack.item_shape), np.nan, dtype=np.float32)
            s0, n = shard * stack.shard, stack.arr.shape[0]
            if n > s0:  # keep what an earlier run or session wrote into this shard
                data[: min(n, s0 + stack.shard) - s0] = stack.arr[s0 : s0 + stack.shard]
            buf = stack.buffers[shard] = _Buffer(data)
        return buf

    def _write_shard(self, stack: _Stack, shard: int, buf: _Buffer) -> None:
        """Write one whole shard (rows up to the last position known), then release its rows."""
        s0 = shard * stack.shard
        hi = min(s0 + stack.shard, max(self._hi, stack.arr.shape[0]))
        if stack.arr.shape[0] < hi:
            stack.arr.resize((hi, *stack.item_shape))
        with zarr.config.set({"codec_pipeline.batch_size": stack.shard}):  # encode the shard's chunks together
            stack.arr[s0:hi] = buf.data[: hi - s0]
        if self.durable:
            key = stack.arr.metadata.encode_chunk_key((shard,) + (0,) * (stack.arr.ndim - 1))
            self._unsynced.add(self.out / ZARR_NAME / stack.arr.path / key)
        buf.dirty = False
        self._rows.extend(buf.rows)
        buf.rows = []

    def _write_odd(self, item_id: str, method: str, group: list[Saliency], maps: np.ndarray) -> None:
        """Maps whose size differs from the stacked array: ``items/<key>/<method>``, shape (K, ...)."""
        shape = maps.shape[1:]
        dims = ("target", "y", "x") if len(shape) == 2 else ("target", "t", "y", "x")
        chunks = (1, *(min(n, 1024) if i >= len(shape) - 2 else 1 for i, n in enumerate(shape)))
        s = group[0]
        self.root.create_array(
            f"items/{item_key(item_id)}/{method}", data=maps, chunks=chunks, dimension_names=dims, overwrite=True,
            compressors=self.compressors,
            attributes=_json_safe({"method": method, "parameters": s.params, "seed": s.seed, "signed": s.signed,
                                   "item_id": item_id, "target": [g.target for g in group],
                                   "label": [g.label for g in group]}),
        )

    # -- rows
    @staticmethod
    def _meta(extra: dict[str, Any] | None) -> dict[str, Any]:
        extra = extra or {}
        box = extra.get("box")
        return {"true_label": None if extra.get("true_label") is None else str(extra["true_label"]),
                "mask": None if extra.get("mask") is None else str(extra["mask"]),
                "box": None if box is None else [float(v) for v in box]}

    def add(self, item_id: str, source: str, results: list[Saliency], position: int | None = None,
            extra: dict[str, Any] | None = None) -> None:
        """Store the maps of one item (one Saliency per target, any methods) and their ok rows."""
        pos = self._position(position)
        meta = self._meta(extra)
        groups: dict[str, list[Saliency]] = {}
        for s in results:
            groups.setdefault(s.method, []).append(s)
        for method, group in groups.items():
            maps = np.stack([np.asarray(s.map, dtype=np.float32) for s in group])
            stack = self._stacks.get(method) or self._create_stack(method, group[0], maps)
            stacked = stack.fits(maps)
            if not stacked:
                self._write_odd(item_id, method, group, maps)
            rows = [{
                "item_id": item_id, "index": pos if stacked else -1, "source": source, "method": method,
                "target": s.target, "label": s.label, "base_score": s.base_score, "n_forward": s.n_forward,
                "seconds": s.seconds, "insertion_auc": s.metrics.get("insertion_auc"),
                "deletion_auc": s.metrics.get("deletion_auc"), "status": "ok", "error": "", "position": pos,
                "rank": j, **meta,
            } for j, s in enumerate(group)]
            if stacked:
                buf = self._buffer(stack, pos // stack.shard)
                buf.data[pos % stack.shard] = maps if stack.k > 1 else maps[0]
                buf.rows.extend(rows)
                buf.dirty = True
            else:
                self._rows.extend(rows)
            self._resolve(method, pos)

    def add_error(self, item_id: str, source: str, method: str, error: str, position: int | None = None,
                  extra: dict[str, Any] | None = None, n_forward: int = 0, seconds: float = 0.0) -> None:
        """One ``error`` row for (item, method) with a one-line reason; its map rows stay NaN."""
        pos = self._position(position)
        reason = " ".join(str(error).split()) or "error"
        self._rows.append({"item_id": item_id, "index": -1, "source": source, "method": method, "target": None,
                           "label": None, "base_score": None, "n_forward": n_forward, "seconds": seconds,
                           "insertion_auc": None, "deletion_auc": None, "status": "error", "error": reason,
                           "position": pos, "rank": None, **self._meta(extra)})
        stack = self._stacks.get(method)
        if stack is not None and pos // stack.shard in stack.buffers:
            buf = stack.buffers[pos // stack.shard]
            buf.data[pos % stack.shard] = np.nan
            buf.dirty = True
        self._resolve(method, pos)

    def skip(self, position: int, method: str) -> None:
        """An item an earlier run completed: nothing to write, but its shard may now be complete."""
        self._resolve(method, int(position))

    # -- checks for a resume
    def verify(self, method: str, shards: Iterable[int]) -> list[int]:
        """Read the given shards of ``maps/<method>``; delete and return those that fail (checksum,
        truncation). Their items must be redone."""
        stack = self._stacks.get(method)
        if stack is None:
            return []
        bad = []
        for shard in sorted(set(shards)):
            s0 = shard * stack.shard
            if s0 >= stack.arr.shape[0]:
                continue
            try:
                stack.arr[s0 : s0 + stack.shard]
            except Exception:  # noqa: BLE001 - any read failure means the shard is damaged
                key = stack.arr.metadata.encode_chunk_key((shard,) + (0,) * (stack.arr.ndim - 1))
                (self.out / ZARR_NAME / stack.arr.path / key).unlink(missing_ok=True)
                bad.append(shard)
        return bad

    def shard_size(self, method: str) -> int:
        return self._shard_size(method)

    # -- table
    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
            self.flush()
        elif len(self._rows) >= self.flush_rows:
            self._write_part()

    def _write_part(self) -> None:
        if not self._rows:
            return
        for path in sorted(self._unsynced):  # maps reach the disk before the rows that point at them
            _fsync(path)
        for d in {p.parent for p in self._unsynced}:
            _fsync(d, directory=True)
        self._unsynced.clear()
        table = pa.Table.from_pylist(self._rows, schema=RESULT_SCHEMA)
        self._seq += 1
        name = f"part-r{self.run:04d}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        _write_table_atomic(table, self.out / "results" / name, self.durable)
        self._rows = []
        self._wrote_rows = True

    def flush(self) -> None:
        """Checkpoint: write every shard that has new maps (whole), then every released row."""
        for stack in self._stacks.values():
            for shard, buf in stack.buffers.items():
                if buf.dirty or buf.rows:
                    self._write_shard(stack, shard, buf)
        self._write_part()
        self._last_checkpoint = time.monotonic()

    def close(self) -> None:
        """Write everything buffered, give every map array the same length, drop superseded rows,
        consolidate metadata, release the lock."""
        if self.closed:
            return
        try:
            self.flush()
            for stack in self._stacks.values():
                stack.buffers.clear()
                if stack.arr.shape[0] < self._hi:
                    stack.arr.resize((self._hi, *stack.item_shape))
            if self._parts_at_open and self._wrote_rows:
                compact_results(self.out, self.durable)
            with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec (yet)"
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(self.out / ZARR_NAME)
        finally:
            self.closed = True
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _write_table_atomic(table: pa.Table, path: Path, durable: bool = True) -> None:
    tmp = path.parent / f".{path.stem}.tmp"
    pq.write_table(table, tmp)
    if durable:
        _fsync(tmp)
    os.replace(tmp, path)
    if durable:
        _fsync(path.parent, directory=True)


def _parts(out: str | os.PathLike) -> list[Path]:
    return sorted((Path(out) / "results").glob("part-*.parquet"))


def _read_parts(parts: list[Path], columns: list[str] | None) -> pa.Table:
    """Concatenate parts with a ``_part`` rank column (parts sort by run, then sequence)."""
    tables = []
    for rank, p in enumerate(parts):
        t = pq.read_table(p, columns=columns)
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

    want = [n for n, _ in RESULT_COLUMNS + EXTRA_COLUMNS] if columns is None else list(columns)
    parts = _parts(out)
    if not parts:
        return pd.DataFrame({n: pd.Series(dtype=RESULT_SCHEMA.field(n).type.to_pandas_dtype()) for n in want})
    need = list(dict.fromkeys([*want, "position", "method", "rank"]))
    table = _read_parts(parts, need)
    if latest:
        keep = _latest_mask(table["position"].to_numpy(), table["method"].to_numpy(zero_copy_only=False),
                            table["_part"].to_numpy())
        table = table.filter(pa.array(keep))
    table = table.sort_by([("position", "ascending"), ("method", "ascending"), ("rank", "ascending")])
    return table.select(want).to_pandas()


def compact_results(out: str | os.PathLike, durable: bool = True) -> int:
    """Rewrite every part holding superseded rows without them; returns the rows dropped. A crash
    in between leaves both versions, which :func:`read_results` reads the same."""
    parts = _parts(out)
    if len(parts) < 2:
        return 0
    keys = _read_parts(parts, ["position", "method"])
    keep = _latest_mask(keys["position"].to_numpy(), keys["method"].to_numpy(zero_copy_only=False),
                        keys["_part"].to_numpy())
    ranks = keys["_part"].to_numpy()
    dropped = 0
    for rank in np.unique(ranks[~keep]):
        path = parts[rank]
        table = pq.read_table(path)
        mask = keep[ranks == rank]
        dropped += int((~mask).sum())
        if mask.any():
            run_seq = "-".join(path.stem.split("-")[1:3])
            _write_table_atomic(table.filter(pa.array(mask)),
                                path.parent / f"part-{run_seq}-{uuid.uuid4().hex[:8]}.parquet", durable)
        path.unlink()
    return dropped


def read_map(out: str | os.PathLike, row: Any) -> np.ndarray:
    """The map of one table row (a DataFrame row or dict): ``maps/<method>[index]`` (at ``rank``
    on the target axis), or ``items/<key>/<method>[rank]`` for odd sizes."""
    root = zarr.open_group(Path(out) / ZARR_NAME, mode="r")
    get = row.get if hasattr(row, "get") else row.__getitem__
    if get("status") != "ok":
        raise SalientError(f"row of {get('item_id')!r} / {get('method')} has status {get('status')}: no map")
    rank = int(get("rank") or 0)
    if int(get("index")) >= 0:
        arr = root[f"maps/{get('method')}"]
        m = arr[int(get("index"))]
        return np.asarray(m[rank] if int(arr.attrs.get("targets_per_item", 1)) > 1 else m)
    return np.asarray(root[f"items/{item_key(str(get('item_id')))}/{get('method')}"][rank])
