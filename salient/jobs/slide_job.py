"""Tile mode into the store: one slide and method -> the OME-Zarr mosaic ``items/<key>/<method>``
(:mod:`salient.store.mosaic`, streamed band by band from :func:`salient.jobs.tiles.explain_tiles`),
the tile-score grid ``items/<key>/score`` (rows, cols, classes; NaN: skipped or failed tile) beside
``items/<key>/tile_status`` (rows, cols; 0 explained, 1 skipped as background, 2 failed), one
result row per (slide, method, target) with ``index == -1`` and the tile counts, and the overlays.

Used by ``salient explain --tiles`` (:func:`explain_tiles_command`) and by jobs whose source is
``slides`` (:func:`drive_slides`, called by the runner for a source with ``tiled = True``).

Resume: the mosaic's fingerprint is a hash of everything its values depend on (model, method,
parameters, target spec, seed, tile, overlap, level, skip_background, batch size); a rerun with the
same fingerprint keeps every verified finished band and explains only the tiles the other bands need,
so the final arrays equal an undisturbed run's bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine
from ..errors import SalientError
from ..io.slides import open_slide
from ..methods import get_method
from ..store.schema import item_key
from .tiles import TileRun, check_tiles, explain_tiles, tile_params, tiled_saliency


@dataclass(frozen=True)
class TileOptions:
    """How a slide is cut: tile side (None: the model's input size), overlap, level, background rule."""

    tile: int | None = None
    overlap: float = 0.0
    level: int | None = None
    skip_background: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"tile": self.tile, "overlap": self.overlap, "level": self.level,
                "skip_background": self.skip_background}


