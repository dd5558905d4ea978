"""Known-answer video models and clips for tests (built here, never downloaded)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from toy_models import toy


def square_box(t: int, frames: int, size: int = 32, side: int = 8) -> tuple[int, int, int, int]:
    """Where the square of frame ``t`` lies, (y0, y1, x0, x1): it moves from the top-left corner to the
    bottom-right one over the clip, in steps of whole pixels."""
    span = size - side
    k = t * span // max(1, frames - 1)
    return k, k + side, k, k + side


class MovingSquare(nn.Module):
    """Class 0's logit is ``gain`` · the mean over frames of channel 0's mean inside that frame's square
    (:func:`square_box`); nothing else matters. Class 1's logit is 0. Input (N, C, T, H, W)."""

    def __init__(self, frames: int = 8, size: int = 32, side: int = 8, gain: float = 20.0):
        super().__init__()
        self.frames, self.size, self.side, self.gain = frames, size, side, gain
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        parts = []
        for t in range(x.shape[2]):
            y0, y1, x0, x1 = square_box(t, x.shape[2], self.size, self.side)
            parts.append(x[:, 0, t, y0:y1, x0:x1].mean(dim=(-2, -1)))
        z = self.gain * torch.stack(parts, dim=1).mean(dim=1)
        return torch.stack([z, torch.zeros_like(z)], dim=1) + 0 * self.dummy


def moving_square(frames: int = 8, size: int = 32, side: int = 8):
    """The :class:`MovingSquare` model as a salient video Model (identity preprocessing, logits)."""
    return toy(MovingSquare(frames, size, side), size=size, frames=frames)


def bright_clip(frames: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A preprocessed clip (3, T, H, W) of positive noise: every pixel raises the toy's logit where it counts."""
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.uniform(0.5, 1.0, size=(3, frames, size, size)).astype(np.float32))


def square_net() -> nn.Module:
    """:class:`MovingSquare` for model specs (``video_toys:square_net?frames=8&input_size=32&...``)."""
    return MovingSquare()


class EightFrames(MovingSquare):
    """:class:`MovingSquare` that refuses clips of another length than 8 frames."""

    def forward(self, x):
        if x.shape[2] != 8:
            raise ValueError(f"this net takes clips of 8 frames, got {x.shape[2]}")
        return super().forward(x)


def eight_frames() -> nn.Module:
    return EightFrames()


SQUARE_SPEC = "video_toys:square_net?frames=8&input_size=32&mean=0,0,0&std=1,1,1&score=logit"


# --- video files written in the tests (PyAV), lossless so frames decode back bit for bit -------------

LOSSLESS = {".mkv": "ffv1", ".avi": "ffv1", ".mp4": "libx264rgb", ".mov": "libx264rgb", ".m4v": "libx264rgb",
            ".webm": "libvpx-vp9"}


def _stream(container, codec: str, width: int, height: int, fps, time_base=None):
    import fractions

    rate = fractions.Fraction(fps).limit_denominator(100_000)
    s = container.add_stream(codec, rate=rate)
    s.width, s.height = width, height
    if codec == "ffv1":
        s.pix_fmt = "bgr0"
    elif codec == "libx264rgb":
        s.pix_fmt, s.options = "rgb24", {"qp": "0", "preset": "ultrafast"}
    elif codec == "libvpx-vp9":
        s.pix_fmt, s.options = "gbrp", {"lossless": "1", "deadline": "realtime", "cpu-used": "8"}
    else:
        s.pix_fmt = "yuv420p"
    if time_base is not None:
        s.codec_context.time_base = s.time_base = time_base
    return s


def write_video(path, frames, fps: float = 25, codec: str | None = None, pts=None, time_base=None,
                options: dict | None = None):
    """Write RGB uint8 frames ((N, H, W, 3) array or an iterator of (H, W, 3)) to ``path`` with PyAV.
    ``codec`` defaults by suffix to a lossless one (:data:`LOSSLESS`: FFV1, libx264rgb at qp 0, lossless
    VP9), so the frames decode back exactly. ``pts`` (ints in ``time_base``, default 1/1000) sets each
    frame's timestamp by hand (a variable frame rate). Returns the path."""
    import fractions
    from pathlib import Path

    import av

    path = Path(path)
    codec = codec or LOSSLESS[path.suffix.lower()]
    if pts is not None and time_base is None:
        time_base = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = None
        for i, a in enumerate(frames):
            if s is None:
                s = _stream(c, codec, a.shape[1], a.shape[0], fps, time_base)
                if options:
                    s.options = {**s.options, **options}
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
            if pts is not None:
                f.pts, f.time_base = int(pts[i]), time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_vfr_video(path, frames, times, codec: str | None = None):
    """A variable-frame-rate video: frame i shown at ``times[i]`` seconds (millisecond timestamps)."""
    pts = [int(round(t * 1000)) for t in times]
    mean = (len(pts) - 1) / max(times[-1] - times[0], 1e-3) if len(pts) > 1 else 25
    return write_video(path, frames, fps=mean, codec=codec, pts=pts)


def counter_frames(n: int, height: int = 16, width: int = 16, start: int = 0):
    """Frames (H, W, 3) uint8 whose pixels encode their number k: red = k % 256, green = k // 256,
    blue a fixed gradient (an iterator, so thousands of frames never sit in memory)."""
    blue = (np.arange(height * width, dtype=np.int64).reshape(height, width) % 256).astype(np.uint8)
    for k in range(start, start + n):
        f = np.empty((height, width, 3), dtype=np.uint8)
        f[..., 0], f[..., 1], f[..., 2] = k % 256, k // 256, blue
        yield f


def frame_number(frame) -> int:
    """The k a :func:`counter_frames` frame encodes (its median red and green, robust to a lossy codec)."""
    return int(np.median(frame[..., 0])) + 256 * int(np.median(frame[..., 1]))


def write_audio(path, seconds: float = 0.5, rate: int = 8000):
    """An audio-only file (a sine tone; the codec chosen by suffix: .mp4 AAC, .mkv / .wav PCM)."""
    from pathlib import Path

    import av

    path = Path(path)
    codec = {".mp4": "aac", ".m4v": "aac", ".mov": "aac"}.get(path.suffix.lower(), "pcm_s16le")
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = "mono"
        n = int(seconds * rate)
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)
        tone, fmt = (tone.astype(np.float32), "fltp") if codec == "aac" else ((tone * 32767).astype(np.int16), "s16")
        chunk = 1024
        for i in range(0, n, chunk):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, i:i + chunk]), format=fmt, layout="mono")
            f.sample_rate, f.pts = rate, i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
