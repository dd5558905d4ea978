"""Lazy video reader (PyAV): a :class:`Video` knows its sampled frames' count and times at open and
decodes frames one at a time, in order; nothing ever holds more than the frame being yielded.

Opening (:func:`open_video`) demuxes the video stream once without decoding: the packets' pts
(packets without pts, empty or marked discard are skipped), sorted, are the presentation times of
all frames (an hour is ~100k integers). The sampling rule then picks the frames:

- ``frame_step=k``: frames 0, k, 2k, ... of the presentation order;
- ``fps=f``: slots at t0 + j/f (t0 the first frame's time); a frame is kept when its time is at or
  after the next slot, and the slot then advances past it. Equivalently frame i is kept iff
  floor((t_i − t0)·f) > floor((t_{i−1} − t0)·f), the first frame always; computed exactly on the
  integer pts and the time base, so a variable frame rate is handled by the timestamps, never by
  assuming a constant rate. ``Video.fps`` is then min(f, the source's average rate);
- neither: every frame (``fps`` is the source rate).

``frames(start)`` seeks to the keyframe at or before the start frame and decodes forward, matching
decoded frames to the selected pts (AVI, whose packet pts number packets in decode order, is decoded
from the start and placed by the decoder's output order). Frames come back as RGB uint8 (H, W, 3) at
the stream's declared (storage) size (a mid-stream size change is rescaled to it; rotation metadata
and the sample aspect ratio are ignored). Decoding is single-threaded (deterministic).

Errors: bad arguments (``fps`` <= 0, ``frame_step`` < 1, both, not numbers) are a one-line
:class:`SalientError`; a bad file (missing, not a video, corrupt header, no video stream, zero
frames, no decoder for its codec, fewer packets than the container declares, or packets spanning
less time than the container declares for the stream: a truncated file) an :class:`ItemError`
(a SalientError too) raised by :func:`open_video` before any decoding. A decode failure, a selected
frame that never comes out, or decoding ending early raise ItemError
"<path>: truncated or corrupt video: decoded X of N frames" from ``frames()``. Not seen: damage the
decoder conceals (h264 error concealment shows a damaged picture without an error) and data lost
inside a Matroska file whose demuxer resynchronises (a gap in time, like a variable frame rate).
The first video stream that is not cover art is read; a seek that lands past its target falls back
to decoding from the first frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ItemError, SalientError, short_repr

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
# the demuxed frames' span may fall short of the declared duration by 3 frame durations + 2% of it, no more
DURATION_SLACK_FRAMES, DURATION_SLACK_SHARE = 3, 0.02


def is_video_path(path: str | os.PathLike) -> bool:
    """True when ``path`` ends in one of :data:`VIDEO_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise SalientError("reading video needs PyAV: pip install av") from None
    return av


def _why(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e)  # FFmpeg errors: the reason without the quoted file name
    msg = " ".join(str(msg).split())[:160]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def check_sampling(fps: Any, frame_step: Any) -> tuple[Fraction | None, int | None]:
    """The sampling arguments checked: ``fps`` a positive finite number as a Fraction, ``frame_step`` an int >= 1."""
    if fps is not None and frame_step is not None:
        raise SalientError(f"give fps or frame_step, not both (fps={short_repr(fps)}, "
                           f"frame_step={short_repr(frame_step)})")
    f = None
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating, Fraction)) \
                or not math.isfinite(float(fps)) or float(fps) <= 0:
            raise SalientError(f"fps must be a positive number of frames per second, got {short_repr(fps)}")
        f = Fraction(fps).limit_denominator(1_000_000) if isinstance(fps, (float, np.floating)) else Fraction(fps)
    if frame_step is not None:
        if isinstance(frame_step, bool) or not isinstance(frame_step, (int, np.integer)) or frame_step < 1:
            raise SalientError(f"frame_step must be an integer >= 1, got {short_repr(frame_step)}")
        frame_step = int(frame_step)
    return f, frame_step


def select_frames(pts: np.ndarray, time_base: Fraction, fps: Fraction | None = None,
                  frame_step: int | None = None) -> np.ndarray:
    """Indices into the sorted ``pts`` of the sampled frames (the rule of the module docstring)."""
    n = len(pts)
    if frame_step is not None:
        return np.arange(0, n, frame_step, dtype=np.int64)
    if fps is None or n == 0:
        return np.arange(n, dtype=np.int64)
    num, den = time_base.numerator * fps.numerator, time_base.denominator * fps.denominator
    p0 = int(pts[0])
    slots = [(int(p) - p0) * num // den for p in pts]  # floor((t_i - t0) * f), exact (Python ints)
    keep = [0] + [i for i in range(1, n) if slots[i] > slots[i - 1]]
    return np.asarray(keep, dtype=np.int64)


_UNKNOWN = -1  # the index _decode gives a frame it cannot place


class Video:
    """A video file opened lazily (see the module docstring). Attributes: ``path``, ``source`` (the path
    as given), ``name``, ``width``, ``height``, ``fps`` (rate of the sampled frames), ``source_fps``,
    ``n_frames`` (sampled frames, >= 1), ``codec``. ``frames(start)`` yields sampled frames ``start``,
    ``start + 1``, ... as RGB uint8 (H, W, 3); ``times()`` their presentation times in seconds."""

    def __init__(self, path: str, source: str, *, width: int, height: int, codec: str, stream_index: int,
                 time_base: Fraction, all_pts: np.ndarray, selected: np.ndarray, fps: float, source_fps: float,
                 by_order: bool = False):
        self.path, self.source, self.name = path, source, Path(path).stem
        self.width, self.height, self.codec = int(width), int(height), codec
        self.fps, self.source_fps = float(fps), float(source_fps)
        self._stream_index, self._time_base = stream_index, time_base
        self._all_pts = all_pts  # sorted pts of every frame (presentation order)
        self._selected = selected  # indices into _all_pts of the sampled frames
        self._by_order = by_order  # frames placed by decoder output order, not pts (AVI); no seeking
        self._open: set[Any] = set()  # containers of live frames() iterators

    @property
    def n_frames(self) -> int:
        return int(len(self._selected))

    @property
    def seekable(self) -> bool:
        """Whether ``frames(start)`` seeks (False for AVI: it decodes from the first frame)."""
        return not self._by_order

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_frames, height, width)."""
        return self.n_frames, self.height, self.width

    def times(self) -> np.ndarray:
        """(n_frames,) float64: presentation time in seconds (pts · time base) of each sampled frame."""
        p = self._all_pts[self._selected].astype(np.float64)
        return p * self._time_base.numerator / self._time_base.denominator

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return (f"Video({self.path!r}, {self.width}x{self.height}, {self.n_frames} frames at {self.fps:g} fps, "
                f"{self.codec})")

    def _truncated(self, decoded: int, why: str = "") -> ItemError:
        return ItemError(f"{self.path}: truncated or corrupt video: decoded {decoded} of {self.n_frames} frames"
                         + (f" ({why})" if why else ""))

    def frames(self, start: int = 0) -> Iterator[np.ndarray]:
        """Sampled frames ``start``, ``start + 1``, ... as RGB uint8 (H, W, 3), decoded lazily in order."""
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= self.n_frames:
            raise SalientError(f"{self.path}: start frame {short_repr(start)} outside 0 .. {self.n_frames}")
        return self._frames(int(start))

    def _frames(self, start: int) -> Iterator[np.ndarray]:
        if start == self.n_frames:
            return
        out = start  # next sampled frame to yield
        first = int(self._selected[start])  # its index among all frames
        for seek in ((True, False) if start > 0 and not self._by_order else (False,)):
            frames = self._decode(first if seek else None)
            try:
                for idx, frame in frames:
                    if seek and out == start and (idx == _UNKNOWN or idx > first):
                        break  # the seek landed past the start frame: decode from the beginning instead
                    if idx < first:
                        continue
                    want = int(self._selected[out])
                    if idx < want:
                        continue
                    if idx > want:
                        raise self._truncated(out, f"frame at {self.times()[out]:.3f} s did not decode")
                    rgb = frame.to_ndarray(width=self.width, height=self.height, format="rgb24")
                    yield np.array(rgb, copy=True, order="C")  # own memory, not a view of the decoder's plane
                    out += 1
                    if out == self.n_frames:
                        return
                else:
                    raise self._truncated(out)
            finally:
                frames.close()

    def _decode(self, seek_to: int | None) -> Iterator[tuple[int, Any]]:
        """(index among all frames, av.VideoFrame) of the decoded frames, from the keyframe at or before
        frame ``seek_to`` (or from the start)."""
        av = _av()
        index = {int(p): i for i, p in enumerate(self._all_pts)}
        try:
            container = av.open(self.path)
        except Exception as e:  # noqa: BLE001 - the file changed or vanished since open_video
            raise ItemError(f"{self.path}: cannot reopen the video ({_why(e)})") from None
        self._open.add(container)
        try:
            stream = next(st for st in container.streams if st.index == self._stream_index)
            if seek_to is not None:
                try:
                    container.seek(int(self._all_pts[seek_to]), stream=stream, backward=True, any_frame=False)
                except av.error.FFmpegError:
                    pass  # no index to seek with: the caller decodes from the start
            decoded = container.decode(stream)
            prev = -1
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    return
                except av.error.FFmpegError as e:
                    raise ItemError(f"{self.path}: truncated or corrupt video: decode error after frame {prev + 1} "
                                    f"of {len(self._all_pts)} ({_why(e)})") from None
                if frame.pts is None and prev < 0 and seek_to is not None:
                    yield _UNKNOWN, None  # no timestamp to place the first frame after a seek by
                    return
                idx = prev + 1 if frame.pts is None or self._by_order else index.get(int(frame.pts))
                if idx is None:
                    raise ItemError(f"{self.path}: corrupt video: a decoded frame has pts {frame.pts}, which no "
                                    "packet of the stream carries")
                if idx <= prev:
                    continue  # a repeated timestamp
                prev = idx
                yield idx, frame
        finally:
            self._open.discard(container)
            container.close()

    def close(self) -> None:
        """Close the files of frames() iterators still open (an exhausted iterator closes its own)."""
        for c in list(self._open):
            c.close()
        self._open.clear()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _rate(stream: Any) -> float | None:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r is not None and r > 0:
            return float(r)
    return None


def _declared_span(container: Any, stream: Any) -> float | None:
    """The video stream's declared duration in seconds: its own, or the container's when it is the only stream."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if len(container.streams) == 1 and container.duration:
        return container.duration / 1e6
    return None


def open_video(path: str | os.PathLike | Video, fps: float | None = None, frame_step: int | None = None) -> Video:
    """A :class:`Video` for ``path`` sampled by ``fps`` or ``frame_step`` (module docstring); a Video is
    returned as is. Bad arguments: SalientError; a bad file: ItemError, both one line, before decoding."""
    if isinstance(path, Video):
        return path
    f, k = check_sampling(fps, frame_step)
    if not isinstance(path, (str, os.PathLike)):
        raise SalientError(f"expected a video path, got {short_repr(path)}")
    source = str(path)
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ItemError(f"{source}: no such file")
    if os.path.isdir(p):
        raise ItemError(f"{source}: a folder, not a video file")
    av = _av()
    try:
        container = av.open(p)
    except Exception as e:  # noqa: BLE001 - InvalidDataError, a missing moov atom, permissions
        raise ItemError(f"{source}: not a readable video ({_why(e)})") from None
    try:
        cover = av.stream.Disposition.attached_pic  # cover art is a one-picture "video" stream
        videos = [s for s in container.streams.video if not s.disposition & cover]
        if not videos:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise ItemError(f"{source}: no video stream (streams: {kinds}"
                            + (", cover art only" if container.streams.video else "") + ")")
        stream = videos[0]
        stream_index = int(stream.index)
        ctx = stream.codec_context
        codec = getattr(ctx, "name", None) if ctx is not None else None
        if not codec or codec == "none":
            tag = getattr(stream, "codec_tag", "") or "unknown"
            raise ItemError(f"{source}: unsupported video codec ({tag}): no decoder for it in this FFmpeg build")
        try:
            av.codec.Codec(codec, "r")
        except Exception:  # noqa: BLE001 - UnknownCodecError
            raise ItemError(f"{source}: unsupported video codec {codec!r}: no decoder for it") from None
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width < 1 or height < 1:
            raise ItemError(f"{source}: video stream without a frame size ({width}x{height})")
        tb = stream.time_base
        if tb is None or tb <= 0:
            raise ItemError(f"{source}: video stream without a time base")
        tb = Fraction(tb.numerator, tb.denominator)
        pts, packets = [], 0
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue  # the demuxer's end-of-stream marker
                packets += 1
                if pkt.pts is not None and not pkt.is_discard:
                    pts.append(int(pkt.pts))
        except Exception as e:  # noqa: BLE001 - a damaged packet index or payload
            raise ItemError(f"{source}: truncated or corrupt video: demuxing failed after {len(pts)} packets "
                            f"({_why(e)})") from None
        all_pts = np.unique(np.asarray(pts, dtype=np.int64))
        if len(all_pts) == 0:
            raise ItemError(f"{source}: the video stream has zero frames")
        by_order = "avi" in container.format.name.split(",")  # AVI pts count packets in decode order
        if stream.frames and stream.frames > packets:
            raise ItemError(f"{source}: truncated or corrupt video: {packets} of the {stream.frames} frames "
                            "the container declares are present")
        rate = _rate(stream)
        step = (1.0 / rate) if rate else 0.0
        declared = _declared_span(container, stream)
        span = float((int(all_pts[-1]) - int(all_pts[0])) * tb) + step
        if declared is not None and span < declared * (1 - DURATION_SLACK_SHARE) - DURATION_SLACK_FRAMES * step:
            raise ItemError(f"{source}: truncated or corrupt video: frames span {span:.2f} s of the {declared:.2f} s "
                            "the container declares")
    finally:
        container.close()
    if rate is None:
        rate = (len(all_pts) - 1) / float((int(all_pts[-1]) - int(all_pts[0])) * tb) if len(all_pts) > 1 else 1.0
    selected = select_frames(all_pts, tb, f, k)
    sampled = min(float(f), rate) if f is not None else rate / (k or 1)
    return Video(p, source, width=width, height=height, codec=codec, stream_index=stream_index, time_base=tb,
                 all_pts=all_pts, selected=selected, fps=sampled, source_fps=rate, by_order=by_order)
