"""Long videos clip by clip (issue 15, parts 5 and 6): the clip grid, blending along t, the store's map
along t with resume by band, the CLI, the ``videos`` job source, bounded memory, local vs Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from job_toys import kill_when_done
from video_toys import SQUARE_SPEC, moving_square, write_video

import salient
from salient.errors import SalientError
from salient.item import Item
from salient.jobs.tiles import ArraySink, Stitcher
from salient.jobs.video import ClipGrid, explain_clips, explain_video
from salient.store import Store, read_map, read_results

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
OCC = {"window": (4, 8, 8), "stride": (4, 8, 8)}  # 2 x 16 windows of a clip of 8 frames at 32 x 32


def _frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A lossless 28-frame video at the toy's input size (so no resize touches its pixels)."""
    path = tmp_path_factory.mktemp("videos") / "clip.mkv"
    write_video(path, _frames(28), fps=10)
    return path


@pytest.fixture(scope="module")
def engine():
    with salient.Engine(moving_square(frames=8), batch_size=4) as eng:
        yield eng


# -- geometry and blending
def test_clip_grid_covers_every_frame_and_pads_a_short_video():
    g = ClipGrid.make(28, 8)
    assert g.starts == (0, 8, 16, 20) and g.span == 8
    assert ClipGrid.make(28, 8, 3).starts == (0, 3, 6, 9, 12, 15, 18, 20)
    short = ClipGrid.make(5, 8)
    assert short.starts == (0,) and short.span == 5 and short.frames_of(0) == [0, 1, 2, 3, 4, 4, 4, 4]
    for bad in (0, 9, 2.5, True):
        with pytest.raises(SalientError, match="clip stride"):
            ClipGrid.make(28, 8, bad)


@pytest.mark.parametrize("n,clip,stride", [(29, 8, 3), (28, 8, 8), (40, 16, 5), (5, 8, 8)])
def test_constant_clip_maps_blend_to_a_constant_video_map_ends_included(n, clip, stride):
    grid = ClipGrid.make(n, clip, stride)
    sink = ArraySink((n, 12))
    st = Stitcher(grid.tiles(12), sink, band=4)
    for i in np.random.default_rng(0).permutation(grid.n):  # any completion order
        st.add(int(i), 0, np.full((grid.span, 12), 2.5, np.float32))
    assert st.done
    np.testing.assert_allclose(sink.data, 2.5, rtol=1e-6)


def test_non_overlapping_clips_give_each_clip_s_map_bit_for_bit(video, engine):
    s = explain_video(engine.model, video, "occlusion", target=0, engine=engine, **OCC)
    assert s.map.shape == (28, 32, 32) and s.video.grid.starts == (0, 8, 16, 20)
    frames = _frames(28)
    for i, (start, n) in enumerate(((0, 8), (8, 8), (16, 4))):  # the frames only that clip covers (20.. overlap)
        clip = engine.model.preprocess_clip(frames[start : start + 8].astype(np.float32) / np.float32(255))
        one = engine.explain(Item(f"c{i}", clip), "occlusion", target=0, **OCC)
        assert np.array_equal(s.map[start : start + n], one.map[:n])
    assert s.video.scores.shape == (4, 2) and s.video.n_clips == 4 and s.video.failed == 0
    assert np.isfinite(s.map).all()


def test_top1_is_the_class_with_the_highest_mean_clip_score(video, engine):
    run, sink = explain_clips(engine, video, "occlusion", "top1", params=OCC)
    assert run.target == int(np.argmax(run.scores.mean(axis=0)))
    assert run.times.shape == (run.n_clips,) and np.all(np.diff(run.times) > 0)


def test_frame_sampling_reaches_the_clips(video, engine):
    s = explain_video(engine.model, video, "occlusion", target=0, engine=engine, frame_step=2, **OCC)
    assert s.map.shape == (14, 32, 32) and s.video.grid.starts == (0, 6)


# -- the store: resume by band
def _store_run(engine, out: Path, video: Path, fail_after: int | None = None):
    from salient.jobs.video_job import VideoOptions, explain_video_into_store

    with Store(out, "square", {"command": "test"}) as store:
        if fail_after is not None:  # a crash after some bands: the writer dies mid-video
            real = store.frames

            def frames(*a, **k):
                w = real(*a, **k)
                write, count = w.write_band, [0]

                def limited(rows):
                    if count[0] >= fail_after:
                        raise KeyboardInterrupt("killed")
                    count[0] += 1
                    write(rows)
                w.write_band = limited
                return w
            store.frames = frames
        return explain_video_into_store(engine, store, str(video), "clip", "rise", "top1", 3,
                                        {"n_masks": 64, "chunk": 32}, VideoOptions(stride=6), position=0)


