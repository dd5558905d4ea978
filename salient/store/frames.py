"""A long video's map along t: one (N, H, W) float32 array written chunk of frames by chunk of frames,
with bounded memory, resumable.

Layout: the array ``items/<key>/<method>`` of shape (1, N, H, W) (one target), ``dimension_names``
("target", "t", "y", "x") like every per-item array of odd size (so readers, the check and the report
treat it as one), chunks (1, ``chunk``, H, W) (32 frames), NaN fill, every chunk stored
(``write_empty_chunks``: an absent chunk file means lost), the store's compressor + CRC32C (a damaged
chunk fails loudly when read). Band b covers frames [b·chunk, (b+1)·chunk).

Resume: after every band the array attrs record ``salient_frames`` = {"bands": finished bands,
"complete": bool, "fingerprint": the caller's resume key}. Reopening with the same shape, chunk and
fingerprint verifies those bands (chunk file present, decodes, CRC32C) and keeps the longest verified
prefix; anything else is replaced. :func:`verify_frames` checks a finished array band by band (never
the whole video in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from ..errors import SalientError
from .mosaic import stored_intact
from .shards import _compressors

CHUNK = 32
PROGRESS = "salient_frames"
DIMS = ("target", "t", "y", "x")


class FramesWriter:
    """Write a (N, H, W) float32 map along t into ``items/...`` under ``root``, band by band (module
    docstring): ``while w.done < w.n_bands: w.write_band(frames)`` with ``frames`` the (t1 - t0, H, W)
    (or (t1 - t0, H·W)) float32 frames ``w.band_rows(w.done)``; ``w.close()`` checks every band is written."""

    def __init__(self, root: zarr.Group, path: str, shape: Sequence[int], *, attrs: dict[str, Any] | None = None,
                 fingerprint: str = "", chunk: int = CHUNK, compressor: tuple | None = None, resume: bool = True):
        if len(shape) != 3 or min(int(s) for s in shape) < 1 or chunk < 1:
            raise SalientError(f"a map along t is (frames, H, W) with sides >= 1 and chunk >= 1, got {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        self.path, self.chunk, self.fingerprint = path.strip("/"), int(chunk), fingerprint
        self.n_bands = -(-self.shape[0] // self.chunk)
        self.done = 0
        existing = _get(root, self.path) if resume else None
        if isinstance(existing, zarr.Array) and self._resumable(existing):
            self.array = existing
            n = min(int(existing.attrs[PROGRESS]["bands"]), self.n_bands)
            while self.done < n and band_ok(existing, self.done):
                self.done += 1
        else:
            self.array = root.create_array(
                self.path, shape=(1, *self.shape), dtype="float32", chunks=(1, self.chunk, *self.shape[1:]),
                dimension_names=DIMS, fill_value=np.nan, overwrite=True,
                compressors=_compressors("lz4") if compressor is None else compressor,
                attributes=attrs or {}, config={"write_empty_chunks": True})
        self._mark()

    def _resumable(self, arr: zarr.Array) -> bool:
        prog = arr.attrs.get(PROGRESS)
        return (isinstance(prog, dict) and prog.get("fingerprint") == self.fingerprint
                and tuple(arr.shape) == (1, *self.shape) and tuple(arr.chunks) == (1, self.chunk, *self.shape[1:]))

    @property
    def complete(self) -> bool:
        return self.done >= self.n_bands

    def band_rows(self, band: int) -> tuple[int, int]:
        """Frames [t0, t1) that band ``band`` covers."""
        return band * self.chunk, min((band + 1) * self.chunk, self.shape[0])

    def write_band(self, frames: np.ndarray) -> None:
        """Write the next band and record the progress."""
        if self.complete:
            raise SalientError(f"map {self.path}: all {self.n_bands} bands are written")
        t0, t1 = self.band_rows(self.done)
        frames = np.asarray(frames, dtype=np.float32)
        if frames.size != (t1 - t0) * self.shape[1] * self.shape[2] or len(frames) != t1 - t0:
            raise SalientError(f"map {self.path}: band {self.done} must be {(t1 - t0, *self.shape[1:])}, "
                               f"got {frames.shape}")
        # a leftover (damaged) chunk is never read back: written whole
        sync(self.array.store.delete(_chunk_key(self.array, self.done)))
        self.array[0, t0:t1] = frames.reshape(t1 - t0, *self.shape[1:])
        self.done += 1
        self._mark()

    def _mark(self) -> None:
        self.array.attrs[PROGRESS] = {"bands": self.done, "complete": self.complete, "fingerprint": self.fingerprint}

    def close(self) -> None:
        if not self.complete:
            raise SalientError(f"map {self.path}: {self.done} of {self.n_bands} bands written")


def _get(root: zarr.Group, path: str) -> Any:
    try:
        return root.get(path)
    except Exception:  # noqa: BLE001 - damaged metadata: treated as absent
        return None


def band_ok(arr: zarr.Array, band: int) -> bool:
    """Band ``band`` of a frames array: its chunk file there, decoding and passing its CRC32C."""
    chunk = int(arr.chunks[1])
    return stored_intact(arr, [_chunk_key(arr, band)], np.s_[0, band * chunk : (band + 1) * chunk])


def _chunk_key(arr: zarr.Array, band: int) -> str:
    return f"{arr.path}/" + arr.metadata.encode_chunk_key((0, band, 0, 0))


def is_frames(node: Any) -> bool:
    """Whether ``node`` is a map along t this module wrote."""
    return isinstance(node, zarr.Array) and PROGRESS in node.attrs


def verify_frames(node: Any) -> bool:
    """Whether ``node`` is complete with every band intact (reads one band at a time)."""
    if not is_frames(node) or not node.attrs[PROGRESS].get("complete"):
        return False
    n = -(-int(node.shape[1]) // int(node.chunks[1]))
    return all(band_ok(node, b) for b in range(n))
