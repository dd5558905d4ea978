"""Lazy readers of huge images: a :class:`Slide` knows its pyramid levels' shapes and reads a region
of one level, touching only the tiles (chunks, strips) that region overlaps; nothing ever holds the
whole image.

Formats (:func:`open_slide`):
- TIFF / OME-TIFF through ``tifffile``: tiled or pyramidal files (levels = the series' levels, SubIFDs
  or OME pyramids) read through ``aszarr`` (zarr decodes only the tiles a region overlaps); strip
  TIFFs read by strips the same way, as long as one strip is at most :data:`STRIP_BYTES`; an
  uncompressed contiguous TIFF is memory-mapped. A strip bigger than that is refused with the
  one-line command that converts the file to a tiled TIFF.
- Zarr / OME-Zarr: an array (H, W[, C]) or (C, H, W), or a multiscale group (``ome.multiscales`` of
  OME-Zarr 0.5 or ``multiscales`` of 0.4: levels = its datasets; axes named y, x, and c if any).
- Vendor formats (.svs, .ndpi, .mrxs, .scn, .vms, .bif) through ``openslide-python`` + ``openslide-bin``
  (the optional extra ``salient[slides]``); regions are composited over white.
- Plain PNG / JPEG / BMP / WebP up to :data:`PLAIN_PIXELS` (kept as decoded, 8-bit: 3 bytes a pixel);
  above it, a one-line error saying how to convert to a tiled TIFF.

Pixels come back as float32 (h, w, 3) in [0, 1] by the rules of :mod:`salient.images` (integers
scaled by their type's maximum, grey replicated, alpha composited over white).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ItemError, SalientError
from ..images import _to_canonical

PLAIN_PIXELS = 8192 * 8192  # plain images above this are refused (67 MP, 201 MB as 8-bit RGB)
STRIP_BYTES = 64 * 2**20  # a TIFF strip larger than this is refused (a region would decode all of it)
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def convert_hint(path: str | os.PathLike) -> str:
    out = Path(path).with_suffix(".tiled.tif")
    return (f"convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave {path} {out} --tile --pyramid "
            f"--compression jpeg` or `python -c \"import tifffile; tifffile.imwrite('{out}', "
            f"tifffile.imread('{path}'), tile=(512, 512))\"`")


class Slide:
    """A lazily read image with pyramid levels. ``levels``: (height, width) per level, full
    resolution first; ``level``: the level chosen at open (default 0); ``read_region(level, y, x, h,
    w)`` -> float32 (h, w, 3) in [0, 1] (the region must lie inside the level)."""

    def __init__(self, path: str, levels: Sequence[tuple[int, int]], level: int | None = None):
        self.path, self.source, self.name = str(path), str(path), Path(path).stem
        self.levels = [(int(h), int(w)) for h, w in levels]
        self.level = self.check_level(0 if level is None else level)

    def check_level(self, level: Any) -> int:
        """``level`` as an int if this slide has it, else a one-line SalientError."""
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < len(self.levels):
            raise SalientError(f"{self.path}: level {level!r} does not exist (levels 0 .. {len(self.levels) - 1}: "
                               + ", ".join(f"{w}x{h}" for h, w in self.levels) + ")")
        return int(level)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the chosen level."""
        return self.levels[self.level]

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        lh, lw = self.levels[level]
        if h < 1 or w < 1 or y < 0 or x < 0 or y + h > lh or x + w > lw:
            raise SalientError(f"{self.path}: region y={y} x={x} h={h} w={w} outside level {level} ({lh}x{lw})")
        try:
            raw = self._read(level, int(y), int(x), int(h), int(w))
        except (SalientError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - a decoder's failure (corrupt tile): this region's
            msg = " ".join(str(e).split())[:160]
            raise ItemError(f"{self.path}: cannot read level {level} region y={y} x={x} h={h} w={w} "
                            f"({type(e).__name__}: {msg})") from None
        return _to_canonical(np.asarray(raw), self.path)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        raise NotImplementedError

    def display_level(self, size: int) -> int:
        """The coarsest level whose longer side is still >= ``size`` (level 0 if none is)."""
        best = 0
        for i, (h, w) in enumerate(self.levels):
            if max(h, w) >= size:
                best = i
        return best

    def thumbnail(self, size: int, band: int = 512) -> np.ndarray:
        """The image with its longer side about ``size`` (float32 (h, w, 3)), from the coarsest level
        at least that large, read band by band and box-reduced by an integer factor (never the whole
        of a big level at once)."""
        lvl = self.display_level(size)
        lh, lw = self.levels[lvl]
        f = max(1, max(lh, lw) // max(1, size))
        rows = max(f, band // f * f)
        out = []
        for y in range(0, lh, rows):
            h = min(rows, lh - y)
            out.append(box_reduce(self.read_region(lvl, y, 0, h, lw), f))
        return np.concatenate(out)

    def close(self) -> None:
        """Release the file handles."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({self.path!r}, levels={self.levels}, level={self.level})"


def box_reduce(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks of (h, w, ...) (partial blocks at the ends average what they have)."""
    if f == 1:
        return a
    h, w = a.shape[:2]
    hp, wp = -(-h // f) * f, -(-w // f) * f
    pad = np.pad(a, ((0, hp - h), (0, wp - w)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    return pad.reshape(hp // f, f, wp // f, f, *a.shape[2:]).mean(axis=(1, 3), dtype=np.float32)


class _ArraySlide(Slide):
    """Levels held as lazily indexed arrays (zarr, memmap) of (Y, X), (Y, X, C) or (C, Y, X) layout."""

    def __init__(self, path: str, arrays: list[Any], layouts: list[str], level: int | None, handle: Any = None):
        self.arrays, self.layouts, self.handle = arrays, layouts, handle
        shapes = [(a.shape[lay.index("y")], a.shape[lay.index("x")]) for a, lay in zip(arrays, layouts, strict=True)]
        super().__init__(path, shapes, level)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        a, lay = self.arrays[level], self.layouts[level]
        sel = tuple(slice(y, y + h) if c == "y" else slice(x, x + w) if c == "x" else slice(None) for c in lay)
        block = np.asarray(a[sel])
        if "c" in lay:
            block = np.moveaxis(block, lay.index("c"), -1)
            if block.shape[-1] > 4:
                block = block[..., :3]
        return block

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _layout(axes: str, shape: Sequence[int]) -> str:
    """tifffile / zarr axis letters -> our layout string over y, x, c (other axes of length 1 dropped)."""
    axes = axes.upper()
    if len(axes) != len(shape):
        raise SalientError(f"axes {axes!r} do not match shape {tuple(shape)}")
    out = []
    for a, n in zip(axes, shape, strict=True):
        if a == "Y":
            out.append("y")
        elif a == "X":
            out.append("x")
        elif a in "SC":
            out.append("c")
        elif n == 1:
            out.append("1")
        else:
            raise SalientError(f"unsupported axis {a!r} of length {n} (expected y, x and channels)")
    if out.count("c") > 1 or "y" not in out or "x" not in out:
        raise SalientError(f"unsupported axes {axes!r}: expected y, x and at most one channel axis")
    return "".join(out)


class _Squeeze:
    """An array view that drops length-1 axes marked '1' in its layout when indexed."""

    def __init__(self, arr: Any, layout: str):
        self.arr, self.full = arr, layout
        self.shape = tuple(n for n, c in zip(arr.shape, layout, strict=True) if c != "1")

    def __getitem__(self, sel: tuple) -> np.ndarray:
        it = iter(sel)
        full = tuple(0 if c == "1" else next(it) for c in self.full)
        return np.asarray(self.arr[full])


def _lazy(arr: Any, layout: str) -> tuple[Any, str]:
    return (arr, layout) if "1" not in layout else (_Squeeze(arr, layout), layout.replace("1", ""))


def _open_tiff(path: str, level: int | None) -> Slide:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 - not a TIFF, truncated header
        raise SalientError(f"{path}: not a readable TIFF ({type(e).__name__}: {' '.join(str(e).split())[:120]})") \
            from None
    tif.filehandle.set_lock(True)  # regions are read on several threads (seek + read must not interleave)
    try:
        series = tif.series[0]
        arrays, layouts = [], []
        for i, lv in enumerate(series.levels):
            page = lv.keyframe
            lay = _layout(lv.axes, lv.shape)
            mapped = not page.is_tiled and page.is_contiguous and page.compression == 1 and len(series.levels) == 1
            if not page.is_tiled and not mapped:
                rows = int(page.rowsperstrip or page.imagelength)
                strip = rows * page.imagewidth * page.samplesperpixel * page.dtype.itemsize
                if strip > STRIP_BYTES:
                    raise SalientError(f"{path}: a strip TIFF whose strips hold {rows} rows ({strip / 2**20:.0f} MB "
                                       f"each) cannot be read by region; {convert_hint(path)}")
            if mapped:  # uncompressed, in one piece: memory-mapped
                arr = np.memmap(path, dtype=lv.dtype, mode="r", offset=int(page.dataoffsets[0]), shape=tuple(lv.shape))
            else:
                arr = zarr.open(tif.aszarr(series=0, level=i), mode="r")
            arr, lay = _lazy(arr, lay)
            arrays.append(arr)
            layouts.append(lay)
            del page
    except BaseException:
        tif.close()
        raise
    return _ArraySlide(path, arrays, layouts, level, handle=tif)


def _ome_levels(group: Any) -> tuple[list[str], str] | None:
    attrs = dict(group.attrs)
    ms = (attrs.get("ome") or {}).get("multiscales") if isinstance(attrs.get("ome"), dict) else attrs.get("multiscales")
    if not ms:
        return None
    first = ms[0]
    axes = "".join((a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in first.get("axes", [])) or None
    return [d["path"] for d in first["datasets"]], axes or ""


def _zarr_layout(arr: Any, axes: str | None) -> str:
    names = getattr(arr.metadata, "dimension_names", None)
    if not axes and names and all(names):
        axes = "".join(str(n)[0].upper() for n in names)
    if not axes:
        if arr.ndim == 2:
            axes = "YX"
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
            axes = "YXC"
        elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            axes = "CYX"
        else:
            raise SalientError(f"zarr array of shape {arr.shape}: name its dimensions (y, x, c)")
    return _layout(axes, arr.shape)


def _open_zarr(path: str, level: int | None) -> Slide:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as e:  # noqa: BLE001 - not a zarr store
        raise SalientError(f"{path}: not a readable Zarr array or group ({type(e).__name__})") from None
    if isinstance(node, zarr.Array):
        arr, lay = _lazy(node, _zarr_layout(node, None))
        return _ArraySlide(path, [arr], [lay], level)
    found = _ome_levels(node)
    if found is None:
        raise SalientError(f"{path}: a Zarr group without OME multiscales metadata; give the path of an array")
    paths, axes = found
    arrays, layouts = [], []
    for p in paths:
        a = node[p]
        arr, lay = _lazy(a, _zarr_layout(a, axes))
        arrays.append(arr)
        layouts.append(lay)
    return _ArraySlide(path, arrays, layouts, level)


class _OpenSlide(Slide):
    def __init__(self, path: str, level: int | None):
        try:
            import openslide
        except ImportError:
            raise SalientError(f"{path}: vendor slide formats need openslide: pip install 'salient[slides]' "
                               "(openslide-python and openslide-bin)") from None
        try:
            self.osr = openslide.OpenSlide(path)
        except Exception as e:  # noqa: BLE001 - openslide's errors for an unreadable file
            raise SalientError(f"{path}: openslide cannot open it ({type(e).__name__}: {e})") from None
        super().__init__(path, [(h, w) for w, h in self.osr.level_dimensions], level)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        d = self.osr.level_downsamples[level]
        rgba = np.asarray(self.osr.read_region((int(round(x * d)), int(round(y * d))), level, (w, h)))
        return rgba  # RGBA: composited over white by _to_canonical

    def close(self) -> None:
        self.osr.close()


class _PlainSlide(Slide):
    def __init__(self, path: str, level: int | None):
        from PIL import Image as PILImage

        try:
            with PILImage.open(path) as im:
                w, h = im.size
                if w * h > PLAIN_PIXELS:
                    raise SalientError(f"{path}: a plain image of {w}x{h} ({w * h / 1e6:.0f} MP) is above the "
                                       f"{PLAIN_PIXELS / 1e6:.0f} MP budget of plain formats; {convert_hint(path)}")
                im.load()
                self.pixels = np.asarray(im.convert("RGBA") if im.mode in ("P", "LA", "PA") else im)
        except SalientError:
            raise
        except Exception as e:  # noqa: BLE001 - Pillow's errors
            raise SalientError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
        super().__init__(path, [(h, w)], level)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.pixels[y : y + h, x : x + w]


def open_slide(path: str | os.PathLike | Slide, level: int | None = None) -> Slide:
    """Open a huge image lazily (see the module docstring); ``level``: the pyramid level to work at
    (default 0, full resolution). A missing file, an unknown format or a level that does not exist
    is a one-line SalientError."""
    if isinstance(path, Slide):
        if level is not None:
            path.level = path.check_level(level)
        return path
    p = str(path)
    low = p.lower().rstrip("/")
    if not os.path.exists(p):
        raise SalientError(f"{p}: no such file")
    if os.path.isdir(p) or low.endswith(".zarr"):
        return _open_zarr(p, level)
    if low.endswith(OPENSLIDE_SUFFIXES):
        return _OpenSlide(p, level)
    if low.endswith(TIFF_SUFFIXES):
        return _open_tiff(p, level)
    if low.endswith(PLAIN_SUFFIXES):
        return _PlainSlide(p, level)
    raise SalientError(f"{p}: unknown slide format (TIFF, OME-TIFF, Zarr, {', '.join(OPENSLIDE_SUFFIXES)}, "
                       f"or {', '.join(PLAIN_SUFFIXES)})")
