"""Long videos into the store: one video and method -> the map along t ``items/<key>/<method>``
((1, frames, H, W), :mod:`salient.store.frames`, streamed band by band from
:func:`salient.jobs.video.explain_clips`), the per-clip scores ``items/<key>/score`` (clips x classes;
NaN: a failed clip) beside ``items/<key>/clip_status`` (0 explained, 2 failed), one result row per
(video, method, target) with ``index == -1`` and the clip counts, and the outputs: an MP4 of the map
over the frames, a contact sheet and the target's score over time (PNG).

Used by ``salient explain VIDEO...`` (:func:`explain_videos_command`) and by jobs whose source is
``videos`` (the runner drives :func:`explain_video_into_store` through
:func:`salient.jobs.slide_job.drive_slides`).

Resume: the map's fingerprint is a hash of everything its values depend on (model, method, parameters,
target spec, seed, clip stride, frame sampling, batch size); a rerun with the same fingerprint keeps
every verified finished band and explains only the clips the other bands need, so the final arrays
equal an undisturbed run's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine
from ..errors import SalientError
from ..io.video import open_video
from ..methods import get_method
from ..store.schema import item_key
from .slide_job import _safe, explain_paths_command, fingerprint
from .tiles import tile_params
from .video import CHUNK, ClipGrid, VideoRun, explain_clips, video_saliency


@dataclass(frozen=True)
class VideoOptions:
    """How a video is cut: clip stride (None: the clip length), frame sampling (fps or frame_step), and
    ``top_clips`` (explain only the k best-scoring clips; None: all)."""

    stride: int | None = None
    fps: float | None = None
    frame_step: int | None = None
    top_clips: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"stride": self.stride, "fps": self.fps, "frame_step": self.frame_step, "top_clips": self.top_clips}


def explain_video_into_store(engine: Engine, store: Any, path: str, video_id: str, method: str, target: Any,
                             seed: int, params: dict[str, Any], opts: VideoOptions, position: int | None = None,
                             extra: dict[str, Any] | None = None, key: str = "") -> VideoRun:
    """Explain one video clip by clip with ``method`` into ``store`` (module docstring); returns the run."""
    m = get_method(method)
    params = tile_params(m, params)  # what the clips run with, as recorded
    model = engine.model
    with open_video(path, fps=opts.fps, frame_step=opts.frame_step) as video:
        grid = ClipGrid.make(video.n_frames, model.frames, opts.stride)
        h, w = model.input_size
        fp = fingerprint(key=key, model=store.attrs.get("model"), method=method, params=params, target=target,
                         seed=seed, batch=engine.executor.batch_size, video=video_id, clip=model.frames,
                         **opts.as_dict())
        attrs = {"method": method, "parameters": params, "seed": seed, "signed": m.signed, "diverging": m.diverging,
                 "item_id": video_id, "target": str(target), "clip": grid.clip, "stride": grid.stride,
                 "fps": video.fps, "frame_step": opts.frame_step}
        writer = store.frames(video_id, method, (grid.n_frames, h, w), attrs=_safe(attrs), fingerprint=fp,
                              chunk=CHUNK)
        run, _ = explain_clips(engine, video, method, target, seed, clip_stride=opts.stride, sink=writer.write_band,
                               start_band=writer.done, chunk=writer.chunk, video_id=video_id, params=params,
                               top_clips=opts.top_clips)
        writer.close()
        writer.array.attrs.update({"target": [run.target], "label": [run.label]})
    base = f"items/{item_key(video_id)}"
    clip_attrs = _safe({"target": run.target, "label": run.label, "starts": list(grid.starts), "clip": grid.clip,
                        "stride": grid.stride, "fps": run.fps, "times": run.times.tolist(), "method": method})
    store.root.create_array(f"{base}/score", data=run.scores, chunks=run.scores.shape, overwrite=True,
                            dimension_names=("clip", "class"), compressors=store.compressors, attributes=clip_attrs)
    store.root.create_array(f"{base}/clip_status", data=run.status, chunks=run.status.shape, overwrite=True,
                            dimension_names=("clip",), compressors=store.compressors, attributes=clip_attrs)
    s = video_saliency(run, np.zeros((1, 1, 1), np.float32), method, seed, params)
    store.add_mosaic(video_id, path, s, position=position, extra=extra,
                     tiles={"clips": run.n_clips, "failed_clips": run.failed})
    return run


def save_video_outputs(folder: Path, stem: str, out: Path, video_id: str, method: str, path: str,
                       opts: VideoOptions, run: VideoRun) -> list[Path]:
    """The map over the frames (MP4), a contact sheet and the target's score over time (PNG)."""
    import zarr

    from ..report.video_outputs import contact_sheet, score_plot, write_map_video
    from ..store.schema import ZARR_NAME

    folder.mkdir(parents=True, exist_ok=True)
    arr = zarr.open_group(Path(out) / ZARR_NAME, mode="r")[f"items/{item_key(video_id)}/{method}"]
    maps = _Frames(arr)
    m = get_method(method)
    with open_video(path, fps=opts.fps, frame_step=opts.frame_step) as video:
        mp4 = write_map_video(folder / f"{stem}_{method}.mp4", video, maps, signed=m.signed, diverging=m.diverging)
        sheet = contact_sheet(folder / f"{stem}_{method}_sheet.png", video, maps, signed=m.signed,
                              diverging=m.diverging)
    plot = score_plot(folder / f"{stem}_{method}_score.png", run.times, run.scores[:, run.target], run.label)
    return [mp4, sheet, plot]


class _Frames:
    """The (N, H, W) view of a stored (1, N, H, W) map along t, read in slices."""

    def __init__(self, arr: Any):
        self.arr = arr
        self.shape = tuple(arr.shape[1:])
        self.ndim = 3
        self.dtype = np.float32

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.arr[(0, *(key if isinstance(key, tuple) else (key,)))], np.float32)


def map_line(path: str, run: VideoRun) -> str:
    return (f"{path}  {run.method}  {run.label} ({run.target})  mean clip score {run.base_score:.4f}  "
            f"{run.grid.n_frames} frames, {run.n_clips} clips of {run.grid.clip} ({run.skipped} skipped, "
            f"{run.failed} failed)  "
            f"{run.n_forward} forward  {run.seconds:.1f} s")


def explain_videos_command(plan: Any, args: Any, echo: Callable[[str], None] = print) -> int:
    """``salient explain VIDEO...``: every path of ``plan`` into the store and outputs; every bad input
    (a file that is not a video, a stride, the sampling) is refused before any work."""
    opts = VideoOptions(args.clip_stride, args.fps, args.frame_step, args.top_clips)
    for p in plan.paths:  # before any work: every video opens, its clips fit
        with open_video(p, fps=opts.fps, frame_step=opts.frame_step) as video:
            ClipGrid.make(video.n_frames, plan.model.frames, opts.stride)
    if isinstance(plan.target, tuple) and plan.target[1] != 1:
        raise SalientError(f"a video is explained for one target: use top1, a class id or a label, "
                           f"not {args.target!r}")
    return explain_paths_command(
        plan, args, opts, explain_video_into_store, map_line,
        lambda path, run: save_video_outputs(plan.out / "overlays", Path(path).stem, plan.out, path,
                                             plan.method.name, path, opts, run), echo)
