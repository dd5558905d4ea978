"""Long videos: a video -> clips -> maps -> one map along t, with memory bounded by a window of clips.

Geometry (:class:`ClipGrid`): the video's N sampled frames (:func:`salient.io.video.open_video`:
``fps`` or ``frame_step``) are cut into clips of the model's length L (``Model.frames``) with a
``stride`` (default L: no overlap): starts 0, s, 2s, ... and a last clip aligned to the video's end
(start N − L), so every frame is covered. A video shorter than one clip (N < L) is one clip padded by
repeating its last frame; its map keeps the first N frames.

Blending: the map along t = Σ w·S_clip / Σ w per frame with tile mode's weight window along t
(:func:`salient.jobs.tiles.axis_windows`): it rises over the frames a clip shares with the previous
one and falls over those it shares with the next, and is flat at the video's first and last frames,
so a constant clip map gives a constant video map, ends included, and with no overlap a slice of the
video map is the clip's map bit for bit. It runs on tile mode's :class:`~salient.jobs.tiles.Stitcher`,
a clip being a tile of L rows of H·W pixels: bands of ``chunk`` frames are finished (passed to the
sink) as soon as every clip that touches them is applied, clips applied in order whatever order the
engine finishes them in. Memory: the accumulator holds chunk + L frames, the decoder a window of L
preprocessed frames, the engine at most :data:`LIVE_CLIPS` clips per worker slot.

Target: a class id or label for the whole video, or ``top1`` (default): the class with the highest
mean clip score, from a first pass that scores every clip (one forward each; the explain pass reuses
those scores). The per-clip scores (clips x classes) are kept (``VideoRun.scores``). Every clip is an
engine Item ``<video id>@<start frame>``; all clips of a video go to one ``Engine.run`` in order
(decoded ahead on one thread), so they spread over every worker and batch together.

``top_clips`` = k (an option): after the score pass, only the k clips with the highest target score
are explained; the others are skipped (their frames are NaN where no explained clip covers them,
``VideoRun.status`` 1): with the ``temporal`` method or the clip scores as the cheap pass over time,
the spatial explanation is spent where the class is.

A clip that cannot be explained makes its frames NaN where no other clip covers them (counted in
``VideoRun.failed``); a video that cannot be decoded (truncated, corrupt) raises ItemError.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..engine import Engine, Task
from ..engine.tasks import base_scores
from ..errors import ItemError, SalientError
from ..images import Image
from ..io.video import Video, open_video
from ..item import Item
from ..methods import get_method
from ..saliency import Saliency
from .tiles import (
    ArraySink,
    PieceCounts,
    Stitcher,
    ThreadedSink,
    TileGrid,
    explained_mean,
    one_target,
    scores_and_explain,
    tile_params,
)

CHUNK = 32  # frames per band: the store's chunk along t
LIVE_CLIPS = 4  # clips alive per worker slot (units in flight), beside the decoder's read-ahead
READ_AHEAD = 4  # clips decoded ahead of the engine


@dataclass(frozen=True)
class ClipGrid:
    """Where the clips of an N-frame video lie (module docstring)."""

    n_frames: int
    clip: int
    stride: int
    starts: tuple[int, ...]

    @classmethod
    def make(cls, n_frames: int, clip: int, stride: int | None = None) -> ClipGrid:
        clip = int(clip)
        stride = clip if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= clip:
            raise SalientError(f"clip stride must be an integer in [1, {clip}] (the clip length), got {stride!r}")
        if n_frames < 1 or clip < 1:
            raise SalientError(f"a video needs at least one frame and clips of at least one frame "
                               f"(got {n_frames} frames, clips of {clip})")
        if n_frames <= clip:
            return cls(int(n_frames), clip, int(stride), (0,))
        starts = list(range(0, n_frames - clip, int(stride)))
        starts.append(n_frames - clip)
        return cls(int(n_frames), clip, int(stride), tuple(starts))

    @property
    def n(self) -> int:
        return len(self.starts)

    @property
    def span(self) -> int:
        """Frames of the video one clip covers (L, or N for a video shorter than a clip)."""
        return min(self.clip, self.n_frames)

    def tiles(self, pixels: int) -> TileGrid:
        """The grid as tile mode's: a clip is a tile of ``span`` rows of ``pixels`` (H·W) columns."""
        return TileGrid((self.n_frames, pixels), (self.span, pixels), 1.0 - self.stride / self.clip, self.starts, (0,))

    def frames_of(self, i: int) -> list[int]:
        """The video frames clip ``i`` holds, the last one repeated past the video's end."""
        s = self.starts[i]
        return [min(s + k, self.n_frames - 1) for k in range(self.clip)]


