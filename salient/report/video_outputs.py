"""Video outputs of a map along t, in bounded memory: an MP4 of the map over the frames, a contact
sheet PNG and a PNG plot of the target's score over time.

The map ``maps`` is (N, H, W) float32, a numpy or zarr array with one row per sampled frame of the
video (``Video.n_frames``); it is read in slices of :data:`MAP_SLICE` frames, the video decoded one
frame at a time, so memory holds a slice and a frame, never the video.

Display size: the map's (H, W) scaled up so that its short side is at least :data:`MIN_SIDE` (never
down), rounded to even numbers (yuv420p). Each frame is resized (bilinear) to that size and blended
with its map exactly as :func:`salient.report.overlay.overlay` does, with ONE colour scale for the
whole video, found in a first pass over the map: a sequential map is min-max normalised over all its
finite values; a diverging map's full brightness is the 99.5th percentile of |d| over all finite
values, from a 65,536-bin histogram of |d| on [0, max |d|] (within max |d| / 65,536 of the exact
percentile: the two order statistics it interpolates are taken as their bins' centres). Missing
values (NaN: frames not explained) show the plain frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from ..errors import SalientError
from ..io.video import Video, open_video
from .colormaps import DEFAULT_CMAP, SIGNED_PERCENTILE
from .overlay import overlay, save_png

MAP_SLICE = 64  # map frames read at a time
MIN_SIDE = 224  # the display's short side is at least this many pixels
SHEET_FRAMES = 16  # a contact sheet shows at most this many frames by default
HIST_BINS = 65536
CAPTION_HEIGHT = 18
GAP = 4


def map_slices(maps: Any, size: int = MAP_SLICE) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 rows start .. start + size) of an (N, H, W) numpy or zarr array."""
    for i in range(0, int(maps.shape[0]), size):
        yield i, np.asarray(maps[i:i + size], dtype=np.float32)


def map_frames(maps: Any) -> Iterator[np.ndarray]:
    """The rows of ``maps`` one at a time, read in slices."""
    for _, block in map_slices(maps):
        yield from block


def display_size(h: int, w: int, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """(H, W) of the display: the map's size scaled up to a short side >= ``min_side``, even."""
    f = max(1.0, min_side / min(h, w))
    return 2 * math.ceil(h * f / 2), 2 * math.ceil(w * f / 2)


def video_scale(maps: Any, diverging: bool) -> tuple[float | None, tuple[float, float] | None]:
    """One colour scale for all frames (module docstring): (scale, None) for a diverging map,
    (None, (lo, hi)) for a sequential one."""
    lo, hi, amax, n = math.inf, -math.inf, 0.0, 0
    for _, block in map_slices(maps):
        v = block[np.isfinite(block)]
        if v.size:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
            amax, n = max(amax, float(np.abs(v).max())), n + v.size
    if n == 0:
        return (0.0, None) if diverging else (None, (0.0, 0.0))
    if not diverging:
        return None, (lo, hi)
    if amax == 0:
        return 0.0, None
    counts = np.zeros(HIST_BINS, dtype=np.int64)
    for _, block in map_slices(maps):
        a = np.abs(block[np.isfinite(block)]).astype(np.float64)
        counts += np.bincount(np.minimum((a / amax * HIST_BINS).astype(np.int64), HIST_BINS - 1),
                              minlength=HIST_BINS)
    rank = SIGNED_PERCENTILE / 100 * (n - 1)  # np.percentile's linear rank, between sorted[r0] and sorted[r0 + 1]
    r0 = math.floor(rank)
    lo_bin, hi_bin = np.searchsorted(np.cumsum(counts), [r0, min(r0 + 1, n - 1)], side="right")
    centre = (np.array([lo_bin, hi_bin], dtype=np.float64) + 0.5) * amax / HIST_BINS  # values as their bins' centres
    s = float(centre[0] + (rank - r0) * (centre[1] - centre[0]))
    return (s if s > 0 else amax), None


def _check(video: Video | str | os.PathLike, maps: Any) -> Video:
    video = open_video(video)
    if len(getattr(maps, "shape", ())) != 3:
        raise SalientError(f"a video map is (frames, height, width), got shape {getattr(maps, 'shape', None)}")
    if int(maps.shape[0]) != video.n_frames:
        raise SalientError(f"{video.path}: the map has {maps.shape[0]} frames, the video {video.n_frames} "
                           "(open the video with the sampling the map was computed with)")
    return video


class _Painter:
    """Frames and map rows -> uint8 overlays at the display size, on the video's one colour scale."""

    def __init__(self, maps: Any, signed: bool, diverging: bool | None, alpha: float, cmap: str):
        if diverging is None:
            diverging = bool(signed)
        if diverging and not signed:
            raise ValueError("a diverging map is signed")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.diverging, self.alpha, self.cmap = bool(diverging), float(alpha), cmap
        self.size = display_size(int(maps.shape[1]), int(maps.shape[2]))
        self.scale, self.bounds = video_scale(maps, self.diverging)

    def plain(self, frame: np.ndarray) -> np.ndarray:
        h, w = self.size
        if frame.shape[:2] == (h, w):
            return frame
        return np.asarray(PILImage.fromarray(frame).resize((w, h), PILImage.Resampling.BILINEAR))

    def __call__(self, frame: np.ndarray, m: np.ndarray) -> np.ndarray:
        plain = self.plain(frame)
        missing = ~np.isfinite(m)
        if missing.all():
            return plain
        fill = 0.0 if self.diverging else self.bounds[0]
        out = overlay(plain, np.where(missing, fill, m), self.alpha, diverging=self.diverging, scale=self.scale,
                      cmap=self.cmap, bounds=self.bounds)
        if missing.any():
            h, w = self.size
            gone = np.asarray(PILImage.fromarray(missing).resize((w, h), PILImage.Resampling.NEAREST))
            out[gone] = plain[gone]
        return out


def _encoder(container: Any, fps: float, height: int, width: int) -> Any:
    import av

    rate = Fraction(fps).limit_denominator(1000)
    for codec in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(codec, "w")
        except Exception:  # noqa: BLE001 - this FFmpeg build has no such encoder
            continue
        s = container.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "veryfast"}
        else:
            s.bit_rate = max(400_000, int(width * height * float(rate) * 0.3))
        return s
    raise SalientError("this FFmpeg build has neither the libx264 nor the mpeg4 encoder: cannot write MP4")


