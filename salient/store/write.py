"""The store's writer: :class:`Store` appends maps and result rows to ``OUT/`` (contract: see
:mod:`salient.store`).

Safety rules (one writer, nothing torn, nothing lost):
- This process is the only writer of the store (the lock, :class:`~salient.store.files._Lock`).
  With executor workers on other processes or machines, maps come back to the driver, which
  writes them; no worker ever writes.
- Shards are never written piecewise: the maps of a shard are gathered in an in-memory buffer
  (loaded from disk first, so maps of an earlier run are kept) and the whole shard is written at
  once when all its items are resolved, at a checkpoint, or at close. A rewrite is whole, so a
  retried item simply rewrites its shard. zarr's LocalStore writes every file to a temporary name
  and renames it, so a SIGKILL leaves the old shard or the new one, never half of one; inner
  chunks carry a CRC32C checksum, so a damaged shard is found when read (a job's resume checks
  every map it would skip, :func:`salient.store.check.check_maps`, and a shard's buffer is loaded
  with every intact map of it, :meth:`_ShardCodec.read`).
- A map's table row is written only after its shard is on disk (and fsynced when ``durable``):
  an ``ok`` row always has its map. Shard files and Parquet parts are written atomically
  (:mod:`salient.store.files`), so a crash never leaves a torn part.
- Every part carries a copy of the store's metadata as it was when the part was written (the root
  attrs and each ``maps/<method>`` array's ``zarr.json``, :func:`~salient.store.schema.metadata_backup`),
  from which :func:`salient.store.repair.repair` rebuilds a damaged or lost ``zarr.json``.
Writes run off the caller's thread on the three-stage pipeline of :mod:`salient.store.pipeline`,
so a table part is written only after every shard submitted before it; a whole shard is encoded
at once by :class:`~salient.store.shards._ShardCodec`. An array grows (its ``zarr.json``, synced
too) with the part holding rows past its end. When an item is redone, its newer rows supersede
the older (see :mod:`salient.store.read`); :meth:`Store.close` rewrites parts that hold
superseded rows (:func:`compact_results`).
Memory: one buffer of ``shard_items`` maps per method per shard that has a live item (usually one
or two), plus ``flush_rows`` table rows, plus at most a few shards queued for writing.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zarr

from ..errors import SalientError
from ..methods.metric import NOTE_COLUMN, metric_columns
from ..saliency import Saliency
from . import files  # _atomic_steps and _fsync are called through the module (tests patch them there)
from .check import check_metadata
from .claims import _json_safe, check_claims
from .files import _Lock, _write_table_atomic
from .pipeline import _Writer
from .read import _latest_mask, _parts, _read_part, _read_parts, read_results
from .schema import SHARD_ITEMS, ZARR_NAME, item_key, metadata_backup, result_schema
from .shards import _compressors, _ShardCodec, shard_file


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
    codec: _ShardCodec | None = None
    length: int = 0  # the array's length once every submitted write is done (the writer resizes)
    spare: list[np.ndarray] = field(default_factory=list)  # written shard buffers, for reuse

    def __post_init__(self) -> None:
        self.codec = _ShardCodec.make(self.arr)
        self.length = self.arr.shape[0]

    def new_buffer(self) -> np.ndarray:
        data = self.spare.pop() if self.spare else np.empty((self.shard, *self.item_shape), np.float32)
        data.fill(np.nan)
        return data

    def recycle(self, data: np.ndarray) -> None:
        if len(self.spare) < 2 and data.shape[0] == self.shard:
            self.spare.append(data)

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

    Writes run on background threads, encoding on ``threads`` of them (0: everything on the
    caller's thread); ``flush()`` and ``close()`` return once everything added before them is on
    disk, and raise if a write failed (so does the next call after a failure). Read the arrays
    (:meth:`stack`) after ``flush()``.

    Opening an existing store refuses what does not belong with it (another job's spec hash, another
    model id, a method held with other settings; :mod:`salient.store.claims`) before writing
    anything. ``methods`` maps each method the session writes to its settings (``parameters``,
    ``target``, ``seed``, ...): they are recorded in the root attrs and become the attrs of the
    arrays it creates (as :meth:`describe`).
    """

    def __init__(self, out: str | os.PathLike, model_id: str = "", spec: dict | None = None, flush_rows: int = 256,
                 *, shard_items: int = SHARD_ITEMS, checkpoint_seconds: float = 60.0, compressor: str = "lz4",
                 durable: bool = True, attrs: dict[str, Any] | None = None, threads: int = 2,
                 methods: dict[str, dict[str, Any]] | None = None):
        if shard_items < 1 or flush_rows < 1:
            raise SalientError("store: shard_items and flush_rows must be >= 1")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results").mkdir(exist_ok=True)
        self._lock = _Lock(self.out / ".lock")
        try:
            self._open(model_id, spec, flush_rows, shard_items, checkpoint_seconds, compressor, durable, attrs or {},
                       methods or {})
            self._writer = _Writer(threads)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, model_id: str, spec: dict | None, flush_rows: int, shard_items: int,
              checkpoint_seconds: float, compressor: str, durable: bool, extra: dict[str, Any],
              methods: dict[str, dict[str, Any]]) -> None:
        from .. import __version__

        self.flush_rows, self.shard_items, self.durable = flush_rows, shard_items, durable
        self.checkpoint_seconds = checkpoint_seconds
        self.compressors = _compressors(compressor)
        check_metadata(self.out)  # a damaged store: one line naming the file (salient repair), nothing written
        self._clean_leftovers()
        self.root = zarr.open_group(self.out / ZARR_NAME, mode="a", zarr_format=3, use_consolidated=False)
        attrs = dict(self.root.attrs)
        check_claims(self.out, attrs, model_id, extra.get("spec_hash"), methods)  # before anything is written
        if "salient_version" not in attrs:
            attrs = {"salient_version": __version__, "model": model_id, "spec": spec or {},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        attrs.update(extra)
        if methods:  # what the store holds, method by method (see .claims)
            attrs["methods"] = {**attrs.get("methods", {}), **methods}
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
        self._method_attrs: dict[str, dict[str, Any]] = {name: _json_safe(a) for name, a in methods.items()}
        self._rows: list[dict[str, Any]] = []
        self._unsynced: set[Path] = set()  # written by this thread, synced before the next part
        self._meta_unsynced: set[Path] = set()  # written by the writer (its last stage only), likewise
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
                 "diverging": first.diverging,
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
            data = stack.new_buffer()
            s0 = shard * stack.shard
            if stack.length > s0:  # keep what an earlier run or session wrote into this shard
                self._drain()  # a write of it may be on its way
                self._load(stack, shard, data[: min(stack.length, s0 + stack.shard) - s0])
            buf = stack.buffers[shard] = _Buffer(data)
        return buf

    def _load(self, stack: _Stack, shard: int, rows: np.ndarray) -> None:
        """Read the maps of shard ``shard`` on disk into ``rows``, every intact one: a missing or
        damaged map stays NaN (a job's resume found it and redoes its item)."""
        if stack.codec is not None:
            path = shard_file(self.out / ZARR_NAME, stack.arr, shard)
            stack.codec.read(path.read_bytes() if path.is_file() else None, len(rows), out=rows)
            return
        s0 = shard * stack.shard
        try:
            rows[:] = stack.arr[s0 : s0 + len(rows)]
        except Exception:  # noqa: BLE001 - zarr's read of a damaged shard: all of it is redone
            pass

    def _array_dir(self, arr: zarr.Array) -> Path:
        return self.out / ZARR_NAME / arr.path

    def _write_shard(self, stack: _Stack, shard: int, buf: _Buffer, live: bool = False) -> None:
        """Submit one whole shard (rows up to the last position known), then release its rows: the
        part holding them is submitted later, so it is written after the shard. ``live``: the
        buffer stays in use (a checkpoint), so the writer gets a copy."""
        s0 = shard * stack.shard
        hi = min(s0 + stack.shard, max(self._hi, stack.length))
        stack.length = max(stack.length, hi)
        data = buf.data.copy() if live else buf.data
        self._writer.submit(self._shard_job(stack, s0, hi, data, shard_file(self.out / ZARR_NAME, stack.arr, shard)))
        buf.dirty = False
        self._rows.extend(buf.rows)
        buf.rows = []

    def _shard_job(self, stack: _Stack, s0: int, hi: int, data: np.ndarray, path: Path) -> Iterator[None]:
        """The writer's job for rows ``s0:hi`` (one shard) of ``data``: encode its chunks (stage 1),
        lay out the shard and write the temp file (2), fsync and rename it (3); the next part grows
        the array to cover it. Without a :class:`_ShardCodec`, zarr's array API grows the array and
        writes the shard in stage 1."""
        durable, writer, codec, arr = self.durable, self._writer, stack.codec, stack.arr
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # zarr's temp names (cleaned at open)
        grown, box = False, [None]
        try:
            if codec is None:
                grown = arr.shape[0] < hi
                if grown:
                    arr.resize((hi, *arr.shape[1:]))
                with zarr.config.set({"codec_pipeline.batch_size": hi - s0}):
                    arr[s0:hi] = data[: hi - s0]
            else:
                box[0] = codec.chunks(data[: hi - s0], writer.map)
        finally:
            stack.recycle(data)  # encoded: the chunks are copies
        yield
        if codec is not None:
            box[0] = codec.shard(box[0])
        if box[0] is not None:
            yield from files._atomic_steps(path, tmp, lambda t: t.write_bytes(box.pop()), durable)
            return
        yield
        if codec is not None:  # every map is NaN (the fill value): no shard file, as zarr does
            path.unlink(missing_ok=True)
        elif durable:
            files._fsync(path)
            files._fsync(path.parent, directory=True)
            if grown:
                self._meta_unsynced.add(self._array_dir(arr) / "zarr.json")

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
                                   "diverging": s.diverging,
                                   "item_id": item_id, "target": [g.target for g in group],
                                   "label": [g.label for g in group]}),
        )
        if self.durable:  # synced before the part holding its rows
            node = self.out / ZARR_NAME / "items" / item_key(item_id) / method
            self._unsynced.update([node.parent, *node.rglob("*")])

    # -- rows
    @staticmethod
    def _meta(extra: dict[str, Any] | None) -> dict[str, Any]:
        extra = extra or {}
        box = extra.get("box")
        return {"true_label": None if extra.get("true_label") is None else str(extra["true_label"]),
                "mask": None if extra.get("mask") is None else str(extra["mask"]),
                "box": None if box is None else [float(v) for v in box]}

    def add(self, item_id: str, source: str, results: list[Saliency], position: int | None = None,
            extra: dict[str, Any] | None = None, per_item: bool = False) -> None:
        """Store the maps of one item (one Saliency per target, any methods) and their ok rows;
        ``per_item``: always in ``items/<key>/<method>``, never the stacked array (whole mode)."""
        self._writer.check()
        pos = self._position(position)
        meta = self._meta(extra)
        groups: dict[str, list[Saliency]] = {}
        for s in results:
            groups.setdefault(s.method, []).append(s)
        for method, group in groups.items():
            maps = (np.asarray(group[0].map, dtype=np.float32)[None] if len(group) == 1
                    else np.stack([np.asarray(s.map, dtype=np.float32) for s in group]))
            stack = None if per_item else self._stacks.get(method) or self._create_stack(method, group[0], maps)
            stacked = stack is not None and stack.fits(maps)
            if not stacked:
                self._write_odd(item_id, method, group, maps)
            rows = [{
                "item_id": item_id, "index": pos if stacked else -1, "source": source, "method": method,
                "target": s.target, "label": s.label, "base_score": s.base_score, "n_forward": s.n_forward,
                "seconds": s.seconds, **{c: s.metrics.get(c) for c in metric_columns()},
                "status": "ok", "error": "", "position": pos, "rank": j, **meta,
                NOTE_COLUMN: s.metrics.get(NOTE_COLUMN),
            } for j, s in enumerate(group)]
            if stacked:
                buf = self._buffer(stack, pos // stack.shard)
                buf.data[pos % stack.shard] = maps if stack.k > 1 else maps[0]
                buf.rows.extend(rows)
                buf.dirty = True
            else:
                self._rows.extend(rows)
            self._resolve(method, pos)

    def mosaic(self, item_id: str, method: str, shape: tuple[int, int], **opts: Any) -> Any:
        """A :class:`~salient.store.mosaic.MosaicWriter` for ``items/<key>/<method>`` (this store's
        compressor; ``opts``: attrs, fingerprint, resume, ...). Its row: :meth:`add_mosaic`."""
        from .mosaic import MosaicWriter

        return MosaicWriter(self.root, f"items/{item_key(item_id)}/{method}", shape, compressor=self.compressors,
                            **opts)

    def frames(self, item_id: str, method: str, shape: tuple[int, int, int], **opts: Any) -> Any:
        """A :class:`~salient.store.frames.FramesWriter` for a video's map along t, ``items/<key>/<method>``
        (this store's compressor; ``opts``: attrs, fingerprint, chunk, resume). Its row: :meth:`add_mosaic`."""
        from .frames import FramesWriter

        return FramesWriter(self.root, f"items/{item_key(item_id)}/{method}", shape, compressor=self.compressors,
                            **opts)

    def add_mosaic(self, item_id: str, source: str, s: Saliency, position: int | None = None,
                   extra: dict[str, Any] | None = None, tiles: dict[str, int] | None = None) -> None:
        """The ok row (``index`` -1) of a finished mosaic written through :meth:`mosaic`: ``s`` gives
        method, target, label, scores and counts (its map is not used); ``tiles``: the tiles,
        skipped_tiles and failed_tiles columns (a video's map along t: clips and failed_clips)."""
        self._writer.check()
        pos = self._position(position)
        if self.durable:  # synced before the part holding its row
            node = self.out / ZARR_NAME / "items" / item_key(item_id) / s.method
            self._unsynced.update([node, *node.rglob("*")])
        self._rows.append({
            "item_id": item_id, "index": -1, "source": source, "method": s.method, "target": s.target,
            "label": s.label, "base_score": s.base_score, "n_forward": s.n_forward, "seconds": s.seconds,
            **{c: s.metrics.get(c) for c in metric_columns()}, "status": "ok", "error": "", "position": pos,
            "rank": 0, **self._meta(extra), **(tiles or {})})
        self._resolve(s.method, pos)

    def add_error(self, item_id: str, source: str, method: str, error: str, position: int | None = None,
                  extra: dict[str, Any] | None = None, n_forward: int = 0, seconds: float = 0.0) -> None:
        """One ``error`` row for (item, method) with a one-line reason; its map rows stay NaN."""
        self._writer.check()
        pos = self._position(position)
        reason = " ".join(str(error).split()) or "error"
        self._rows.append({"item_id": item_id, "index": -1, "source": source, "method": method, "target": None,
                           "label": None, "base_score": None, "n_forward": n_forward, "seconds": seconds,
                           **dict.fromkeys(metric_columns()), "status": "error", "error": reason,
                           "position": pos, "rank": None, **self._meta(extra)})
        stack = self._stacks.get(method)
        if stack is not None and pos // stack.shard in stack.buffers:
            buf = stack.buffers[pos // stack.shard]
            buf.data[pos % stack.shard] = np.nan
            buf.dirty = True
        self._resolve(method, pos)

    def skip(self, position: int, method: str) -> None:
        """An item an earlier run completed: nothing to write, but its shard may now be complete."""
        self._writer.check()
        self._resolve(method, int(position))

    # -- table
    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
            self._checkpoint()
        elif len(self._rows) >= self.flush_rows:
            self._write_part()

    def _write_part(self) -> None:
        """Submit the released rows as one part; the writer writes it after every shard submitted
        before it, first syncing what this thread wrote (resized array metadata, odd-size maps)."""
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=result_schema())
        self._seq += 1
        path = self.out / "results" / f"part-r{self.run:04d}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        synced, durable, meta = sorted(self._unsynced), self.durable, self._meta_unsynced
        self._unsynced = set()
        lengths = [(s.arr, s.length) for s in self._stacks.values()]
        root_attrs = dict(self.root.attrs)

        def commit() -> None:
            for arr, n in lengths:  # rows of this part may sit past the arrays' ends
                if arr.shape[0] < n:
                    arr.resize((n, *arr.shape[1:]))
                    meta.add(self._array_dir(arr) / "zarr.json")
            synced.extend(sorted(meta) if durable else ())
            meta.clear()
            for q in synced:
                files._fsync(q, directory=q.is_dir())
            for d in dict.fromkeys(q.parent for q in synced):
                files._fsync(d, directory=True)
            backup = metadata_backup(root_attrs, [arr for arr, _ in lengths])  # what repair rebuilds from
            _write_table_atomic(table.replace_schema_metadata(backup), path, durable)

        def steps() -> Iterator[None]:
            yield
            yield
            commit()  # in the last stage: after every shard submitted before

        self._writer.submit(steps())
        self._rows = []
        self._wrote_rows = True

    def _checkpoint(self) -> None:
        """Submit every shard that has new maps (whole), then every released row."""
        for stack in self._stacks.values():
            for shard, buf in stack.buffers.items():
                if buf.dirty or buf.rows:
                    self._write_shard(stack, shard, buf, live=True)
        self._write_part()
        self._last_checkpoint = time.monotonic()

    def _drain(self) -> None:
        """Wait for the writer; then every array has the length of the shards written into it."""
        self._writer.join()
        self._writer.check()
        for stack in self._stacks.values():
            if stack.arr.shape[0] < stack.length:
                stack.arr.resize((stack.length, *stack.item_shape))

    def flush(self) -> None:
        """Checkpoint: write every shard that has new maps (whole), then every released row; return
        once they are on disk."""
        self._checkpoint()
        self._drain()

    def close(self) -> None:
        """Write everything buffered, give every map array the same length, drop superseded rows,
        consolidate metadata, release the lock. Raises if a write failed."""
        if self.closed:
            return
        try:
            self.flush()
            for stack in self._stacks.values():
                stack.buffers.clear()
                if stack.arr.shape[0] < self._hi:
                    stack.arr.resize((self._hi, *stack.item_shape))
                    stack.length = self._hi
            if self._parts_at_open and self._wrote_rows:
                compact_results(self.out, self.durable)
            consolidate(self.out / ZARR_NAME)
        finally:
            self.closed = True
            self._writer.close()
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def consolidate(zdir: Path) -> None:
    """Consolidate the metadata of the Zarr store ``zdir`` into its root ``zarr.json``."""
    with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec (yet)"
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(zdir)


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
        table = _read_part(path, None)
        mask = keep[ranks == rank]
        dropped += int((~mask).sum())
        if mask.any():
            run_seq = "-".join(path.stem.split("-")[1:3])
            _write_table_atomic(table.filter(pa.array(mask)),
                                path.parent / f"part-{run_seq}-{uuid.uuid4().hex[:8]}.parquet", durable)
        path.unlink()
    return dropped