@dataclass
class VideoRun(PieceCounts):
    """What :func:`explain_clips` did for one video and method."""

    video_id: str
    method: str
    grid: ClipGrid
    target: int
    label: str
    scores: np.ndarray  # (clips, classes) float32, NaN for failed clips
    status: np.ndarray  # (clips,) uint8: 0 explained (now or by an earlier run), 1 skipped (top_clips), 2 failed
    base_score: float  # mean clip score of the target over the scored clips
    fps: float
    times: np.ndarray  # (clips,) float64: each clip's centre time in seconds
    n_forward: int = 0
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # decode, stitch, write CPU seconds; engine wall
    errors: list[str] = field(default_factory=list)

    @property
    def n_clips(self) -> int:
        return self.grid.n


@dataclass
class VideoSaliency(Saliency):
    """A Saliency over a whole video (``map``: (N, H, W) along its sampled frames), with the run's clip
    grid, per-clip scores and counts in ``video``."""

    video: VideoRun | None = None


def clip_id(video_id: str, start: int) -> str:
    return f"{video_id}@{start}"


def check_clip(model: Any, clip: int | None) -> int:
    """The clip length: the model's (a video net's ``frames``); another length is a one-line error."""
    if not getattr(model, "frames", 0):
        raise SalientError(f"model {model.name} is an image model: explain a video with a video net or with "
                           f"frames:{model.spec or model.name} (the image model over each frame)")
    if clip is not None and int(clip) != model.frames:
        raise SalientError(f"clip length {clip} differs from the model's {model.frames} frames: load the model "
                           f"with frames={clip}")
    return int(model.frames)


