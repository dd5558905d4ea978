"""OME-Zarr 0.5 multiscale mosaics: one huge 2-D map (a slide's saliency) written band by band with
bounded memory, its lower resolutions built as the bands arrive, and read back level by level.

Layout of the group ``items/<key>/<method>`` (Zarr v3), as :class:`MosaicWriter` writes it:

- group attrs ``ome = {"version": "0.5", "multiscales": [{"name", "axes": [{"name": "y", "type":
  "space"}, {"name": "x", "type": "space"}], "datasets": [{"path": "0", "coordinateTransformations":
  [{"type": "scale", "scale": [1.0, 1.0]}]}, {"path": "1", ... [2.0, 2.0]}, ...]}]}``, the caller's
  attrs (method, parameters, target, label, seed, signed, ...), and ``salient_mosaic`` = {"bands":
  finished bands per level, "complete": bool, "fingerprint": the caller's resume key};
- arrays ``"0"``, ``"1"``, ...: float32, level l of shape ceil(H / 2^l) x ceil(W / 2^l), from full
  resolution down by 2 until the longer side is < 1024 (:func:`level_shapes`), ``dimension_names``
  ("y", "x"), chunks ``chunk`` x ``chunk`` (512), shards of one chunk row and up to ``shard_chunks``
  chunks (so a band of chunk rows is a row of whole shards: one writer per shard, never a partial
  shard write), NaN fill (missing), every chunk stored (``write_empty_chunks``: an absent shard
  file means lost), lz4 + CRC32C (a damaged shard fails loudly when read). Each array carries the
  caller's attrs too.

Level l+1 is the 2 x 2 mean of level l over its non-NaN pixels (:func:`halve`; NaN where all four
are NaN). Band b of a level covers rows [b·chunk, (b+1)·chunk); a level-l band of ``chunk`` rows
(chunk even) gives exactly chunk/2 rows of level l+1, so each level keeps at most one band of
pending rows: memory is about two bands of level 0.

Resume: after every level-0 band (and the lower-level bands it completes), the group attrs record
the finished band count of every level (one atomic write of the group's ``zarr.json``). Reopening
with the same shape and fingerprint verifies those bands (every shard file present, every chunk
passes its CRC32C) and keeps the longest verified prefix; the pending rows of the lower levels are
rebuilt from the finished bands on disk, so a resumed mosaic equals an undisturbed one bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from ..errors import SalientError
from .shards import _compressors

CHUNK = 512
MIN_SIDE = 1024
SHARD_CHUNKS = 16
PROGRESS = "salient_mosaic"


def level_shapes(shape: Sequence[int], min_side: int = MIN_SIDE) -> list[tuple[int, int]]:
    """Level shapes: (H, W), then ceil-halved, until the longer side is < ``min_side``."""
    h, w = int(shape[0]), int(shape[1])
    out = [(h, w)]
    while max(h, w) >= min_side:
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def halve(a: np.ndarray) -> np.ndarray:
    """The 2 x 2 mean of ``a`` (h, w) over its non-NaN pixels, shape (ceil(h/2), ceil(w/2)); NaN where
    all are NaN (an odd last row or column averages what it has)."""
    h, w = a.shape
    a = np.asarray(a, np.float32)
    if h % 2 == 0 and w % 2 == 0 and not np.isnan(a).any():  # the common case: the same sums, no masks
        return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / np.float32(4)
    pad = np.full((h + h % 2, w + w % 2), np.nan, np.float32)
    pad[:h, :w] = a
    good = ~np.isnan(pad)
    z = np.where(good, pad, np.float32(0))
    total = z[0::2, 0::2] + z[1::2, 0::2] + z[0::2, 1::2] + z[1::2, 1::2]  # four strided views, a fixed order
    count = (good[0::2, 0::2].astype(np.float32) + good[1::2, 0::2] + good[0::2, 1::2] + good[1::2, 1::2])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.float32(np.nan)).astype(np.float32, copy=False)


def ome_multiscales(name: str, n_levels: int) -> dict[str, Any]:
    """The ``ome`` group attribute of an OME-Zarr 0.5 multiscale image with axes y, x."""
    return {"version": "0.5", "multiscales": [{
        "name": name,
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [2.0**i, 2.0**i]}]}
                     for i in range(n_levels)],
    }]}


class MosaicWriter:
    """Write a (H, W) float32 map into the OME-Zarr multiscale group ``path`` under ``group``,
    level-0 band by band (see the module docstring).

    ``w = MosaicWriter(group, "items/k/rise", (H, W), attrs={...}, fingerprint="...")``; then
    ``while w.done < w.n_bands: w.write_band(rows)`` with ``rows`` the float32 (h, W) rows
    ``w.band_rows(w.done)`` of level 0; ``w.close()`` checks every band is written. With
    ``resume=True`` (default) an existing group of the same shape, chunk and ``fingerprint`` is kept
    and ``w.done`` starts after its verified finished bands; anything else there is replaced.
    ``compressor``: lz4 (default), zstd or none (always + CRC32C), or a tuple of zarr codecs.
    """

    def __init__(self, group: zarr.Group, path: str, shape: Sequence[int], *, attrs: dict[str, Any] | None = None,
                 fingerprint: str = "", name: str | None = None, chunk: int = CHUNK, shard_chunks: int = SHARD_CHUNKS,
                 compressor: str | tuple = "lz4", resume: bool = True):
        if chunk < 2 or chunk % 2 or shard_chunks < 1:
            raise SalientError(f"mosaic chunk must be even and >= 2, shard_chunks >= 1 (got {chunk}, {shard_chunks})")
        if len(shape) != 2 or min(int(s) for s in shape) < 1:
            raise SalientError(f"a mosaic is 2-D with sides >= 1, got shape {tuple(shape)}")
        self.root, self.path, self.chunk = group, path.strip("/"), chunk
        self.shapes = level_shapes(shape)
        self.n_bands_per_level = [-(-h // chunk) for h, _ in self.shapes]
        self.fingerprint = fingerprint
        self._pending: list[list[np.ndarray]] = [[] for _ in self.shapes]  # rows waiting per level (l >= 1)
        self.bands = [0] * len(self.shapes)
        existing = _get(group, self.path) if resume else None
        if existing is not None and self._resumable(existing):
            self.group = existing
            self.levels = [existing[str(i)] for i in range(len(self.shapes))]
            self._resume(list(existing.attrs[PROGRESS]["bands"]))
        else:
            self._create(attrs or {}, name or self.path.rsplit("/", 1)[-1], shard_chunks, compressor)

    # -- setup
    def _resumable(self, node: Any) -> bool:
        prog = node.attrs.get(PROGRESS) if isinstance(node, zarr.Group) else None
        if not isinstance(prog, dict) or prog.get("fingerprint") != self.fingerprint:
            return False
        try:
            arrs = [node[str(i)] for i in range(len(self.shapes))]
        except Exception:  # noqa: BLE001 - a level missing or unreadable: start over
            return False
        return (len(prog.get("bands", [])) == len(self.shapes)
                and all(isinstance(a, zarr.Array) and tuple(a.shape) == s and tuple(a.chunks) == (self.chunk,) * 2
                        for a, s in zip(arrs, self.shapes, strict=True)))

    def _create(self, attrs: dict[str, Any], name: str, shard_chunks: int, compressor: str) -> None:
        comp = _compressors(compressor) if isinstance(compressor, str) else tuple(compressor)
        meta = {**attrs, "ome": ome_multiscales(name, len(self.shapes)),
                PROGRESS: {"bands": self.bands, "complete": False, "fingerprint": self.fingerprint}}
        self.group = self.root.create_group(self.path, overwrite=True, attributes=meta)
        self.levels = []
        for i, (h, w) in enumerate(self.shapes):
            c = self.chunk
            self.levels.append(self.group.create_array(
                str(i), shape=(h, w), dtype="float32", chunks=(c, c), shards=(c, c * min(shard_chunks, -(-w // c))),
                dimension_names=("y", "x"), fill_value=np.nan, compressors=comp, attributes=attrs,
                config={"write_empty_chunks": True}))

    def _resume(self, recorded: list[int]) -> None:
        """Keep the longest verified prefix of each level's finished bands, consistent across levels
        (band j of level l needs bands 2j and 2j+1 of level l-1), then rebuild the pending rows."""
        done = []
        for lvl, n in enumerate(recorded):
            n = min(int(n), self.n_bands_per_level[lvl])
            if lvl:
                n = min(n, self._supported(lvl, done[-1]))
            good = 0
            while good < n and self._verify(lvl, good):
                good += 1
            done.append(good)
        self.bands = done
        for lvl in range(1, len(self.shapes)):
            for b in range(2 * done[lvl], done[lvl - 1]):  # finished below, not yet folded into this level
                y0, y1 = self._rows(lvl - 1, b)
                self._pending[lvl].append(halve(np.asarray(self.levels[lvl - 1][y0:y1])))
        self._mark(False)

    def _supported(self, lvl: int, below: int) -> int:
        """How many bands of level ``lvl`` the first ``below`` finished bands of level ``lvl - 1`` make."""
        if below >= self.n_bands_per_level[lvl - 1]:
            return self.n_bands_per_level[lvl]
        return below // 2

    def _verify(self, lvl: int, band: int) -> bool:
        return band_ok(self.levels[lvl], band)

    # -- writing
    @property
    def shape(self) -> tuple[int, int]:
        return self.shapes[0]

    @property
    def n_bands(self) -> int:
        """Bands of level 0."""
        return self.n_bands_per_level[0]

    @property
    def done(self) -> int:
        """Finished bands of level 0; the next :meth:`write_band` writes band ``done``."""
        return self.bands[0]

    @property
    def complete(self) -> bool:
        return all(b == n for b, n in zip(self.bands, self.n_bands_per_level, strict=True))

    def _rows(self, lvl: int, band: int) -> tuple[int, int]:
        return band * self.chunk, min((band + 1) * self.chunk, self.shapes[lvl][0])

    def band_rows(self, band: int) -> tuple[int, int]:
        """Rows [y0, y1) of level 0 that band ``band`` covers."""
        return self._rows(0, band)

    def write_band(self, rows: np.ndarray) -> None:
        """Write the next band of level 0 (float32 (y1 - y0, W)), and every lower-level band it
        completes; then record the progress."""
        if self.done >= self.n_bands:
            raise SalientError(f"mosaic {self.path}: all {self.n_bands} bands are written")
        y0, y1 = self.band_rows(self.done)
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape != (y1 - y0, self.shape[1]):
            raise SalientError(f"mosaic {self.path}: band {self.done} must be {(y1 - y0, self.shape[1])}, "
                               f"got {rows.shape}")
        self._put(0, rows)
        self._mark(self.complete)

    def _put(self, lvl: int, rows: np.ndarray) -> None:
        band = self.bands[lvl]
        y0, y1 = self._rows(lvl, band)
        arr = self.levels[lvl]
        for key in _shard_keys(arr, band):  # a leftover (damaged) shard is never read back: written whole
            sync(arr.store.delete(key))
        arr[y0:y1] = rows
        self.bands[lvl] += 1
        if lvl + 1 >= len(self.shapes):
            return
        nxt = lvl + 1
        self._pending[nxt].append(halve(rows))
        want = self._rows(nxt, self.bands[nxt])
        have = sum(len(p) for p in self._pending[nxt])
        if have >= want[1] - want[0]:
            block = np.concatenate(self._pending[nxt]) if len(self._pending[nxt]) > 1 else self._pending[nxt][0]
            self._pending[nxt] = []
            self._put(nxt, block)

    def _mark(self, complete: bool) -> None:
        self.group.attrs[PROGRESS] = {"bands": list(self.bands), "complete": complete,
                                      "fingerprint": self.fingerprint}

    def close(self) -> None:
        """Check that every band of every level is written (a SalientError if not)."""
        if not self.complete:
            raise SalientError(f"mosaic {self.path}: {self.done} of {self.n_bands} bands written")


# -- reading
def _get(group: zarr.Group, path: str) -> Any:
    try:
        return group.get(path)
    except Exception:  # noqa: BLE001 - damaged metadata: treated as absent
        return None


def _shard_keys(arr: zarr.Array, band: int) -> list[str]:
    """The store keys of the shards of band ``band`` of a level array."""
    return [f"{arr.path}/" + arr.metadata.encode_chunk_key((band, s)) for s in range(-(-arr.shape[1] // arr.shards[1]))]


def band_ok(arr: zarr.Array, band: int) -> bool:
    """Band ``band`` (one row of chunks) of a level array: every shard file there, and every chunk
    decodes and passes its CRC32C."""
    chunk = int(arr.chunks[0])
    return stored_intact(arr, _shard_keys(arr, band), np.s_[band * chunk : (band + 1) * chunk])


def stored_intact(arr: zarr.Array, keys: list[str], region: Any) -> bool:
    """Every store key of ``keys`` present, and ``arr[region]`` (the data they hold) decoding and passing
    its checksums: a band written whole and not damaged since."""
    if not all(sync(arr.store.exists(k)) for k in keys):
        return False
    try:
        np.asarray(arr[region])
    except Exception:  # noqa: BLE001 - checksum or decode failure
        return False
    return True


def verify_mosaic(node: Any) -> bool:
    """Whether ``node`` is a complete mosaic with every band of every level intact (reads it all,
    one band at a time)."""
    if not mosaic_complete(node):
        return False
    try:
        levels = mosaic_levels(node)
    except Exception:  # noqa: BLE001 - a level missing or unreadable
        return False
    return all(band_ok(a, b) for a in levels for b in range(-(-a.shape[0] // int(a.chunks[0]))))


def is_mosaic(node: Any) -> bool:
    """Whether ``node`` is an OME-Zarr multiscale group this module wrote."""
    return isinstance(node, zarr.Group) and isinstance(node.attrs.get("ome"), dict) and PROGRESS in node.attrs


def mosaic_levels(node: zarr.Group) -> list[zarr.Array]:
    """The level arrays of a multiscale group, full resolution first."""
    datasets = node.attrs["ome"]["multiscales"][0]["datasets"]
    return [node[d["path"]] for d in datasets]


def mosaic_complete(node: Any) -> bool:
    """Whether the mosaic's progress record says every band of every level is written."""
    return is_mosaic(node) and bool(node.attrs[PROGRESS].get("complete"))


def read_level(node: zarr.Group, level: int = 0, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Level ``level`` of a mosaic group as float32 (h, w); ``region`` = (y, x, h, w) in that
    level's pixels reads only the chunks it overlaps."""
    levels = mosaic_levels(node)
    if not 0 <= level < len(levels):
        raise SalientError(f"mosaic level {level} does not exist: levels 0 .. {len(levels) - 1}")
    arr = levels[level]
    if region is None:
        return np.asarray(arr[:])
    y, x, h, w = (int(v) for v in region)
    return np.asarray(arr[y : y + h, x : x + w])


def display_level(node: zarr.Group, size: int) -> int:
    """The finest level whose longer side is <= ``size`` (the coarsest if none is)."""
    levels = mosaic_levels(node)
    for i, a in enumerate(levels):
        if max(a.shape) <= size:
            return i
    return len(levels) - 1

