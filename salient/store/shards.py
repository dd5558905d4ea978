"""How the maps of a shard become its bytes: the compressors, and whole shards encoded at once.

- Compression (:func:`_compressors`): Blosc lz4 with byte shuffle by default (``zstd``, or ``none``
  for the fastest writes), always followed by the CRC32C checksum, so a damaged shard fails loudly
  when read; benchmarks/store_write.py measures rate and ratio of each.
- A whole shard is encoded with the array's own codecs (its inner chunks through the sharding
  codec's codecs, then the sharding codec's own index and layout, see :class:`_ShardCodec`),
  byte-identical to ``arr[s0:s1] = data`` without zarr's per-chunk asyncio tasks.
- A whole shard file is read back the same way (:meth:`_ShardCodec.read`): one read of the file,
  its index checked (CRC32C), then each inner chunk checked or decoded. It says, item by item,
  whether the maps are there (:data:`FINE`), absent (:data:`MISSING`: no file, or no chunk) or
  unreadable (:data:`DAMAGED`: truncated, checksum mismatch), and never raises for a bad file, so
  a resume keeps every intact map of a shard that lost one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.abc.codec import SupportsSyncCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import MAX_UINT_64, ShardingCodecIndexLocation
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import SalientError
from .schema import COMPRESSORS

FINE, MISSING, DAMAGED = 0, 1, 2  # the state of an item's maps in its shard file (worst of its chunks)


def _compressors(kind: str) -> tuple:
    if kind not in COMPRESSORS:
        raise SalientError(f"store compressor {kind!r}: choose one of {', '.join(COMPRESSORS)}")
    head = {"lz4": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),), "zstd": (ZstdCodec(level=1),),
            "none": ()}[kind]
    return (*head, Crc32cCodec())


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
        self.specs = _specs(self.inner, ArraySpec(
            shape=self.chunk, dtype=arr.metadata.data_type, fill_value=arr.metadata.fill_value,
            config=ArrayConfig(order="C", write_empty_chunks=False), prototype=self.proto))
        self.index_codecs = tuple(sharding.index_codecs)
        self.index_specs = _specs(self.index_codecs, sharding._get_index_chunk_spec(self.per_shard))
        self.index_size = sharding._shard_index_size(self.per_shard)
        self.index_at_end = sharding.index_location == ShardingCodecIndexLocation.end
        self.crc_last = isinstance(self.inner[-1], Crc32cCodec)

    @classmethod
    def make(cls, arr: zarr.Array) -> _ShardCodec | None:
        codecs = arr.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or not arr.shards:
            return None
        sh = codecs[0]
        if (not all(isinstance(c, SupportsSyncCodec) for c in (*sh.codecs, *sh.index_codecs))
                or not hasattr(sh, "_encode_shard_dict")
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

    def _block(self, c: tuple[int, ...]) -> tuple[slice, ...]:
        """Where inner chunk ``c`` lies in a shard's rows."""
        return tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, self.chunk, strict=True))

    def chunks(self, rows: np.ndarray, map_fn: Callable[[Callable, list], list] = lambda f, xs: [f(x) for x in xs]
               ) -> dict[tuple[int, ...], Any]:
        """The encoded inner chunks of a shard whose first ``len(rows)`` items are ``rows`` (items
        past the array's end are not stored), by chunk coordinates within the shard."""
        coords = [c for c in np.ndindex(*self.per_shard) if c[0] < len(rows)]
        blocks = [rows[self._block(c)] for c in coords]
        return {c: b for c, b in zip(coords, map_fn(self._one, blocks), strict=True) if b is not None}

    def shard(self, chunks: dict[tuple[int, ...], Any]) -> Any:
        """The shard's bytes (buffer-like), or None when no chunk is stored (no shard file)."""
        out = sync(self.sh._encode_shard_dict(chunks, chunks_per_shard=self.per_shard, buffer_prototype=self.proto))
        return None if out is None else out.as_buffer_like()

    def _index(self, raw: np.ndarray) -> np.ndarray | None:
        """The shard index, (*per_shard, 2) offsets and lengths; None when it does not decode."""
        if len(raw) < self.index_size:
            return None
        cut = raw[len(raw) - self.index_size:] if self.index_at_end else raw[: self.index_size]
        try:
            return np.asarray(_decode(self.index_codecs, self.index_specs, self.proto.buffer.from_array_like(cut))
                              .as_numpy_array()).reshape(*self.per_shard, 2)
        except Exception:  # noqa: BLE001 - any failure (checksum, size) means a damaged index
            return None

    def read(self, raw: bytes | None, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """The state of each of the first ``n`` items of a shard from its file's bytes ``raw``
        (None: no file): FINE, MISSING (no file, a chunk absent) or DAMAGED (the index or a chunk
        fails its CRC32C, or lies outside the file). With ``out`` (the shard's rows), every good
        chunk is decoded into it and the rest of ``out`` is left as it is; without, a chunk whose
        last codec is CRC32C is only checksummed (that covers every stored byte, no decompression),
        any other is decoded. Never raises for a bad file."""
        state = np.full(n, MISSING if raw is None else FINE, np.uint8)
        if raw is None:
            return state
        raw = np.frombuffer(raw, np.uint8)  # slices are views (google_crc32c takes them, not memoryviews)
        index = self._index(raw)
        if index is None:
            state[:] = DAMAGED
            return state
        lo, hi = (0, len(raw) - self.index_size) if self.index_at_end else (self.index_size, len(raw))
        for c in np.ndindex(*self.per_shard):
            if c[0] >= n:
                continue
            start, length = (int(v) for v in index[c])
            if start == MAX_UINT_64:
                state[c[0]] = max(state[c[0]], MISSING)
            elif not (lo <= start and start + length <= hi and self._chunk(raw[start : start + length], c, out)):
                state[c[0]] = DAMAGED
        return state

    def _chunk(self, data: np.ndarray, c: tuple[int, ...], out: np.ndarray | None) -> bool:
        """Check (``out`` None) or decode into ``out`` one chunk's bytes; False if it is damaged."""
        try:
            if out is None and self.crc_last:
                return len(data) >= 4 and np.uint32(google_crc32c.value(data[:-4])).tobytes() == data[-4:].tobytes()
            block = _decode(self.inner, self.specs, self.proto.buffer.from_array_like(data)).as_numpy_array()
        except Exception:  # noqa: BLE001 - checksum, decompression, size: damaged
            return False
        if out is not None:
            out[self._block(c)] = block
        return True


def _specs(codecs: tuple, first: ArraySpec) -> list[ArraySpec]:
    """The spec each codec of a chain sees, from the chunk's."""
    specs = [first]
    for c in codecs[:-1]:
        specs.append(c.resolve_metadata(specs[-1]))
    return specs


def _decode(codecs: tuple, specs: list[ArraySpec], x: Any) -> Any:
    for c, spec in zip(codecs[::-1], specs[::-1], strict=True):
        x = c._decode_sync(x, spec)
    return x


def shard_file(zdir: Any, arr: zarr.Array, shard: int) -> Any:
    """The path of shard ``shard`` (along "item") of ``arr`` in the Zarr store at ``zdir``."""
    return zdir / arr.path / arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