def read_ahead(items: Iterator[Any], depth: int = READ_AHEAD) -> Iterator[Any]:
    """``items`` produced on one background thread, at most ``depth`` ahead (decoding releases the GIL);
    an exception there is raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def run() -> None:
        try:
            for x in items:
                while not stop.is_set():
                    try:
                        q.put((x, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as e:  # noqa: BLE001 - re-raised on the consumer's thread
            q.put((end, e))

    t = threading.Thread(target=run, name="salient-decode", daemon=True)
    t.start()
    try:
        while True:
            x, err = q.get()
            if x is end:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
        t.join(timeout=5)


def explain_clips(engine: Engine, video: Video | str, method: str = "rise", target: int | str = "top1", seed: int = 0,
                  *, clip_stride: int | None = None, fps: float | None = None, frame_step: int | None = None,
                  sink: Callable | None = None, start_band: int = 0, chunk: int = CHUNK,
                  video_id: str | None = None, params: dict[str, Any] | None = None,
                  top_clips: int | None = None) -> tuple[VideoRun, Any]:
    """Explain ``video`` clip by clip with ``method`` (module docstring). Finished bands of the map along
    t ((frames, H·W) float32) go to ``sink`` (on a background thread; by default an in-memory
    :class:`~salient.jobs.tiles.ArraySink`, returned second) from band ``start_band`` on; only the clips
    those bands need are explained (a resume), every clip is scored; ``top_clips``: see the module docstring."""
    model = engine.model
    check_clip(model, None)
    vid = open_video(video, fps=fps, frame_step=frame_step)
    grid = ClipGrid.make(vid.n_frames, model.frames, clip_stride)
    checked, tgt = one_target(model, method, target, params, "a video is explained for one target")
    if top_clips is not None and (isinstance(top_clips, bool) or not isinstance(top_clips, (int, np.integer))
                                  or top_clips < 1):
        raise SalientError(f"top_clips must be an integer >= 1, got {top_clips!r}")
    video_id = video_id or vid.source
    h, w = model.input_size
    out = ArraySink((grid.n_frames, h * w)) if sink is None else sink
    writer = ThreadedSink(out) if sink is not None else None
    t0 = time.perf_counter()
    n_forward0, engine_s0 = engine.n_forward, engine.seconds
    drv = _ClipDriver(engine, vid, grid, video_id, Stitcher(grid.tiles(h * w), writer or out, chunk, start_band))
    try:
        tgt = drv.run(method, tgt, seed, checked, top_clips)
    finally:
        if writer is not None:
            writer.close()
    if not drv.stitch.done:
        raise ItemError(f"{video_id}: the map is incomplete ({drv.stitch.next_band} of {drv.stitch.n_bands} bands)")
    scores, status = drv.scores, drv.status
    base = explained_mean(scores, status, tgt)
    times = vid.times()
    centres = np.array([times[min(s + grid.span // 2, grid.n_frames - 1)] for s in grid.starts], np.float64)
    run = VideoRun(video_id, method, grid, int(tgt), model.label(int(tgt)), scores, status,
                   base, float(vid.fps), centres,
                   engine.n_forward - n_forward0, time.perf_counter() - t0, errors=drv.errors)
    run.timing = {"decode": drv.decode_seconds, "stitch": drv.stitch.seconds,
                  "write": writer.seconds if writer else 0.0, "engine": engine.seconds - engine_s0}
    return run, out


class _ClipDriver:
    """The passes of one :func:`explain_clips` call: clips decoded in order on one thread, the score
    pass, the explain pass, the stitcher fed."""

    def __init__(self, engine: Engine, video: Video, grid: ClipGrid, video_id: str, stitch: Stitcher):
        self.engine, self.model, self.video, self.grid = engine, engine.model, video, grid
        self.video_id, self.stitch = video_id, stitch
        self.status = np.zeros(grid.n, np.uint8)
        self.scores = np.full((grid.n, self.model.n_classes), np.nan, np.float32)
        self.first = stitch.next_row  # clips before it lie in finished bands (a resume)
        self.errors: list[str] = []
        self.decode_seconds = 0.0
        ex = engine.executor
        self.max_live = max(8, LIVE_CLIPS * ex.n_workers * getattr(ex, "depth", 2))

    def _frame(self, px: np.ndarray) -> torch.Tensor:
        # channel-first memory first: preprocess's permute then gives a contiguous tensor (as tile mode does)
        px = np.ascontiguousarray(px.transpose(2, 0, 1), dtype=np.float32).transpose(1, 2, 0) / np.float32(255)
        return self.model.preprocess(Image(px, self.video_id, self.video_id))

    def clips(self, indices: list[int]) -> Iterator[tuple[int, Item]]:
        """Clips ``indices`` (ascending) as Items, decoding the video once, forward, from the first one's
        start; a window of at most L preprocessed frames is held."""
        if not indices:
            return
        grid = self.grid
        frames = self.video.frames(grid.starts[indices[0]])
        held: dict[int, torch.Tensor] = {}
        nxt = grid.starts[indices[0]]
        for i in indices:
            t = time.thread_time()
            want = grid.frames_of(i)
            for k in [k for k in held if k < want[0]]:
                del held[k]
            while nxt <= want[-1]:
                try:
                    px = next(frames)
                except StopIteration:
                    raise ItemError(f"{self.video_id}: the video ended at frame {nxt} of {grid.n_frames}") from None
                if nxt >= want[0]:
                    held[nxt] = self._frame(px)
                nxt += 1
            x = torch.stack([held[k] for k in want], dim=1).contiguous()
            self.decode_seconds += time.thread_time() - t
            yield i, Item(clip_id(self.video_id, grid.starts[i]), x, None, {"clip": i})

    def failed(self, i: int, e: BaseException) -> None:
        self.status[i] = 2
        self.stitch.fail(i, 0)
        if len(self.errors) < 5:
            self.errors.append(f"clip {i} (frame {self.grid.starts[i]}): {' '.join(str(e).split())[:200]}")

    def tasks(self, indices: list[int], make: Callable[[Item], Any]) -> Iterator[Task]:
        for i, item in read_ahead(self.clips(indices)):
            yield Task(i, item, make(item))

    def score(self, indices: list[int]) -> None:
        for task, res in self.engine.run(self.tasks(indices, base_scores), max_live=self.max_live):
            if isinstance(res, BaseException):
                self.failed(task.key, res)
            else:
                self.scores[task.key] = res

    def run(self, method: str, target: int | tuple[str, int], seed: int, params: dict[str, Any],
            top_clips: int | None = None) -> int:
        """Both passes; returns the target class."""
        grid = self.grid
        every = list(range(grid.n))
        if not isinstance(target, int) or top_clips is not None:
            self.score(every)
            if not (self.status == 0).any():
                raise ItemError(f"{self.video_id}: no clip could be scored ({grid.n} clips)")
            if not isinstance(target, int):
                target = int(np.argmax(self.scores[self.status == 0].mean(axis=0)))
        elif self.first:  # a resume with a fixed target: score the clips before the resume point
            self.score(every[: self.first])
        scores = self.scores
        if top_clips is not None:  # the others are skipped (scored, not explained)
            ranked = [i for i in np.argsort(-scores[:, target], kind="stable") if self.status[i] == 0]
            for i in sorted(int(i) for i in ranked[top_clips:]):
                self.status[i] = 1
                self.stitch.skip(i, 0)

        def make(item: Item) -> Any:
            i = item.meta["clip"]
            known = None if np.isnan(scores[i, 0]) else scores[i]
            return scores_and_explain(item, self.model, method, target, seed, params, known)

        todo = [i for i in every[self.first :] if self.status[i] == 0]
        span, hw = grid.span, int(np.prod(self.model.input_size))
        for task, res in self.engine.run(self.tasks(todo, make), max_live=self.max_live):
            i = task.key
            if isinstance(res, BaseException):
                self.failed(i, res)
                continue
            scores[i], (s,) = res
            clip_map = s.map if s.map.ndim == 3 else np.broadcast_to(s.map, (grid.clip, *s.map.shape))
            self.stitch.add(i, 0, np.ascontiguousarray(clip_map[:span]).reshape(span, hw))
        return target


def video_saliency(run: VideoRun, frames: np.ndarray, method: str, seed: int, params: dict[str, Any]
                   ) -> VideoSaliency:
    """The VideoSaliency of a finished run with its in-memory map (N, H, W)."""
    m = get_method(method)
    info = {**params, "clip": run.grid.clip, "stride": run.grid.stride, "fps": run.fps}
    return VideoSaliency(map=frames, signed=m.signed, diverging=m.diverging, method=method, target=run.target,
                         label=run.label, base_score=run.base_score, n_forward=run.n_forward, seconds=run.seconds,
                         seed=seed, params=info, item_id=run.video_id, video=run)


def explain_video(model: Any, video: Video | str, method: str = "rise", target: int | str = "top1", seed: int = 0,
                  *, clip: int | None = None, clip_stride: int | None = None, fps: float | None = None,
                  frame_step: int | None = None, top_clips: int | None = None, engine: Engine | None = None,
                  **params: Any) -> VideoSaliency:
    """A video in memory: its whole map along t as a :class:`VideoSaliency` (for videos whose map fits in
    memory; the CLI and jobs stream it into the store instead). ``clip``: the clip length, which must be
    the model's ``frames`` (load the model with ``frames=`` to change it); ``clip_stride``: frames between
    clip starts (default the clip length); ``fps`` or ``frame_step``: the sampling; ``top_clips``: explain only
    the k best-scoring clips (module docstring); ``params``: the method's."""
    from ..engine.engine import engine_for
    from ..models import load_model

    eng = engine or engine_for(load_model(model))
    check_clip(eng.model, clip)
    run, sink = explain_clips(eng, video, method, target, seed, clip_stride=clip_stride, fps=fps,
                              frame_step=frame_step, params=params, top_clips=top_clips)
    h, w = eng.model.input_size
    return video_saliency(run, sink.data.reshape(-1, h, w), method, seed, tile_params(get_method(method), params))