def test_an_interrupted_video_resumes_to_the_undisturbed_map(tmp_path, video, engine):
    _store_run(engine, tmp_path / "full", video)
    with pytest.raises(KeyboardInterrupt):
        _store_run(engine, tmp_path / "cut", video, fail_after=0)
    arr = zarr.open_group(tmp_path / "cut/saliency.zarr", mode="r")["items/clip/rise"]
    assert arr.attrs["salient_frames"]["bands"] == 0
    n0 = engine.n_forward
    _store_run(engine, tmp_path / "cut", video)
    a = zarr.open_group(tmp_path / "full/saliency.zarr", mode="r")
    b = zarr.open_group(tmp_path / "cut/saliency.zarr", mode="r")
    assert np.array_equal(a["items/clip/rise"][:], b["items/clip/rise"][:])
    assert np.array_equal(a["items/clip/score"][:], b["items/clip/score"][:])
    assert engine.n_forward > n0
    rows = read_results(tmp_path / "full")
    assert len(rows) == 1 and rows["clips"].iloc[0] == 5 and rows["failed_clips"].iloc[0] == 0
    assert read_map(tmp_path / "full", rows.iloc[0]).shape == (28, 32, 32)


def test_resume_keeps_verified_bands_and_redoes_a_damaged_one(tmp_path, video, engine):
    from salient.store.frames import FramesWriter

    root = zarr.open_group(tmp_path / "s.zarr", mode="a")
    w = FramesWriter(root, "items/v/m", (70, 4, 4), fingerprint="x", chunk=32)
    w.write_band(np.ones((32, 4, 4), np.float32))
    w.write_band(np.ones((32, 16), np.float32))
    assert FramesWriter(root, "items/v/m", (70, 4, 4), fingerprint="x", chunk=32).done == 2
    assert FramesWriter(root, "items/v/m", (70, 4, 4), fingerprint="y", chunk=32).done == 0  # other settings
    w = FramesWriter(root, "items/v/m", (70, 4, 4), fingerprint="x", chunk=32)
    w.write_band(np.ones((32, 4, 4), np.float32))
    w.write_band(np.ones((32, 4, 4), np.float32))
    chunk = tmp_path / "s.zarr/items/v/m/c/0/1/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")  # CRC32C fails
    assert FramesWriter(root, "items/v/m", (70, 4, 4), fingerprint="x", chunk=32).done == 1
    with pytest.raises(SalientError, match="band 0 must be"):
        FramesWriter(root, "items/v/n", (70, 4, 4), chunk=32).write_band(np.ones((31, 4, 4)))


@pytest.mark.slow
def test_sigkilled_video_job_resumes_to_the_undisturbed_result(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    write_video(d / "long.mkv", _frames(160, seed=4), fps=10)

    def job(name: str) -> Path:
        p = tmp_path / f"{name}.yaml"
        p.write_text(json.dumps({"model": {"name": SQUARE_SPEC}, "source": {"videos": str(d), "stride": 8},
                                 "methods": [{"name": "rise", "n_masks": 512, "chunk": 64}],
                                 "targets": "0", "out": str(tmp_path / name),
                                 "executor": {"kind": "local", "workers": 1, "batch_size": 4}}))
        return p

    code = "import sys; from salient.jobs import run_job; run_job(sys.argv[1], progress=False, echo=None)"
    subprocess.run([sys.executable, "-c", code, str(job("full"))], check=True, env=ENV, timeout=300)
    proc = subprocess.Popen([sys.executable, "-c", code, str(job("killed"))], env=ENV)
    meta = tmp_path / "killed/saliency.zarr/items/long.mkv/rise/zarr.json"
    done = kill_when_done(proc, meta, lambda a: a["salient_frames"]["bands"], 2)
    assert 2 <= done < 5, f"killed after {done} of 5 bands"
    subprocess.run([sys.executable, "-c", code, str(job("killed"))], check=True, env=ENV, timeout=300)
    a = zarr.open_group(tmp_path / "full/saliency.zarr", mode="r")
    b = zarr.open_group(tmp_path / "killed/saliency.zarr", mode="r")
    for name in ("rise", "score"):
        assert np.array_equal(a[f"items/long.mkv/{name}"][:], b[f"items/long.mkv/{name}"][:])
    assert (read_results(tmp_path / "killed")["status"] == "ok").all()


# -- CLI and job source
def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "salient", *argv], capture_output=True, text=True, env=ENV,
                          timeout=300)