def fingerprint(**parts: Any) -> str:
    """A stable hash of the settings a mosaic's values depend on."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def explain_into_store(engine: Engine, store: Any, path: str, slide_id: str, method: str, target: Any, seed: int,
                       params: dict[str, Any], opts: TileOptions, position: int | None = None,
                       extra: dict[str, Any] | None = None, key: str = "") -> TileRun:
    """Explain one slide tile by tile with ``method`` into ``store`` (module docstring); returns the run."""
    m = get_method(method)
    params = tile_params(m, params)  # what the tiles run with, as recorded
    with open_slide(path) as slide:
        lvl, grid = check_tiles(slide, engine.model, opts.tile, opts.overlap, opts.level)
        fp = fingerprint(key=key, model=store.attrs.get("model"), method=method, params=params, target=target,
                         seed=seed, batch=engine.executor.batch_size, slide=slide_id, **opts.as_dict())
        attrs = {"method": method, "parameters": params, "seed": seed, "signed": m.signed, "diverging": m.diverging,
                 "item_id": slide_id, "target": str(target), "tile": list(grid.tile), "overlap": grid.overlap,
                 "level": lvl, "skip_background": opts.skip_background}
        writer = store.mosaic(slide_id, method, grid.shape, attrs=_safe(attrs), fingerprint=fp, name=method)
        run, _ = explain_tiles(engine, slide, method, target, seed, tile=opts.tile, overlap=opts.overlap, level=lvl,
                               skip_background=opts.skip_background, sink=writer.write_band, start_band=writer.done,
                               band=writer.chunk, image_id=slide_id, params=params)
        writer.close()
        writer.group.attrs.update({"target": run.target, "label": run.label})
    base = f"items/{item_key(slide_id)}"
    tiles_attrs = _safe({"target": run.target, "label": run.label, "ys": list(grid.ys), "xs": list(grid.xs),
                         "tile": list(grid.tile), "level": lvl, "method": method})
    store.root.create_array(f"{base}/score", data=run.scores, chunks=run.scores.shape, overwrite=True,
                            dimension_names=("row", "col", "class"), compressors=store.compressors,
                            attributes=tiles_attrs)
    store.root.create_array(f"{base}/tile_status", data=run.status, chunks=run.status.shape, overwrite=True,
                            dimension_names=("row", "col"), compressors=store.compressors, attributes=tiles_attrs)
    s = tiled_saliency(run, np.zeros((1, 1), np.float32), method, seed, params)
    store.add_mosaic(slide_id, path, s, position=position, extra=extra,
                     tiles={"tiles": run.n_tiles, "skipped_tiles": run.skipped, "failed_tiles": run.failed})
    return run


def _safe(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def save_slide_overlays(folder: Path, stem: str, out: Path, slide_id: str, method: str, path: str,
                        size: int = 1024) -> list[Path]:
    """The map over the slide and the tile-score heat map, as PNGs (from pyramid levels)."""
    from ..report.mosaic_overlay import save_mosaic_overlay, save_score_map

    return [save_mosaic_overlay(folder / f"{stem}_{method}.png", out, slide_id, method, path, size),
            save_score_map(folder / f"{stem}_{method}_scores.png", out, slide_id, size)]


def map_line(path: str, run: TileRun) -> str:
    return (f"{path}  {run.method}  {run.label} ({run.target})  mean tile score {run.base_score:.4f}  "
            f"{run.n_tiles} tiles ({run.skipped} skipped, {run.failed} failed)  {run.n_forward} forward  "
            f"{run.seconds:.1f} s")


def explain_tiles_command(plan: Any, args: Any, echo: Callable[[str], None] = print) -> int:
    """``salient explain --tiles``: every path of ``plan`` (an ExplainPlan of the CLI) into the store
    and overlays; every bad input (format, level, tile, overlap) is refused before any work."""
    opts = TileOptions(args.tile, args.tile_overlap, args.level, args.skip_background)
    target = args.target
    for p in plan.paths:  # before any work: every slide opens, its level exists, the tiles fit
        with open_slide(p) as slide:
            check_tiles(slide, plan.model, opts.tile, opts.overlap, opts.level)
    if isinstance(plan.target, tuple) and plan.target[1] != 1:
        raise SalientError(f"--tiles explains one target per slide: use top1, a class id or a label, not {target!r}")
    return explain_paths_command(
        plan, args, opts, explain_into_store, map_line,
        lambda path, run: save_slide_overlays(plan.out / "overlays", Path(path).stem, plan.out, path,
                                              plan.method.name, path), echo)


def explain_paths_command(plan: Any, args: Any, opts: Any, explain_into: Callable[..., Any],
                          line: Callable[[str, Any], str], outputs: Callable[[str, Any], Any],
                          echo: Callable[[str], None] = print) -> int:
    """The loop of ``salient explain --tiles`` and of ``salient explain VIDEO...``: each path of ``plan``
    explained into the store by ``explain_into`` (:func:`explain_into_store`'s arguments) at its row (the
    next rows for new paths, in the order given), one ``line(path, run)`` each, a SalientError an
    ``error`` row (exit status 2), then ``outputs(path, run)`` once the table is flushed."""
    from ..store import Store, read_results

    status = 0
    with Engine(plan.model, executor=args.executor, **plan.executor_opts) as eng, \
            Store(plan.out, plan.model_id, {"command": "explain", "model": args.model}, methods=plan.claims) as store:
        prev = read_results(plan.out, columns=["item_id", "position"])
        known = dict(zip(prev["item_id"], prev["position"].astype(int), strict=True))
        nxt = int(prev["position"].max()) + 1 if len(prev) else 0
        checked = plan.method.check_params(plan.params)
        done = []
        for path in plan.paths:
            if path not in known:
                known[path], nxt = nxt, nxt + 1
            try:
                run = explain_into(eng, store, path, path, plan.method.name, args.target, args.seed, checked, opts,
                                   position=known[path])
            except SalientError as e:
                status = status or 2
                store.add_error(path, path, plan.method.name, str(e), position=known[path])
                echo(f"salient: error: {path}: {' '.join(str(e).split())}")
                continue
            echo(line(path, run))
            done.append((path, run))
        store.flush()
        for path, run in done:
            outputs(path, run)
    return status


def drive_slides(plan: Any, engine: Engine, store: Any, prev: Any, bar: Any, summary: Any,
                 one_line: Callable[[BaseException], str], explain_into: Callable[..., Any] | None = None) -> None:
    """The job runner's loop for a tiled source: slide by slide, method by method, each slide's tiles
    over every worker; a failed slide is an ``error`` row and the job goes on. ``explain_into``: what
    explains one entry into the store (default :func:`explain_into_store`; a video source's is
    :func:`salient.jobs.video_job.explain_video_into_store`, with the same arguments)."""
    explain_into = explain_into or explain_into_store
    spec, source = plan.spec, plan.source
    opts = source.options
    for pos, entry in enumerate(source.entries()):
        summary.items = pos + 1
        left = [m for m in plan.methods if not prev.is_done(m.name, pos)]
        for m in plan.methods:
            if m not in left:
                store.skip(pos, m.name)
        if not left:
            summary.skipped += 1
            bar.item_done()
            continue
        error = False
        for m in left:
            n0 = engine.n_forward
            try:
                explain_into(engine, store, entry.path, entry.id, m.name, m.target_spec, spec.seed, m.params,
                             opts, position=pos, key=spec.spec_hash())
            except Exception as e:  # noqa: BLE001 - the slide's error row; the job goes on
                error = True
                store.add_error(entry.id, entry.path, m.name, one_line(e), position=pos,
                                n_forward=engine.n_forward - n0)
        summary.done_now += 1
        bar.item_done(error=error)

