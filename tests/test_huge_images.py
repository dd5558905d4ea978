"""Huge images: lazy slide readers, tile mode, stitching, the OME-Zarr mosaic store, resume, overlays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from job_toys import kill_when_done
from slide_toys import CHANNEL_WEIGHTS, spec

import salient
from salient.engine import Engine
from salient.errors import ItemError, SalientError
from salient.io import open_slide
from salient.io import slides as slides_mod
from salient.jobs.tiles import Stitcher, TileGrid, axis_starts, axis_windows, explain_tiles, is_background
from salient.store.mosaic import MosaicWriter, halve, level_shapes, read_level

TESTS = Path(__file__).parent


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _tiff(path: Path, a: np.ndarray, tile: int = 16, levels: int = 1, **kw) -> Path:
    with tifffile.TiffWriter(path) as w:
        w.write(a, tile=(tile, tile), subifds=levels - 1, photometric="rgb", **kw)
        for i in range(1, levels):
            w.write(a[:: 2**i, :: 2**i], tile=(tile, tile), subfiletype=1, photometric="rgb", **kw)
    return path


@pytest.fixture(scope="module")
def channel_model():
    return salient.load_model(spec("channel_sum"))


@pytest.fixture(scope="module")
def conv_model():
    return salient.load_model(spec("conv"))


@pytest.fixture(scope="module")
def linear_model():
    return salient.load_model(spec("linear16"))


# -- readers
def test_readers_return_the_pixels_of_a_region(tmp_path):
    a = _rgb(70, 90)
    want = a[5:25, 7:40].astype(np.float32) / np.float32(255)
    files = {"tiled": _tiff(tmp_path / "t.tif", a, levels=2, compression="zlib"),
             "strips": tmp_path / "s.tif", "contig": tmp_path / "c.tif", "png": tmp_path / "p.png"}
    tifffile.imwrite(files["strips"], a, rowsperstrip=8, compression="zlib")
    tifffile.imwrite(files["contig"], a)
    from PIL import Image as PILImage

    PILImage.fromarray(a).save(files["png"])
    zarr.create_array(tmp_path / "a.zarr", data=a, chunks=(16, 16, 3))
    files["zarr"] = tmp_path / "a.zarr"
    for kind, f in files.items():
        s = open_slide(f)
        assert np.array_equal(s.read_region(0, 5, 7, 20, 33), want), kind
    s = open_slide(files["tiled"], level=1)
    assert s.levels == [(70, 90), (35, 45)] and s.size == (35, 45)
    assert np.array_equal(s.read_region(1, 0, 0, 35, 45), a[::2, ::2].astype(np.float32) / np.float32(255))
    assert s.thumbnail(20).shape[:2] == (18, 23)  # level 1 (45 >= 20), box-reduced by 2


def test_ome_zarr_multiscale_input_chooses_a_level(tmp_path):
    a = _rgb(64, 64)
    root = zarr.open_group(tmp_path / "img.zarr", mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}],
                                                            "datasets": [{"path": "0"}, {"path": "1"}]}]}
    root.create_array("0", data=np.moveaxis(a, -1, 0), chunks=(3, 16, 16))
    root.create_array("1", data=np.moveaxis(a[::2, ::2], -1, 0), chunks=(3, 16, 16))
    s = open_slide(tmp_path / "img.zarr", level=1)
    assert s.levels == [(64, 64), (32, 32)]
    assert np.array_equal(s.read_region(1, 3, 4, 5, 6), a[::2, ::2][3:8, 4:10] / np.float32(255))


def test_openslide_reads_a_tiled_tiff(tmp_path):
    openslide = pytest.importorskip("openslide")
    a = _rgb(64, 80)
    f = _tiff(tmp_path / "o.tif", a, tile=32)  # openslide's generic tiled TIFF (libtiff)
    try:
        openslide.OpenSlide(str(f))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"openslide cannot read the TIFF tifffile writes: {e}")
    s = slides_mod._OpenSlide(str(f), None)
    assert np.array_equal(s.read_region(0, 3, 5, 10, 12), a[3:13, 5:17] / np.float32(255))


def test_bad_slides_are_one_line_errors(tmp_path, monkeypatch):
    a = _rgb(40, 40)
    tifffile.imwrite(tmp_path / "strip.tif", a, rowsperstrip=40, compression="zlib")
    monkeypatch.setattr(slides_mod, "STRIP_BYTES", 1000)
    with pytest.raises(SalientError, match="strip TIFF.*tiled"):
        open_slide(tmp_path / "strip.tif")
    from PIL import Image as PILImage

    PILImage.fromarray(a).save(tmp_path / "big.png")
    monkeypatch.setattr(slides_mod, "PLAIN_PIXELS", 1000)
    with pytest.raises(SalientError, match="budget.*tifffile.imwrite"):
        open_slide(tmp_path / "big.png")
    f = _tiff(tmp_path / "t.tif", a)
    with pytest.raises(SalientError, match="level 2 does not exist"):
        open_slide(f, level=2)
    with pytest.raises(SalientError, match="larger than the image"):
        TileGrid.make((40, 40), 64)
    for bad in (1.0, -0.1, float("nan"), True):
        with pytest.raises(SalientError, match=r"overlap must be a number in \[0, 1\)"):
            TileGrid.make((40, 40), 16, bad)
    for e in (SalientError,):
        with pytest.raises(e, match="no such file"):
            open_slide(tmp_path / "missing.tif")


# -- geometry and blending
def test_tile_starts_cover_the_image_and_end_at_its_edge():
    assert axis_starts(100, 32, 0.0) == [0, 32, 64, 68]
    assert axis_starts(100, 32, 0.5) == [0, 16, 32, 48, 64, 68]
    assert axis_starts(32, 32, 0.9) == [0]
    starts = [0, 8, 16, 24]  # equal overlaps: the ramps cross-fade, weights sum to 1 everywhere
    total = np.zeros(40)
    for s, w in zip(starts, axis_windows(starts, 16), strict=True):
        total[s : s + 16] += w
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    assert (axis_windows([0, 16], 16)[0] == 1).all()  # no overlap: flat


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
def test_constant_tile_maps_give_a_constant_mosaic(overlap):
    grid = TileGrid.make((150, 173), 24, overlap)
    rows = []
    st = Stitcher(grid, rows.append, band=32)
    cells = [(r, c) for r in range(grid.rows) for c in range(grid.cols)]
    for r, c in cells[::-1]:  # any order
        st.add(r, c, np.full((24, 24), 3.7, np.float32))
    mosaic = np.concatenate(rows)
    assert mosaic.shape == (150, 173) and st.done
    np.testing.assert_allclose(mosaic, 3.7, rtol=1e-6)  # a few float32 ulps; no seams, no NaN at the borders


def test_skipped_tiles_leave_nan_and_failed_tiles_mark_their_area():
    grid = TileGrid.make((48, 48), 16)
    rows = []
    st = Stitcher(grid, rows.append, band=16)
    for r in range(3):
        for c in range(3):
            (st.skip if (r, c) == (0, 0) else st.fail if (r, c) == (1, 2) else
             lambda r, c: st.add(r, c, np.ones((16, 16))))(r, c)
    m = np.concatenate(rows)
    assert np.isnan(m[:16, :16]).all() and np.isnan(m[16:32, 32:]).all()
    assert np.isnan(m).sum() == 2 * 256 and (m[~np.isnan(m)] == 1).all()


# -- tile mode against known answers
def test_linear_patch_model_occlusion_is_exact_with_and_without_overlap(tmp_path, channel_model):
    a = _rgb(40, 56, seed=3)
    f = _tiff(tmp_path / "s.tif", a)
    x = a.astype(np.float32) / np.float32(255)
    with Engine(channel_model, workers=1, batch_size=4) as eng:
        for overlap in (0.0, 0.5):
            run, sink = explain_tiles(eng, f, "occlusion", target=1, overlap=overlap,
                                      params={"window": 1, "stride": 1})
            exact = 2 * (x * np.float32(CHANNEL_WEIGHTS)).sum(-1)  # class 1: 2 Σ_c w_c (x_c - 0)
            # f(I) - f(I with one pixel at 0) in float32: a few ulps of the tile's score |f| <= 2 · 3.25 · 256
            np.testing.assert_allclose(sink.data, exact, rtol=0, atol=16 * np.finfo(np.float32).eps * 2 * 3.25 * 256)
            assert run.n_tiles == len(run.grid.ys) * len(run.grid.xs) and run.failed == run.skipped == 0


def test_no_overlap_crop_equals_explain_on_the_tile(tmp_path, linear_model):
    a = _rgb(32, 48, seed=4)
    f = _tiff(tmp_path / "s.tif", a)
    with Engine(linear_model, workers=1, batch_size=4) as eng:
        run, sink = explain_tiles(eng, f, "occlusion", target=2, params={"window": 4, "stride": 2})
        tile = salient.load_image(a[16:32, 32:48])
        one = eng.explain(tile, "occlusion", target=2, window=4, stride=2)
    assert run.grid.ys == (0, 16) and run.grid.xs == (0, 16, 32)
    assert np.array_equal(sink.data[16:32, 32:48], one.map)


def test_cam_tiles_share_one_scale(tmp_path, conv_model):
    """Grad-CAM's per-map min-max is off in tile mode: each tile's part of the mosaic is its unnormalised
    map, so tiles are comparable (their maxima differ) and the recorded parameters say so."""
    a = _rgb(32, 32, seed=6)
    f = _tiff(tmp_path / "s.tif", a)
    with Engine(conv_model, workers=1, batch_size=4) as eng:
        run, sink = explain_tiles(eng, f, "gradcam", target=1)
        tiles = [salient.load_image(a[y:y + 16, x:x + 16]) for y in (0, 16) for x in (0, 16)]
        raw = [eng.explain(t, "gradcam", target=1, normalize=False).map for t in tiles]
        scaled = eng.explain(tiles[0], "gradcam", target=1).map
    crops = [sink.data[y:y + 16, x:x + 16] for y in (0, 16) for x in (0, 16)]
    assert all(np.array_equal(c, r) for c, r in zip(crops, raw, strict=True))
    assert len({float(c.max()) for c in crops}) > 1 and not np.array_equal(crops[0], scaled)
    s = salient.explain(conv_model, open_slide(f), method="gradcam", tiles=True, target=1)
    assert s.params["normalize"] is False


def test_default_target_is_the_highest_mean_tile_score(tmp_path, conv_model):
    a = _rgb(32, 32, seed=5)
    f = _tiff(tmp_path / "s.tif", a)
    with Engine(conv_model, workers=1, batch_size=4) as eng:
        run, _ = explain_tiles(eng, f, "gradcam")
    assert run.scores.shape == (2, 2, 3)
    assert run.target == int(np.argmax(run.scores.reshape(4, 3).mean(0)))
    s = salient.explain(conv_model, open_slide(f), method="gradcam", tiles=True)
    assert s.target == run.target and s.map.shape == (32, 32) and s.tiles.n_tiles == 4


def test_background_rule_and_a_corrupt_tile(tmp_path, conv_model):
    a = _rgb(48, 48, seed=6)
    a[:16, :16] = 255  # a white tile
    f = _tiff(tmp_path / "s.tif", a, compression="zlib")
    with tifffile.TiffFile(f) as t:  # damage tile (1, 1): its zlib stream becomes garbage
        off, n = t.pages[0].dataoffsets[4], t.pages[0].databytecounts[4]
    with open(f, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\xff" * n)
    assert is_background(np.ones((8, 8, 3), np.float32)) and not is_background(a[16:32, 16:32] / np.float32(255))
    with Engine(conv_model, workers=1, batch_size=4) as eng:
        run, sink = explain_tiles(eng, f, "gradcam", target=0, skip_background=True)
    assert run.skipped == 1 and run.failed == 1 and run.status[0, 0] == 1 and run.status[1, 1] == 2
    assert np.isnan(sink.data[:16, :16]).all() and np.isnan(sink.data[16:32, 16:32]).all()
    assert np.isnan(run.scores[0, 0]).all() and not np.isnan(sink.data[32:]).any()


# -- the store
def test_mosaic_writer_metadata_levels_and_readers(tmp_path):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    data = np.random.default_rng(0).random((2100, 1500), dtype=np.float32)
    w = MosaicWriter(root, "items/a/rise", data.shape, attrs={"method": "rise"}, fingerprint="x")
    while w.done < w.n_bands:
        y0, y1 = w.band_rows(w.done)
        w.write_band(data[y0:y1])
    w.close()
    g = root["items/a/rise"]
    ms = g.attrs["ome"]["multiscales"][0]
    assert g.attrs["ome"]["version"] == "0.5" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert level_shapes(data.shape) == [(2100, 1500), (1050, 750), (525, 375)]
    for i, d in enumerate(ms["datasets"]):
        assert d["path"] == str(i) and d["coordinateTransformations"][0]["scale"] == [2.0**i] * 2
        assert g[str(i)].metadata.dimension_names == ("y", "x") and g[str(i)].chunks == (512, 512)
    assert np.array_equal(read_level(g, 0), data)
    assert np.array_equal(read_level(g, 2), halve(halve(data)), equal_nan=True)
    import xarray as xr

    ds = xr.open_zarr(tmp_path / "s.zarr", group="items/a/rise", consolidated=False, drop_variables=["1", "2"])
    assert ds["0"].dims == ("y", "x") and ds["0"].shape == data.shape
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (node, *_) = list(Reader(parse_url(str(tmp_path / "s.zarr/items/a/rise")))())
    assert [tuple(d.shape) for d in node.data] == level_shapes(data.shape)


def test_mosaic_writer_resumes_bit_for_bit(tmp_path):
    data = np.random.default_rng(1).random((2600, 1100), dtype=np.float32)
    data[:300, :200] = np.nan

    def write(root, stop=None):
        w = MosaicWriter(root, "m", data.shape, fingerprint="f")
        while w.done < (w.n_bands if stop is None else stop):
            y0, y1 = w.band_rows(w.done)
            w.write_band(data[y0:y1])
        return w

    full = zarr.open_group(tmp_path / "full.zarr", mode="w")
    write(full).close()
    part = zarr.open_group(tmp_path / "part.zarr", mode="w")
    write(part, stop=3)
    shard = tmp_path / "part.zarr/m/0/c/2/0"
    shard.write_bytes(shard.read_bytes()[:-9] + b"x" * 9)  # band 2 damaged: redone
    w = write(part)
    w.close()
    for i in range(3):
        assert np.array_equal(read_level(full["m"], i), read_level(part["m"], i), equal_nan=True)
    assert MosaicWriter(part, "m", data.shape, fingerprint="f").done == w.n_bands
    assert MosaicWriter(part, "m", data.shape, fingerprint="other").done == 0


def test_an_interrupted_mosaic_resumes_to_the_undisturbed_one(tmp_path, conv_model):
    """Default target (from the score pass over every tile, also the finished ones) and overlap."""
    f = _tiff(tmp_path / "s.tif", _rgb(1100, 40, seed=11))

    class Stop(Exception):
        pass

    def run(root, stop_after=None):
        w = MosaicWriter(root, "m", (1100, 40), fingerprint="f")

        def sink(rows):
            if stop_after is not None and w.done >= stop_after:
                raise Stop
            w.write_band(rows)

        with Engine(conv_model, workers=1, batch_size=4) as eng:
            res, _ = explain_tiles(eng, f, "gradcam", overlap=0.5, sink=sink, start_band=w.done)
        w.close()
        return res

    full = zarr.open_group(tmp_path / "a.zarr", mode="w")
    ref = run(full)
    part = zarr.open_group(tmp_path / "b.zarr", mode="w")
    with pytest.raises(Stop):
        run(part, stop_after=1)
    assert MosaicWriter(part, "m", (1100, 40), fingerprint="f").done == 1
    again = run(part)
    assert again.target == ref.target and np.array_equal(again.scores, ref.scores)
    assert again.n_forward < ref.n_forward  # the tiles of the finished band were only scored
    for i in range(2):
        assert np.array_equal(read_level(full["m"], i), read_level(part["m"], i))


def _job(tmp_path: Path, slide: Path, out: str, method: str = "occlusion", **source) -> Path:
    src = {"slides": str(slide), "tile": 16, **source}
    job = {"model": spec("linear16"), "source": src, "targets": 1,
           "methods": [{"name": method, "window": 2, "stride": 2}] if method == "occlusion" else [{"name": method}],
           "executor": {"workers": 1, "batch_size": 4}, "seed": 0, "out": out}
    p = tmp_path / f"{out}.yaml"
    p.write_text(json.dumps(job))
    return p


def test_slides_job_rows_maps_and_a_bad_slide(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    _tiff(d / "a.tif", _rgb(40, 56, seed=7))
    _tiff(d / "b.tif", _rgb(8, 8, seed=8), tile=16)  # smaller than a tile: an error row
    from salient.jobs import run_job
    from salient.store import read_map, read_results

    summary = run_job(_job(tmp_path, d / "*.tif", "o", overlap=0.25), progress=False, echo=None)
    df = read_results(tmp_path / "o")
    assert list(df["status"]) == ["ok", "error"] and "larger than the image" in df["error"].iloc[1]
    row = df.iloc[0]
    assert row["index"] == -1 and row["tiles"] == 3 * 5 and row["failed_tiles"] == 0 and row["target"] == 1
    m = read_map(tmp_path / "o", row)
    assert m.shape == (40, 56) and not np.isnan(m).any()
    with Engine(salient.load_model(spec("linear16")), workers=1, batch_size=4) as eng:
        _, sink = explain_tiles(eng, d / "a.tif", "occlusion", target=1, overlap=0.25,
                                params={"window": 2, "stride": 2})
    assert np.array_equal(m, sink.data)
    assert summary.counts["occlusion"] == {"ok": 1, "error": 1}
    rerun = run_job(_job(tmp_path, d / "*.tif", "o", overlap=0.25), progress=False, echo=None)
    assert rerun.skipped == 1
    run_job(_job(tmp_path, d / "a.tif", "lvl", level=3), progress=False, echo=None)  # an error row, the job goes on
    (err,) = read_results(tmp_path / "lvl")["error"]
    assert "level 3 does not exist" in err
    with pytest.raises(SalientError, match=r"source.*overlap"):
        run_job(_job(tmp_path, d / "a.tif", "bad", overlap=1.0), progress=False, echo=None)


def test_sigkilled_slide_job_resumes_to_the_undisturbed_result(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    _tiff(d / "tall.tif", _rgb(2048, 48, seed=9))
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = "import sys; from salient.jobs import run_job; run_job(sys.argv[1], progress=False, echo=None)"
    undisturbed = _job(tmp_path, d / "tall.tif", "full")
    subprocess.run([sys.executable, "-c", code, str(undisturbed)], check=True, env=env, timeout=300)
    killed = _job(tmp_path, d / "tall.tif", "killed")
    proc = subprocess.Popen([sys.executable, "-c", code, str(killed)], env=env)
    meta = tmp_path / "killed/saliency.zarr/items/tall.tif/occlusion/zarr.json"
    done = kill_when_done(proc, meta, lambda a: a["salient_mosaic"]["bands"][0], 2)
    assert 2 <= done < 4, f"killed after {done} of 4 bands"
    subprocess.run([sys.executable, "-c", code, str(killed)], check=True, env=env, timeout=300)
    a = zarr.open_group(tmp_path / "full/saliency.zarr", mode="r")["items/tall.tif/occlusion"]
    b = zarr.open_group(tmp_path / "killed/saliency.zarr", mode="r")["items/tall.tif/occlusion"]
    for i in range(3):
        assert np.array_equal(read_level(a, i), read_level(b, i), equal_nan=True)
    assert np.array_equal(a.parent["score"][:] if False else
                          zarr.open_group(tmp_path / "full/saliency.zarr", mode="r")["items/tall.tif/score"][:],
                          zarr.open_group(tmp_path / "killed/saliency.zarr", mode="r")["items/tall.tif/score"][:])


# -- CLI and overlays
def test_cli_tiles_writes_mosaic_scores_and_overlays(tmp_path, capsys):
    from salient.cli import main

    f = _tiff(tmp_path / "s.tif", _rgb(64, 64, seed=10), levels=2)
    out = tmp_path / "out"
    base = ["explain", str(f), "--method", "gradcam", "--tiles", "--model", spec("conv"), "--out", str(out)]
    assert main(base + ["--tile-overlap", "0.5", "--target", "1", "--workers", "1"]) == 0
    pngs = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert pngs == ["s_gradcam.png", "s_gradcam_scores.png"]
    from PIL import Image as PILImage

    assert max(PILImage.open(out / "overlays/s_gradcam.png").size) <= 64
    for bad, msg in ((["--level", "5"], "level 5 does not exist"), (["--tile", "100"], "larger than the image"),
                     (["--tile-overlap", "1"], "overlap must be"), (["--whole"], "exclude each other")):
        capsys.readouterr()
        assert main(base + ["--restart"] + bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


# -- memory
def test_a_slide_larger_than_memory_allows_streams_with_bounded_rss(tmp_path):
    """A 12,000 x 12,000 RGB tiled TIFF (432 MB of pixels; 1.7 GB as float32) written from a
    generator; tile mode with 1,024-pixel tiles (resized to the toy's 16 x 16 input) and Grad-CAM into
    an OME-Zarr mosaic: the process's peak RSS stays under 1.5 GB, and grows by less than 600 MB over
    the process with its imports and engine (about 600 MB here), less than a third of a float32 copy."""
    side, tile = 12000, 512
    row = np.tile(np.arange(side, dtype=np.uint8)[None, :, None], (tile, 1, 3))

    def tiles():
        for y in range(0, side, tile):
            for x in range(0, side, tile):
                yield np.ascontiguousarray(row[:, x : x + tile]) + np.uint8(y % 7)

    f = tmp_path / "big.tif"
    tifffile.imwrite(f, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")
    code = textwrap.dedent(f"""
        import salient
        from salient.engine import Engine
        from salient.jobs.tiles import explain_tiles
        from salient.store.mosaic import MosaicWriter
        import zarr
        model = salient.load_model({spec("conv")!r})
        root = zarr.open_group({str(tmp_path / "m.zarr")!r}, mode="w")
        w = MosaicWriter(root, "m", ({side}, {side}))
        def hwm():  # this process's peak RSS in kB; getrusage's ru_maxrss keeps the forking parent's across exec
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        with Engine(model, workers=1, batch_size=8) as eng:
            base = hwm()
            run, _ = explain_tiles(eng, {str(f)!r}, "gradcam", target=0, tile=1024, sink=w.write_band)
        w.close()
        print(run.n_tiles, base, hwm())
    """)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    n, base_kb, peak_kb = (int(v) for v in res.stdout.split()[-3:])
    assert n == 144
    assert peak_kb < 1.5 * 2**20 and peak_kb - base_kb < 600 * 1024, f"peak RSS {peak_kb >> 10} MB ({base_kb >> 10})"
    m = zarr.open_group(tmp_path / "m.zarr", mode="r")["m/4"]
    assert m.shape == (750, 750) and not np.isnan(m[:]).any()


def test_bad_tile_settings_before_work(tmp_path, conv_model):
    f = _tiff(tmp_path / "s.tif", _rgb(32, 32))
    with Engine(conv_model, workers=1, batch_size=4) as eng:
        with pytest.raises(SalientError, match="one target per image"):
            explain_tiles(eng, f, "gradcam", target="top2")
        with pytest.raises(SalientError, match="level 1 does not exist"):
            explain_tiles(eng, f, "gradcam", level=1)
    assert issubclass(ItemError, SalientError)
