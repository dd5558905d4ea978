"""Tile mode: an image -> tiles -> maps -> one mosaic, with memory bounded by a band of chunks.

Geometry (:class:`TileGrid`): tiles of ``tile`` = (th, tw) pixels (default the model's input size)
at the chosen pyramid level, overlap o in [0, 1): stride s = max(1, floor(T·(1 − o))) per axis, tile
starts 0, s, 2s, ... and a last tile aligned to the image edge (start L − T), so every pixel is
covered. A tile larger than the image, or o outside [0, 1), is a one-line SalientError.

Blending (:class:`Stitcher`): mosaic = Σ w·S_tile / Σ w per pixel over the explained tiles, with the
separable window w(y, x) = w_y(y)·w_x(x); along an axis, w rises linearly over the pixels a tile
shares with its previous neighbour, (t + 0.5)/a for t < a, falls likewise over the b pixels it shares
with its next one, (T − t − 0.5)/b, and is 1 elsewhere (the minimum of the two where they meet).
Edges on the image border have no neighbour, so no taper: a constant tile map gives a constant
mosaic, borders included; with no overlap w = 1 and a crop of the mosaic is the tile's map bit for
bit; with equal overlaps the two ramps sum to 1 (a linear cross-fade). Sums and weights accumulate
per band of ``band`` rows (the store's chunk height) and are normalised once; band k is finished
(passed to the sink) as soon as every tile row that starts above its end is applied. Tile rows are
applied in raster order, each in column order, whatever order the engine finishes tiles in, so the
mosaic never depends on scheduling. Memory: the accumulator holds band + th rows of the level's
width (two float32 arrays) plus the maps of the tiles in flight.

Missing data: a skipped tile contributes nothing (its pixels are NaN unless an explained tile covers
them); a tile that cannot be read or explained (a corrupt tile of a good slide) makes its whole area
NaN; both are counted, and marked in the tile-score grid (NaN scores).

Background (``skip_background``): a tile is skipped when its pixels are near-uniform (standard
deviation over all pixels and channels below :data:`BACKGROUND_STD`) or mostly background (at least
:data:`BACKGROUND_FRACTION` of its pixels have a channel mean above :data:`WHITE` (glass, clouds)
or below :data:`BLACK` (scanner margins, no-data)).

Target: a class id or label for the whole image, or ``top1`` (default): the class with the highest
mean score over the explained tiles, from a first pass that scores every tile (one forward each;
the explain pass then reuses those scores). That pass gives the tile-score grid (rows, cols,
classes). Every tile is an engine Item ``<image id>@<level>/<row>_<col>``; all tiles of an image
are fed to one ``Engine.run`` in raster order (read ahead on threads), so they spread over every
worker and batch together.

:func:`explain_tiles` is the one driver the Python API, ``salient explain --tiles`` and the
``slides`` job source use; the sink (an in-memory array, or the store's
:class:`~salient.store.mosaic.MosaicWriter`) receives finished bands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import Engine, Task
from ..engine.tasks import base_scores, explain_task, parse_target
from ..errors import ItemError, SalientError
from ..images import Image
from ..io.slides import Slide, open_slide
from ..item import Item
from ..methods import get_method
from ..saliency import Saliency
from .sources import prefetch

BACKGROUND_STD = 0.02
BACKGROUND_FRACTION = 0.9
WHITE, BLACK = 0.92, 0.04
BAND = 512  # rows per band: the store's chunk height
SKIPPED, FAILED = "skipped", "failed"


def _check_overlap(overlap: Any) -> float:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating)) or not 0 <= overlap < 1:
        raise SalientError(f"tile overlap must be a number in [0, 1), got {overlap!r}")
    return float(overlap)


def axis_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along one axis: 0, s, 2s, ... with s = max(1, floor(tile·(1 − overlap))), the last
    one at ``length - tile``."""
    stride = max(1, math.floor(tile * (1 - overlap) + 1e-9))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def axis_windows(starts: list[int], tile: int) -> list[np.ndarray]:
    """The 1-D blending weight of each tile along one axis (see the module docstring)."""
    t = np.arange(tile, dtype=np.float64)
    out = []
    for i, s in enumerate(starts):
        w = np.ones(tile)
        a = starts[i - 1] + tile - s if i > 0 else 0
        b = s + tile - starts[i + 1] if i + 1 < len(starts) else 0
        if a > 0:
            w = np.minimum(w, (t + 0.5) / a)
        if b > 0:
            w = np.minimum(w, (tile - t - 0.5) / b)
        out.append(w.astype(np.float32))
    return out


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of an (H, W) image lie (see the module docstring)."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    overlap: float
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def make(cls, shape: tuple[int, int], tile: int | tuple[int, int], overlap: float = 0.0) -> TileGrid:
        th, tw = (tile, tile) if isinstance(tile, (int, np.integer)) else tile
        h, w = shape
        o = _check_overlap(overlap)
        if th < 1 or tw < 1:
            raise SalientError(f"tile size must be >= 1, got {th}x{tw}")
        if th > h or tw > w:
            raise SalientError(f"tile {tw}x{th} is larger than the image ({w}x{h}): choose a smaller tile or a "
                               "finer level")
        return cls((int(h), int(w)), (int(th), int(tw)), o, tuple(axis_starts(h, th, o)), tuple(axis_starts(w, tw, o)))

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    @property
    def n(self) -> int:
        return self.rows * self.cols

    def windows(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return axis_windows(list(self.ys), self.tile[0]), axis_windows(list(self.xs), self.tile[1])

    def first_row_for(self, y: int) -> int:
        """The first tile row that reaches below row ``y`` (the rows a band from ``y`` on needs)."""
        return next((r for r, y0 in enumerate(self.ys) if y0 + self.tile[0] > y), self.rows)


def is_background(pixels: np.ndarray) -> bool:
    """The ``skip_background`` rule (module docstring) on float32 (h, w, 3) pixels in [0, 1]."""
    if float(pixels.std()) < BACKGROUND_STD:
        return True
    mean = pixels.mean(axis=-1)
    return float(((mean > WHITE) | (mean < BLACK)).mean()) >= BACKGROUND_FRACTION


class Stitcher:
    """Blend tile maps into bands of the mosaic (module docstring). ``add(r, c, map)``, ``skip(r, c)``
    and ``fail(r, c)`` in any order; every finished band goes to ``sink(rows)`` in order, starting
    with band ``start_band`` (a resume); only tile rows that reach that band are expected."""

    def __init__(self, grid: TileGrid, sink: Callable[[np.ndarray], None], band: int = BAND, start_band: int = 0):
        self.grid, self.sink, self.band = grid, sink, band
        self.wy, self.wx = grid.windows()
        self.flat_y, self.flat_x = [bool((w == 1).all()) for w in self.wy], [bool((w == 1).all()) for w in self.wx]
        h, w = grid.shape
        self.n_bands = -(-h // band)
        self.next_band = start_band
        self.a0 = start_band * band  # first row the accumulator holds
        cap = band + grid.tile[0]
        self.sum = np.zeros((cap, w), np.float32)
        self.wsum = np.zeros((cap, w), np.float32)
        self.next_row = grid.first_row_for(self.a0)
        self.pending: dict[int, dict[int, Any]] = {}
        self.seconds = 0.0  # CPU time of the calling thread spent blending (and handing bands on)
        self._flush()

    def add(self, r: int, c: int, tile_map: np.ndarray) -> None:
        self._put(r, c, np.asarray(tile_map, np.float32))

    def skip(self, r: int, c: int) -> None:
        self._put(r, c, SKIPPED)

    def fail(self, r: int, c: int) -> None:
        self._put(r, c, FAILED)

    def _put(self, r: int, c: int, value: Any) -> None:
        if r < self.next_row:
            return  # a row before the resume point
        self.pending.setdefault(r, {})[c] = value
        t0 = time.thread_time()
        while len(self.pending.get(self.next_row, ())) == self.grid.cols:
            self._apply(self.next_row, self.pending.pop(self.next_row))
            self.next_row += 1
            self._flush()
        self.seconds += time.thread_time() - t0

    def _apply(self, r: int, row: dict[int, Any]) -> None:
        th, tw = self.grid.tile
        y0 = self.grid.ys[r] - self.a0
        lo = max(0, -y0)  # the part of the tile above the accumulator is in finished bands
        wy = self.wy[r][lo:, None]
        for c in range(self.grid.cols):
            v = row[c]
            if isinstance(v, str) and v == SKIPPED:
                continue
            x0 = self.grid.xs[c]
            sl = (slice(y0 + lo, y0 + th), slice(x0, x0 + tw))
            if isinstance(v, str):  # failed: its whole area is missing
                self.sum[sl] = np.nan
                self.wsum[sl] += 1.0
                continue
            if self.flat_y[r] and self.flat_x[c]:  # w = 1 (no overlap): the same sums, without the products
                self.sum[sl] += v[lo:]
                self.wsum[sl] += np.float32(1)
                continue
            w = wy * self.wx[c][None, :]
            self.sum[sl] += w * v[lo:]
            self.wsum[sl] += w

    def _flush(self) -> None:
        """Pass on every band no remaining tile row reaches."""
        h = self.grid.shape[0]
        while self.next_band < self.n_bands:
            b1 = min((self.next_band + 1) * self.band, h)
            if self.next_row < self.grid.rows and self.grid.ys[self.next_row] < b1:
                return
            n = b1 - self.a0
            with np.errstate(invalid="ignore", divide="ignore"):
                rows = np.where(self.wsum[:n] > 0, self.sum[:n] / self.wsum[:n], np.float32(np.nan))
            self.sink(rows.astype(np.float32, copy=False))
            keep = self.sum.shape[0] - n
            self.sum[:keep] = self.sum[n:]
            self.wsum[:keep] = self.wsum[n:]
            self.sum[keep:] = 0
            self.wsum[keep:] = 0
            self.a0, self.next_band = b1, self.next_band + 1

    @property
    def done(self) -> bool:
        return self.next_band >= self.n_bands


class ThreadedSink:
    """Pass bands to ``sink`` on one background thread, in order (at most ``depth`` waiting), so the
    driver keeps feeding tiles while a band is compressed and written; ``close()`` waits for the
    last and re-raises a failure (so does the next call after one). ``seconds``: CPU time of the
    writer thread in ``sink``."""

    def __init__(self, sink: Callable[[np.ndarray], None], depth: int = 2):
        import queue
        import threading

        self.sink, self.seconds, self.error = sink, 0.0, None
        self.queue: Any = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name="salient-mosaic", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (rows := self.queue.get()) is not None:
            if self.error is None:
                t0 = time.thread_time()
                try:
                    self.sink(rows)
                except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
                    self.error = e
                self.seconds += time.thread_time() - t0

    def __call__(self, rows: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(rows)

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


class ArraySink:
    """An in-memory mosaic: bands written one after the other into a NaN-filled (H, W) array."""

    def __init__(self, shape: tuple[int, int]):
        self.data = np.full(shape, np.nan, np.float32)
        self.y = 0

    def __call__(self, rows: np.ndarray) -> None:
        self.data[self.y : self.y + len(rows)] = rows
        self.y += len(rows)


class PieceCounts:
    """The counts of a run whose ``status`` marks each piece (a tile, a clip): 0 explained, 1 skipped,
    2 failed."""

    status: np.ndarray

    @property
    def skipped(self) -> int:
        return int((self.status == 1).sum())

    @property
    def failed(self) -> int:
        return int((self.status == 2).sum())


@dataclass
class TileRun(PieceCounts):
    """What :func:`explain_tiles` did for one image and method."""

    image_id: str
    method: str
    level: int
    grid: TileGrid
    target: int
    label: str
    scores: np.ndarray  # (rows, cols, classes) float32, NaN for skipped and failed tiles
    status: np.ndarray  # (rows, cols) uint8: 0 explained (now or by an earlier run), 1 skipped, 2 failed
    base_score: float  # mean tile score of the target over the explained tiles
    n_forward: int = 0
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # read, blend+write, engine seconds
    errors: list[str] = field(default_factory=list)  # the first few tile failures

    @property
    def n_tiles(self) -> int:
        return self.grid.n


@dataclass
class TiledSaliency(Saliency):
    """A Saliency over a whole image in tile mode (``map``: the mosaic at the level's resolution),
    with the tile run's grid, tile-score grid and counts in ``tiles``."""

    tiles: TileRun | None = None


def tile_id(image_id: str, level: int, r: int, c: int) -> str:
    return f"{image_id}@{level}/{r}_{c}"


def check_tiles(slide: Slide, model: Any, tile: int | tuple[int, int] | None, overlap: float, level: int | None
                ) -> tuple[int, TileGrid]:
    """The level and the tile grid, every bad input a one-line SalientError before any work."""
    lvl = slide.check_level(slide.level if level is None else level)
    return lvl, TileGrid.make(slide.levels[lvl], tuple(model.input_size) if tile is None else tile, overlap)


def tile_params(method: Any, params: dict[str, Any] | None) -> dict[str, Any]:
    """A method's parameters in tile mode: a method that scales each map by itself (the CAMs' min-max,
    parameter ``normalize``) runs without it, so that every tile of an image has one scale and the
    mosaic is normalised once, by whoever displays it (ALGORITHMS.md, "Huge images")."""
    out = dict(params or {})
    if "normalize" in method.defaults:
        out["normalize"] = False
    return out


def one_target(model: Any, method: str, target: int | str, params: dict[str, Any] | None, what: str
               ) -> tuple[dict[str, Any], int | tuple[str, int]]:
    """A method's checked parameters for the pieces of one image or video (:func:`tile_params`, checked
    against ``model``) and its one target (a class, or ("top", 1)); ``what`` starts the error for topK."""
    m = get_method(method)
    checked = m.check_params(tile_params(m, params))
    m.check_model(checked, model)
    tgt = parse_target(target, model)
    if isinstance(tgt, tuple) and tgt[1] != 1:
        raise SalientError(f"{what}: use top1, a class id or a label, not {target!r}")
    return checked, tgt


def explained_mean(scores: np.ndarray, status: np.ndarray, target: int) -> float:
    """The target's mean score over the explained pieces (status 0; NaN if none), after marking the
    failed ones' scores NaN in place."""
    scores[status == 2] = np.nan
    good = scores[..., target][status == 0]
    good = good[~np.isnan(good)]
    return float(good.mean()) if len(good) else float("nan")


def explain_tiles(engine: Engine, slide: Slide | str, method: str = "gradcampp", target: int | str = "top1",
                  seed: int = 0, *, tile: int | tuple[int, int] | None = None, overlap: float = 0.0,
                  level: int | None = None, skip_background: bool = False, sink: Callable | None = None,
                  start_band: int = 0, band: int = BAND, image_id: str | None = None, readers: int = 2,
                  params: dict[str, Any] | None = None) -> tuple[TileRun, Any]:
    """Explain ``slide`` tile by tile with ``method`` (module docstring). Finished bands of the
    mosaic go to ``sink`` (on a background thread, :class:`ThreadedSink`; by default an in-memory
    :class:`ArraySink`, returned second) from band ``start_band`` on; only the tiles those bands need
    are explained (a resume), every tile is scored. ``run.timing``: CPU seconds of reading tiles (the
    reader threads), blending (the driver thread) and the sink (the writer thread); wall seconds in
    the engine."""
    slide = open_slide(slide)
    model = engine.model
    lvl, grid = check_tiles(slide, model, tile, overlap, level)
    checked, tgt = one_target(model, method, target, params, "tile mode explains one target per image")
    image_id = image_id or slide.source
    out = ArraySink(grid.shape) if sink is None else sink
    writer = ThreadedSink(out) if sink is not None else None
    t0 = time.perf_counter()
    n_forward0, engine_s0 = engine.n_forward, engine.seconds
    drv = _Driver(engine, slide, lvl, grid, image_id, skip_background, readers,
                  Stitcher(grid, writer or out, band, start_band))
    try:
        tgt = drv.run(method, tgt, seed, checked)
    finally:
        if writer is not None:
            writer.close()
    if not drv.stitch.done:
        raise ItemError(f"{image_id}: the mosaic is incomplete ({drv.stitch.next_band} of {drv.stitch.n_bands} bands)")
    scores, status = drv.scores, drv.status
    run = TileRun(image_id, method, lvl, grid, int(tgt), model.label(int(tgt)), scores, status,
                  explained_mean(scores, status, tgt), engine.n_forward - n_forward0,
                  time.perf_counter() - t0, errors=drv.errors)
    run.timing = {"read": drv.read_seconds, "stitch": drv.stitch.seconds, "write": writer.seconds if writer else 0.0,
                  "engine": engine.seconds - engine_s0}
    return run, out


class _Driver:
    """The passes of one :func:`explain_tiles` call over the engine: tiles read ahead on ``readers``
    threads (background tiles skipped), the score pass, the explain pass, the stitcher fed."""

    def __init__(self, engine: Engine, slide: Slide, level: int, grid: TileGrid, image_id: str,
                 skip_background: bool, readers: int, stitch: Stitcher):
        self.engine, self.model, self.slide, self.level, self.grid = engine, engine.model, slide, level, grid
        self.image_id, self.skip_background, self.readers, self.stitch = image_id, skip_background, readers, stitch
        self.status = np.zeros((grid.rows, grid.cols), np.uint8)
        self.scores = np.full((grid.rows, grid.cols, self.model.n_classes), np.nan, np.float32)
        self.first = stitch.next_row  # tile rows before it lie in finished bands (a resume)
        self.errors: list[str] = []
        self.read_seconds = 0.0

    def read(self, rc: tuple[int, int]) -> Item | None:
        """Tile (r, c) as an Item; None for a background tile; an ItemError for an unreadable one."""
        r, c = rc
        t = time.thread_time()
        try:
            px = self.slide.read_region(self.level, self.grid.ys[r], self.grid.xs[c], *self.grid.tile)
            if self.skip_background and is_background(px):
                return None
            # the same pixels laid out channel-first: preprocess's permute then gives a contiguous tensor
            # (torch's elementwise ops on the permuted view cost ~100x more, measured on 2 threads)
            px = np.ascontiguousarray(px.transpose(2, 0, 1)).transpose(1, 2, 0)
            x = self.model.preprocess(Image(px, self.image_id, self.image_id))
            return Item(tile_id(self.image_id, self.level, r, c), x, None, {"tile": (r, c)})
        finally:
            self.read_seconds += time.thread_time() - t

    def failed(self, r: int, c: int, e: BaseException) -> None:
        self.status[r, c] = 2
        self.stitch.fail(r, c)
        if len(self.errors) < 5:
            self.errors.append(f"tile {r}_{c}: {' '.join(str(e).split())[:200]}")

    def tasks(self, cells: list[tuple[int, int]], make: Callable[[Item], Any]) -> Iterator[Task]:
        for (r, c), item in prefetch(cells, self.read, workers=self.readers, depth=4 * max(1, self.readers)):
            if isinstance(item, BaseException):
                if not isinstance(item, ItemError):
                    raise item
                self.failed(r, c, item)
            elif item is None:
                self.status[r, c] = 1
                self.stitch.skip(r, c)
            else:
                yield Task((r, c), item, make(item))

    def score(self, cells: list[tuple[int, int]]) -> None:
        """The score pass over ``cells``: every class's score of each tile."""
        for task, res in self.engine.run(self.tasks(cells, base_scores)):
            r, c = task.key
            if isinstance(res, BaseException):
                self.failed(r, c, res)
            else:
                self.scores[r, c] = res

    def run(self, method: str, target: int | tuple[str, int], seed: int, params: dict[str, Any]) -> int:
        """Both passes; returns the target class."""
        grid = self.grid
        cells = [(r, c) for r in range(grid.rows) for c in range(grid.cols)]
        if not isinstance(target, int):  # the score pass over every tile: the target and the tile-score grid
            self.score(cells)
            explained = self.status == 0
            if not explained.any():
                raise ItemError(f"{self.image_id}: no tile could be scored ({grid.n} tiles, "
                                f"{int((self.status == 1).sum())} skipped as background)")
            target = int(np.argmax(self.scores[explained].mean(axis=0)))
        elif self.first:  # a resume with a fixed target: score the tiles before the resume point
            self.score(cells[: self.first * grid.cols])
        scores = self.scores

        def make(item: Item) -> Any:
            r, c = item.meta["tile"]
            known = None if np.isnan(scores[r, c, 0]) else scores[r, c]
            return scores_and_explain(item, self.model, method, target, seed, params, known)

        todo = [(r, c) for r, c in cells[self.first * grid.cols :] if self.status[r, c] == 0]
        size = tuple(self.model.input_size)
        for task, res in self.engine.run(self.tasks(todo, make)):
            r, c = task.key
            if isinstance(res, BaseException):
                self.failed(r, c, res)
                continue
            scores[r, c], (s,) = res
            tile_map = s.map
            if tuple(grid.tile) != size:
                tile_map = F.interpolate(torch.from_numpy(tile_map)[None, None], size=grid.tile, mode="bilinear",
                                         align_corners=False)[0, 0].numpy()
            self.stitch.add(r, c, tile_map)
        return target


def scores_and_explain(item: Item, model: Any, method: str, target: int, seed: int, params: dict,
                       scores: np.ndarray | None):
    """Generator: an item's scores (one query unless known) and its explanation, -> (scores, [Saliency])
    (a tile of tile mode, a clip of a long video)."""
    if scores is None:
        scores = yield from base_scores(item)
    results = yield from explain_task(item, model, method, target, seed, params, scores=scores)
    return scores, results


def tiled_saliency(run: TileRun, mosaic: np.ndarray, method: str, seed: int, params: dict[str, Any]) -> TiledSaliency:
    """The TiledSaliency of a finished run with its in-memory mosaic."""
    m = get_method(method)
    info = {**params, "tile": list(run.grid.tile), "overlap": run.grid.overlap, "level": run.level}
    return TiledSaliency(map=mosaic, signed=m.signed, diverging=m.diverging, method=method, target=run.target,
                         label=run.label, base_score=run.base_score, n_forward=run.n_forward, seconds=run.seconds,
                         seed=seed, params=info, item_id=run.image_id, tiles=run)


def explain_slide(model: Any, slide: Slide | str, method: str = "gradcampp", target: int | str = "top1",
                  seed: int = 0, *, tile: int | tuple[int, int] | None = None, overlap: float = 0.0,
                  level: int | None = None, skip_background: bool = False, engine: Engine | None = None,
                  **params: Any) -> TiledSaliency:
    """Tile mode in memory: the whole mosaic as a :class:`TiledSaliency` (for images whose mosaic fits
    in memory; the CLI and jobs stream it into the store instead)."""
    from ..engine.engine import engine_for
    from ..models import load_model

    eng = engine or engine_for(load_model(model))
    run, sink = explain_tiles(eng, slide, method, target, seed, tile=tile, overlap=overlap, level=level,
                              skip_background=skip_background, params=params)
    return tiled_saliency(run, sink.data, method, seed, tile_params(get_method(method), params))