def write_map_video(path: str | os.PathLike, video: Video | str | os.PathLike, maps: Any, *, signed: bool,
                    diverging: bool | None = None, alpha: float = 0.5, fps: float | None = None,
                    cmap: str = DEFAULT_CMAP) -> Path:
    """An MP4 (h264 through libx264 if present, else MPEG-4 part 2; yuv420p) of the map over the video,
    one output frame per map row, at ``fps`` (default the video's sampled rate). Written to a temporary
    file renamed to ``path`` at the end; returns ``path``."""
    import av

    video = _check(video, maps)
    paint = _Painter(maps, signed, diverging, alpha, cmap)
    fps = video.fps if fps is None else float(fps)
    if not fps > 0:
        raise SalientError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part.mp4")
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = _encoder(out, fps, *paint.size)
            done = 0
            for frame, m in zip(video.frames(), map_frames(maps), strict=False):
                vf = av.VideoFrame.from_ndarray(paint(frame, m), format="rgb24")
                for pkt in stream.encode(vf):
                    out.mux(pkt)
                done += 1
            for pkt in stream.encode():
                out.mux(pkt)
        if done != video.n_frames:
            raise SalientError(f"{video.path}: wrote {done} of {video.n_frames} frames")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sheet_indices(n: int, every: int | None = None, most: int = SHEET_FRAMES) -> list[int]:
    """Frames 0, k, 2k, ... of ``n``; k = ``every`` or the least k showing at most ``most`` frames."""
    if every is None:
        every = max(1, math.ceil(n / most))
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise SalientError(f"every must be an integer >= 1, got {every!r}")
    return list(range(0, n, int(every)))


def pick_frames(video: Video, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(i, frame i) for ascending sampled-frame ``indices``: one seek each when the video seeks (an hour
    of video is not decoded for 16 tiles), else one forward pass."""
    if not video.seekable:
        want = iter(indices)
        nxt = next(want, None)
        frames = video.frames()
        try:
            for i, frame in enumerate(frames):
                if nxt is None:
                    return
                if i == nxt:
                    yield i, frame
                    nxt = next(want, None)
        finally:
            frames.close()
        return
    for i in indices:
        frames = video.frames(i)
        try:
            yield i, next(frames)
        finally:
            frames.close()


def contact_sheet(path: str | os.PathLike, video: Video | str | os.PathLike, maps: Any, *, signed: bool,
                  diverging: bool | None = None, every: int | None = None, cols: int = 4, alpha: float = 0.5,
                  cmap: str = DEFAULT_CMAP) -> Path:
    """A PNG grid of every k-th frame with its overlay (:func:`sheet_indices`), ``cols`` tiles a row,
    "frame i · t s" under each tile; tiles at the display size, :data:`GAP` white pixels between them
    (frames found by :func:`pick_frames`)."""
    video = _check(video, maps)
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1:
        raise SalientError(f"cols must be an integer >= 1, got {cols!r}")
    paint = _Painter(maps, signed, diverging, alpha, cmap)
    idx = sheet_indices(video.n_frames, every)
    times = video.times()
    th, tw = paint.size
    ncol = min(int(cols), len(idx))
    nrow = math.ceil(len(idx) / ncol)
    sheet = PILImage.new("RGB", (ncol * tw + (ncol - 1) * GAP, nrow * (th + CAPTION_HEIGHT) + (nrow - 1) * GAP),
                         "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for j, (i, frame) in enumerate(pick_frames(video, idx)):
        x, y = (j % ncol) * (tw + GAP), (j // ncol) * (th + CAPTION_HEIGHT + GAP)
        sheet.paste(PILImage.fromarray(paint(frame, np.asarray(maps[i], dtype=np.float32))), (x, y))
        draw.text((x + 3, y + th + 2), f"frame {i} · {times[i]:.2f} s", fill="black", font=font)
    return save_png(path, np.asarray(sheet))


def score_plot(path: str | os.PathLike, times: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray,
               label: str) -> Path:
    """A PNG line plot of the target's score per clip (y) over the clip's centre time in seconds (x);
    NaN scores (failed clips) leave gaps. matplotlib's Agg canvas on its own Figure (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = np.asarray(times, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if t.shape != s.shape or t.size == 0:
        raise ValueError(f"score_plot needs as many times as scores (>= 1), got {t.size} and {s.size}")
    fig = Figure(figsize=(8, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(t, s, marker="o", markersize=3, linewidth=1.2)
    ax.set_xlabel("clip centre time (s)")
    ax.set_ylabel("score")
    ax.set_title(f"score of {label} per clip")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
