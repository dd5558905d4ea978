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
  an ``ok`` row always has its map. Shard files are written to a temp name, fsynced, then renamed
  (and the directory fsynced); Parquet parts likewise, so a crash never leaves a torn part.
Writes run off the caller's thread (see :class:`_Writer`), a pipeline of three stages (encode the
chunks on ``threads`` threads; lay out the shard and write its temp file; fsync and rename), each
first in, first out, so a table part is written only after every shard submitted before it. The
first error stops every later write and is raised by the next call on the store (and by
``close``). A whole shard is encoded with the array's own codecs (its inner chunks through the
sharding codec's codecs, then the sharding codec's own index and layout, see :class:`_ShardCodec`),
byte-identical to ``arr[s0:s1] = data`` without zarr's per-chunk asyncio tasks. An array grows
(its ``zarr.json``, synced too) with the part holding rows past its end.
Compression: Blosc lz4 with byte shuffle by default (``zstd``, or ``none`` for the fastest writes),
always followed by the CRC32C checksum; benchmarks/store_write.py measures rate and ratio of each.
Memory: one buffer of ``shard_items`` maps per method per shard that has a live item (usually one
or two), plus ``flush_rows`` table rows, plus at most a few shards queued for writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.abc.codec import SupportsSyncCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

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


def _makedirs(d: Path) -> list[Path]:
    """``mkdir -p d``; returns the directories it created, outermost first."""
    new = []
    while not d.is_dir():
        new.append(d)
        d = d.parent
    for n in reversed(new):
        n.mkdir(exist_ok=True)
    return new[::-1]


def _atomic_steps(path: Path, tmp: Path, write: Callable[[Path], Any], durable: bool) -> Iterator[None]:
    """``write(tmp)``; yield; fsync it, rename it to ``path``, fsync the directory (and the parents
    of any directory it created): a crash leaves the old file or the new one, never part of one.
    Abandoned at the yield (closed), it removes the temp file."""
    new = _makedirs(path.parent)
    try:
        write(tmp)
        yield
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        for d in dict.fromkeys([path.parent, *(n.parent for n in new)]):
            _fsync(d, directory=True)


def _write_atomic(path: Path, tmp: Path, write: Callable[[Path], Any], durable: bool) -> None:
    for _ in _atomic_steps(path, tmp, write, durable):
        pass


class _ShardCodec:
    """Whole shards of ``arr`` encoded by the array's own codecs, in two steps: :meth:`chunks`
    encodes each inner chunk through the sharding codec's inner codecs (zarr's synchronous codec
    protocol, ``SupportsSyncCodec``; on as many threads as ``map`` uses), :meth:`shard` lays them
    out with the sharding codec's own index (``_encode_shard_dict``). Chunks equal to the fill
    value (all NaN) are left out, so the bytes equal what ``arr[s0:s1] = rows`` writes, without
    zarr's per-chunk asyncio tasks (3x the cost of encoding them). :meth:`make` returns None when
    the array's codecs or layout don't allow this (then zarr's array API writes)."""

    def __init__(self, arr: zarr.Array, sharding: ShardingCodec):
        self.sh, self.inner, self.chunk = sharding, tuple(sharding.codecs), tuple(sharding.chunk_shape)
        self.per_shard = tuple(s // c for s, c in zip(arr.shards, self.chunk, strict=True))
        self.proto = default_buffer_prototype()
        self.specs = [ArraySpec(shape=self.chunk, dtype=arr.metadata.data_type, fill_value=arr.metadata.fill_value,
                                config=ArrayConfig(order="C", write_empty_chunks=False), prototype=self.proto)]
        for c in self.inner[:-1]:
            self.specs.append(c.resolve_metadata(self.specs[-1]))

    @classmethod
    def make(cls, arr: zarr.Array) -> _ShardCodec | None:
        codecs = arr.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or not arr.shards:
            return None
        sh = codecs[0]
        if (not all(isinstance(c, SupportsSyncCodec) for c in sh.codecs) or not hasattr(sh, "_encode_shard_dict")
                or tuple(arr.shards[1:]) != tuple(arr.shape[1:]) or sh.chunk_shape[0] != 1
                or not np.isnan(float(arr.metadata.fill_value))):
            return None
        return cls(arr, sh)

    def _one(self, block: np.ndarray) -> Any:
        if np.isnan(block.flat[0]) and np.isnan(block).all():
            return None
        x = self.proto.nd_buffer.from_numpy_array(block)
        for c, spec in zip(self.inner, self.specs, strict=True):
            x = c._encode_sync(x, spec)
        return x

    def chunks(self, rows: np.ndarray, map_fn: Callable[[Callable, list], list] = lambda f, xs: [f(x) for x in xs]
               ) -> dict[tuple[int, ...], Any]:
        """The encoded inner chunks of a shard whose first ``len(rows)`` items are ``rows`` (items
        past the array's end are not stored), by chunk coordinates within the shard."""
        coords = [c for c in np.ndindex(*self.per_shard) if c[0] < len(rows)]
        blocks = [rows[tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, self.chunk, strict=True))] for c in coords]
        return {c: b for c, b in zip(coords, map_fn(self._one, blocks), strict=True) if b is not None}

    def shard(self, chunks: dict[tuple[int, ...], Any]) -> Any:
        """The shard's bytes (buffer-like), or None when no chunk is stored (no shard file)."""
        out = sync(self.sh._encode_shard_dict(chunks, chunks_per_shard=self.per_shard, buffer_prototype=self.proto))
        return None if out is None else out.as_buffer_like()


