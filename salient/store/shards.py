"""How the maps of a shard become its bytes: the compressors, and whole shards encoded at once.

- Compression (:func:`_compressors`): Blosc lz4 with byte shuffle by default (``zstd``, or ``none``
  for the fastest writes), always followed by the CRC32C checksum, so a damaged shard fails loudly
  when read; benchmarks/store_write.py measures rate and ratio of each.
- A whole shard is encoded with the array's own codecs (its inner chunks through the sharding
  codec's codecs, then the sharding codec's own index and layout, see :class:`_ShardCodec`),
  byte-identical to ``arr[s0:s1] = data`` without zarr's per-chunk asyncio tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import SupportsSyncCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import SalientError
from .schema import COMPRESSORS


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