def test_cli_explains_a_video_into_the_store_and_outputs(tmp_path, video):
    r = _cli("explain", str(video), "--method", "occlusion", "--model", SQUARE_SPEC, "--set", "window=4,8,8",
             "--set", "stride=4,8,8", "--clip-stride", "4", "--target", "0", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "clips of 8" in r.stdout
    rows = read_results(tmp_path / "o")
    assert rows["clips"].tolist() == [6] and rows["status"].tolist() == ["ok"]
    assert read_map(tmp_path / "o", rows.iloc[0]).shape == (28, 32, 32)
    made = sorted(p.name for p in (tmp_path / "o/overlays").iterdir())
    assert made == ["clip_occlusion.mp4", "clip_occlusion_score.png", "clip_occlusion_sheet.png"]
    from salient.report.html import build_report
    from salient.report.render import render_row
    from salient.report.store_view import open_store

    html = build_report(tmp_path / "o").read_text()
    assert "clip.mkv" in html and ">score over time</a>" in html and ">frames</a>" in html
    assert list((tmp_path / "o").rglob("*_occlusion_0_score.png"))
    view = open_store(tmp_path / "o")
    row = view.row(0)
    assert view.frames(row) == 28 and view.map_of(row, max_frames=10).shape == (10, 32, 32)  # strided: 0, 3, ..
    np.testing.assert_array_equal(view.map_of(row, max_frames=10), view.map_of(row)[::3])
    assert render_row(view, row, t=27, photo=False).frame == 27


@pytest.mark.parametrize("argv,message", [
    (["--fps", "4"], "--fps applies to videos"),
    (["--clip", "4"], "--clip applies to videos"),
])
def test_cli_refuses_video_options_on_images(tmp_path, argv, message):
    img = tmp_path / "a.png"
    from PIL import Image as PILImage

    PILImage.fromarray(_frames(1)[0]).save(img)
    r = _cli("explain", str(img), "--method", "occlusion", "--out", str(tmp_path / "o"), *argv)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_video_bad_inputs_are_one_line_errors(tmp_path, video):
    img = tmp_path / "a.png"
    from PIL import Image as PILImage

    PILImage.fromarray(_frames(1)[0]).save(img)
    cases = [
        ([str(video), str(img), "--model", SQUARE_SPEC], "images or videos, not both"),
        ([str(video), "--model", SQUARE_SPEC, "--fps", "2", "--frame-step", "2"], "not both"),
        ([str(video), "--model", SQUARE_SPEC, "--clip-stride", "9"], "clip stride"),
        ([str(video), "--model", SQUARE_SPEC, "--whole"], "videos are explained clip by clip"),
        ([str(video), "--model", "efficientnet-lite0"], "is an image model"),
        ([str(video), "--model", SQUARE_SPEC, "--target", "top2"], "one target"),
    ]
    for argv, message in cases:
        r = _cli("explain", *argv, "--method", "occlusion", "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and message in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_videos_job_source_explains_each_video_and_a_bad_one_is_an_error_row(tmp_path):
    from salient.jobs import run_job

    d = tmp_path / "footage"
    (d / "sub").mkdir(parents=True)
    write_video(d / "a.mkv", _frames(12, seed=1), fps=10)
    write_video(d / "sub/b.mkv", _frames(20, seed=2), fps=10)
    (d / "sub/broken.mp4").write_text("not a video")
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"model": {"name": SQUARE_SPEC}, "source": {"videos": "footage/**/*", "clip": 8},
                                "methods": [{"name": "occlusion", **OCC}], "targets": "0", "out": "out",
                                "executor": {"kind": "local", "workers": 1, "batch_size": 4}}))
    run_job(spec, progress=False, echo=None)
    rows = read_results(tmp_path / "out").set_index("item_id")
    assert rows.loc["a.mkv", "status"] == "ok" and rows.loc["a.mkv", "clips"] == 2
    assert rows.loc["sub/b.mkv", "status"] == "ok" and rows.loc["sub/b.mkv", "clips"] == 3
    assert rows.loc["sub/broken.mp4", "status"] == "error" and "broken.mp4" in rows.loc["sub/broken.mp4", "error"]
    n_forward = rows["n_forward"].sum()
    run_job(spec, progress=False, echo=None)  # a rerun skips what is done (after verifying it)
    again = read_results(tmp_path / "out").set_index("item_id")
    assert again.loc["a.mkv", "n_forward"] == rows.loc["a.mkv", "n_forward"] and n_forward > 0