class _Writer:
    """Store writes off the caller's thread, in submission order, in three stages: encode, write
    the file, make it durable and visible (fsync, rename) -- so encoding, writing and the wait for
    the disk of consecutive shards overlap. A job is a generator: ``submit(job)``; stage ``i`` runs
    it to its ``i``-th ``yield`` (or its end) and passes it on. Each stage is first in, first out,
    so a job's last step runs after the last step of every job submitted before it that had one
    at that stage or before: a table part, whose last step is at the last stage, is written after
    every shard submitted before it. :meth:`map` spreads encoding over ``threads`` threads. The
    first error skips every later step (no row is written after a failed shard; abandoned jobs
    remove their temp files) and is raised by :meth:`check`, which the store calls on each
    operation. ``depth`` bounds each stage's queue (memory: a caller ahead of the disk waits).
    ``threads=0``: jobs run on the caller, errors raise at once."""

    STAGES = 3

    def __init__(self, threads: int, depth: int = 2):
        self.threads = max(0, int(threads))
        self.error: BaseException | None = None
        self._pool = ThreadPoolExecutor(self.threads - 1, "salient-store") if self.threads > 1 else None
        self._queues: list[queue.Queue] = [queue.Queue(depth) for _ in range(self.STAGES if self.threads else 0)]
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"salient-store-{i}", daemon=True)
                         for i in range(len(self._queues))]
        for t in self._threads:
            t.start()

    def map(self, fn: Callable[[Any], Any], items: list) -> list:
        """``[fn(x) for x in items]``, in ``threads`` contiguous parts on this thread and the pool's."""
        if self._pool is None or len(items) < 2:
            return [fn(x) for x in items]
        cuts = np.linspace(0, len(items), min(self.threads, len(items)) + 1).astype(int)
        parts = [items[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        futures = [self._pool.submit(lambda part=part: [fn(x) for x in part]) for part in parts[1:]]
        return [fn(x) for x in parts[0]] + [y for f in futures for y in f.result()]

    def submit(self, job: Iterator[None]) -> None:
        self.check()
        if self._queues:
            self._queues[0].put(job)
            return
        try:
            for _ in job:
                pass
        except BaseException as exc:
            self.error = exc
            if not isinstance(exc, Exception):
                raise
            self.check()

    def _run(self, stage: int) -> None:
        q, last = self._queues[stage], stage == len(self._queues) - 1
        while True:
            job = q.get()
            try:
                if job is None:
                    if not last:
                        self._queues[stage + 1].put(None)
                    return
                if self.error is None:
                    if last:  # this step and any left
                        for _ in job:
                            pass
                    elif next(job, StopIteration) is not StopIteration:
                        self._queues[stage + 1].put(job)
            except BaseException as exc:  # noqa: BLE001 - raised on the caller by check()
                self.error = self.error or exc
            finally:
                job = None  # an abandoned job is closed here (its temp file removed)
                q.task_done()

    def join(self) -> None:
        """Wait until everything submitted so far is written (or skipped after an error)."""
        for q in self._queues:
            q.join()

    def check(self) -> None:
        if self.error is not None:
            raise SalientError(f"store: a write failed ({type(self.error).__name__}: {self.error}); "
                               "nothing after it was written, resume redoes it") from self.error

    def close(self) -> None:
        """Finish what was submitted, stop the threads."""
        if self._queues:
            self._queues[0].put(None)
            for t in self._threads:
                t.join()
            self._queues, self._threads = [], []
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


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
    """

    def __init__(self, out: str | os.PathLike, model_id: str = "", spec: dict | None = None, flush_rows: int = 256,
                 *, shard_items: int = SHARD_ITEMS, checkpoint_seconds: float = 60.0, compressor: str = "lz4",
                 durable: bool = True, attrs: dict[str, Any] | None = None, threads: int = 2):
        if shard_items < 1 or flush_rows < 1:
            raise SalientError("store: shard_items and flush_rows must be >= 1")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results").mkdir(exist_ok=True)
        self._lock = _Lock(self.out / ".lock")
        try:
            self._open(model_id, spec, flush_rows, shard_items, checkpoint_seconds, compressor, durable, attrs or {})
            self._writer = _Writer(threads)
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
                data[: min(stack.length, s0 + stack.shard) - s0] = stack.arr[s0 : s0 + stack.shard]
            buf = stack.buffers[shard] = _Buffer(data)
        return buf

    def _array_dir(self, arr: zarr.Array) -> Path:
        return self.out / ZARR_NAME / arr.path

    def _write_shard(self, stack: _Stack, shard: int, buf: _Buffer, live: bool = False) -> None:
        """Submit one whole shard (rows up to the last position known), then release its rows: the
        part holding them is submitted later, so it is written after the shard. ``live``: the
        buffer stays in use (a checkpoint), so the writer gets a copy."""
        s0 = shard * stack.shard
        hi = min(s0 + stack.shard, max(self._hi, stack.length))
        stack.length = max(stack.length, hi)
        key = stack.arr.metadata.encode_chunk_key((shard,) + (0,) * (stack.arr.ndim - 1))
        data = buf.data.copy() if live else buf.data
        self._writer.submit(self._shard_job(stack, s0, hi, data, self._array_dir(stack.arr) / key))
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
            yield from _atomic_steps(path, tmp, lambda t: t.write_bytes(box.pop()), durable)
            return
        yield
        if codec is not None:  # every map is NaN (the fill value): no shard file, as zarr does
            path.unlink(missing_ok=True)
        elif durable:
            _fsync(path)
            _fsync(path.parent, directory=True)
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
            extra: dict[str, Any] | None = None) -> None:
        """Store the maps of one item (one Saliency per target, any methods) and their ok rows."""
        self._writer.check()
        pos = self._position(position)
        meta = self._meta(extra)
        groups: dict[str, list[Saliency]] = {}
        for s in results:
            groups.setdefault(s.method, []).append(s)
        for method, group in groups.items():
            maps = (np.asarray(group[0].map, dtype=np.float32)[None] if len(group) == 1
                    else np.stack([np.asarray(s.map, dtype=np.float32) for s in group]))
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
        self._writer.check()
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
        self._writer.check()
        self._resolve(method, int(position))

    # -- checks for a resume
    def verify(self, method: str, shards: Iterable[int]) -> list[int]:
        """Read the given shards of ``maps/<method>``; delete and return those that fail (checksum,
        truncation). Their items must be redone."""
        stack = self._stacks.get(method)
        if stack is None:
            return []
        self._drain()
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
            self._checkpoint()
        elif len(self._rows) >= self.flush_rows:
            self._write_part()

    def _write_part(self) -> None:
        """Submit the released rows as one part; the writer writes it after every shard submitted
        before it, first syncing what this thread wrote (resized array metadata, odd-size maps)."""
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=RESULT_SCHEMA)
        self._seq += 1
        path = self.out / "results" / f"part-r{self.run:04d}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        synced, durable, meta = sorted(self._unsynced), self.durable, self._meta_unsynced
        self._unsynced = set()
        lengths = [(s.arr, s.length) for s in self._stacks.values()]

        def commit() -> None:
            for arr, n in lengths:  # rows of this part may sit past the arrays' ends
                if arr.shape[0] < n:
                    arr.resize((n, *arr.shape[1:]))
                    meta.add(self._array_dir(arr) / "zarr.json")
            synced.extend(sorted(meta) if durable else ())
            meta.clear()
            for q in synced:
                _fsync(q, directory=q.is_dir())
            for d in dict.fromkeys(q.parent for q in synced):
                _fsync(d, directory=True)
            _write_table_atomic(table, path, durable)

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
            with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec (yet)"
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(self.out / ZARR_NAME)
        finally:
            self.closed = True
            self._writer.close()
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _write_table_atomic(table: pa.Table, path: Path, durable: bool = True) -> None:
    _write_atomic(path, path.parent / f".{path.stem}.tmp", lambda tmp: pq.write_table(table, tmp), durable)


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