def test_videos_source_clip_sets_the_model_s_frames_and_a_length_it_rejects_is_refused(tmp_path):
    from salient.jobs import run_job

    write_video(tmp_path / "a.mkv", _frames(12, seed=1), fps=10)
    for name, clip, ok in (("video_toys:square_net", 4, True), ("video_toys:eight_frames", 4, False)):
        spec = tmp_path / "job.yaml"
        spec.write_text(json.dumps({"model": {"name": f"{name}?input_size=32&mean=0,0,0&std=1,1,1&score=logit"},
                                    "source": {"videos": "a.mkv", "clip": clip}, "targets": "0",
                                    "methods": [{"name": "occlusion", "window": (2, 16, 16), "stride": (2, 16, 16)}],
                                    "out": f"out_{ok}"}))
        if ok:
            run_job(spec, progress=False, echo=None)
            assert read_results(tmp_path / "out_True")["clips"].tolist() == [3]
        else:
            with pytest.raises(SalientError, match=r"model: .*takes clips of 8 frames, got 4"):
                run_job(spec, progress=False, echo=None)


# -- memory and executors
RSS_CODE = """
import sys
sys.path.insert(0, {tests!r})
from video_toys import moving_square
import salient
from salient.jobs.video import explain_clips
with salient.Engine(moving_square(frames=8, size=16, side=4), batch_size=4, workers=1) as eng:
    run, _ = explain_clips(eng, sys.argv[1], "occlusion", 0, sink=lambda rows: None,
                           params={{"window": (8, 16, 16), "stride": (8, 16, 16)}})
assert run.n_clips == int(sys.argv[2]), run.n_clips
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(int(line.split()[1]) * 1024)
"""


def test_peak_memory_does_not_grow_with_the_video_s_length(tmp_path):
    peaks = {}
    for n in (400, 4000):
        path = tmp_path / f"v{n}.mkv"
        write_video(path, (f for f in _frames_iter(n)), fps=25)
        out = subprocess.run([sys.executable, "-c", RSS_CODE.format(tests=str(TESTS)), str(path), str(n // 8)],
                             capture_output=True, text=True, env=ENV, timeout=300)
        assert out.returncode == 0, out.stderr
        peaks[n] = int(out.stdout.split()[-1])
    assert peaks[4000] < peaks[400] + 40 * 2**20, peaks  # 10x the frames: at most 40 MB more


def _frames_iter(n: int, size: int = 16):
    g = np.random.default_rng(0)
    for _ in range(n):
        yield g.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


@pytest.mark.ray
def test_local_and_ray_give_the_same_video_map(ray_session, video):
    model = moving_square(frames=8)
    maps = {}
    for kind in ("local", "ray"):
        with salient.Engine(model, executor=kind, workers=2, batch_size=4) as eng:
            maps[kind] = explain_video(model, video, "rise", target=0, engine=eng, clip_stride=5, n_masks=64,
                                       chunk=32).map
    assert np.array_equal(maps["local"], maps["ray"])


def test_top_clips_explains_only_the_best_scoring_clips(video, engine):
    s = salient.explain(engine.model, str(video), "occlusion", target=0, top_clips=2, **OCC)
    run = s.video
    best = set(np.argsort(-run.scores[:, 0], kind="stable")[:2].tolist())
    assert {i for i in range(run.n_clips) if run.status[i] == 0} == best and run.skipped == run.n_clips - 2
    for i, start in enumerate(run.grid.starts):  # frames no explained clip covers are NaN
        own = [t for t in range(start, start + 8)
               if not any(run.status[j] == 0 and run.grid.starts[j] <= t < run.grid.starts[j] + 8
                          for j in range(run.n_clips))]
        assert np.isnan(s.map[own]).all() if own else True
        if i in best:
            assert np.isfinite(s.map[start : start + 8]).all()
    with pytest.raises(SalientError, match="top_clips must be"):
        salient.explain(engine.model, str(video), "occlusion", target=0, top_clips=0, **OCC)
    with pytest.raises(SalientError, match="apply to videos"):
        salient.explain(engine.model, np.zeros((8, 8, 3), np.float32), "occlusion", top_clips=2)


def test_a_video_shorter_than_a_clip_is_padded_with_its_last_frame(tmp_path, engine):
    path = tmp_path / "short.mkv"
    frames = _frames(5, seed=3)
    write_video(path, frames, fps=10)
    s = explain_video(engine.model, path, "occlusion", target=0, engine=engine, **OCC)
    padded = np.concatenate([frames, np.repeat(frames[-1:], 3, axis=0)])
    clip = engine.model.preprocess_clip(padded.astype(np.float32) / np.float32(255))
    one = engine.explain(Item("padded", clip), "occlusion", target=0, **OCC)
    assert s.map.shape == (5, 32, 32) and np.array_equal(s.map, one.map[:5])
