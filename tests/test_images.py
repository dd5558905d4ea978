"""Image loading: the conversion rules of salient.images for files, arrays and tensors, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import salient
from salient.errors import ItemError, SalientError
from salient.images import load_image

RNG = np.random.default_rng(3)
RGB8 = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)


def save(tmp_path, arr_or_im, name: str, **kw):
    im = arr_or_im if isinstance(arr_or_im, PILImage.Image) else PILImage.fromarray(arr_or_im)
    path = tmp_path / name
    im.save(path, **kw)
    return path


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".webp"])
def test_lossless_formats_round_trip(tmp_path, suffix):
    kw = {"lossless": True} if suffix == ".webp" else {}
    img = load_image(save(tmp_path, RGB8, "a" + suffix, **kw))
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (9, 13, 3)
    np.testing.assert_allclose(img.pixels, RGB8 / 255.0, atol=1e-6)
    assert img.name == "a" and img.source.endswith("a" + suffix) and img.size == (9, 13)


def test_jpeg_is_read(tmp_path):
    smooth = np.broadcast_to(np.linspace(0, 255, 13, dtype=np.uint8)[None, :, None], (9, 13, 3)).copy()
    img = load_image(save(tmp_path, smooth, "a.jpg", quality=98))
    np.testing.assert_allclose(img.pixels, smooth / 255.0, atol=0.05)


def test_grayscale_is_replicated(tmp_path):
    g = RGB8[..., 0]
    for src in (save(tmp_path, g, "g.png"), g, g[..., None], torch.from_numpy(g)):
        px = load_image(src).pixels
        assert px.shape == (9, 13, 3)
        for c in range(3):
            np.testing.assert_allclose(px[..., c], g / 255.0, atol=1e-6)


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = [[0, 128, 255], [64, 64, 64]]
    a = rgba[..., 3:] / 255.0
    want = np.concatenate([np.ones((2, 3, 1)), 1 - a, 1 - a], axis=2)  # red over white
    for src in (save(tmp_path, rgba, "a.png"), rgba):
        np.testing.assert_allclose(load_image(src).pixels, want, atol=1e-6)
    la = np.stack([np.full((2, 3), 100, np.uint8), rgba[..., 3]], axis=2)  # grey 100 with alpha
    g = 100 / 255.0 * a[..., 0] + (1 - a[..., 0])
    for src in (save(tmp_path, PILImage.fromarray(la, "LA"), "la.png"), la):
        np.testing.assert_allclose(load_image(src).pixels, np.repeat(g[..., None], 3, axis=2), atol=1e-6)


def test_palette_images_are_expanded(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 9)
    im = PILImage.fromarray(idx, "P")
    im.putpalette(palette)
    colors = np.array(palette[:9]).reshape(3, 3) / 255.0
    np.testing.assert_allclose(load_image(save(tmp_path, im, "p.png")).pixels, colors[idx], atol=1e-6)
    im.info["transparency"] = 1  # index 1 (green) fully transparent: becomes white
    want = colors[idx].copy()
    want[idx == 1] = 1.0
    np.testing.assert_allclose(load_image(save(tmp_path, im, "pt.png", transparency=1)).pixels, want, atol=1e-6)


def test_16bit_depth_is_kept(tmp_path):
    g16 = np.array([[0, 1000, 1001], [32768, 65534, 65535]], np.uint16)
    px = load_image(save(tmp_path, g16, "g16.png")).pixels
    np.testing.assert_allclose(px[..., 0], g16 / 65535.0, atol=1e-7)
    assert px[0, 1, 0] < px[0, 2, 0]  # 8-bit truncation would merge these
    rgb16 = RNG.integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    np.testing.assert_allclose(load_image(rgb16).pixels, rgb16 / 65535.0, atol=1e-7)


def test_float_tiff_and_cmyk_jpeg(tmp_path):
    f = RNG.random((4, 6)).astype(np.float32)
    np.testing.assert_allclose(load_image(save(tmp_path, PILImage.fromarray(f, "F"), "f.tif")).pixels[..., 1], f)
    cmyk = PILImage.fromarray(RGB8).convert("CMYK")
    px = load_image(save(tmp_path, cmyk, "c.jpg", quality=100)).pixels
    assert px.shape == (9, 13, 3) and 0 <= px.min() and px.max() <= 1


# ---------------------------------------------------------------- arrays and tensors


def test_arrays_and_tensors():
    f = RGB8 / 255.0
    np.testing.assert_allclose(load_image(f.astype(np.float64)).pixels, f, atol=1e-6)
    t = torch.from_numpy(f.astype(np.float32)).permute(2, 0, 1)  # (C, H, W)
    np.testing.assert_allclose(load_image(t).pixels, f, atol=1e-6)
    np.testing.assert_allclose(load_image(t[:1]).pixels, np.repeat(f[..., :1], 3, axis=2), atol=1e-6)
    b = np.array([[True, False]])
    np.testing.assert_array_equal(load_image(b).pixels[..., 2], [[1.0, 0.0]])
    assert load_image(np.zeros((3, 4, 3), np.uint8), name="z").name == "z"
    img = load_image(f)
    assert load_image(img) is img


@pytest.mark.parametrize(
    ("arr", "pattern"),
    [
        (np.zeros((0, 5, 3), np.uint8), r"zero-sized image"),
        (np.zeros((5, 0), np.uint8), r"zero-sized image"),
        (np.zeros((4, 4, 5), np.uint8), r"expected an image of shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"expected an image of shape"),
        (np.full((4, 4, 3), 2.0), r"float pixels must lie in \[0, 1\].*divide 8-bit data by 255"),
        (np.full((4, 4, 3), np.nan), r"NaN or infinite"),
        (np.full((4, 4), -3, np.int16), r"negative pixel values"),
        (np.zeros((4, 4), np.complex64), r"unsupported pixel type"),
    ],
)
def test_bad_arrays(arr, pattern):
    with pytest.raises(ItemError, match=pattern):
        load_image(arr)


# ---------------------------------------------------------------- bad files


def test_bad_files(tmp_path):
    with pytest.raises(ItemError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ItemError, match="is a directory"):
        load_image(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ItemError, match=r"empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "text.png").write_text("not an image at all\n")
    with pytest.raises(ItemError, match="not a readable image"):
        load_image(tmp_path / "text.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files(tmp_path, suffix):
    big = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(tmp_path, big, "whole" + suffix).read_bytes()
    (tmp_path / ("cut" + suffix)).write_bytes(data[: len(data) // 2])
    with pytest.raises(ItemError, match="corrupt or truncated"):
        load_image(tmp_path / ("cut" + suffix))


def test_zero_sized_png(tmp_path):
    data = bytearray(save(tmp_path, RGB8, "ok.png").read_bytes())
    data[16:20] = (0).to_bytes(4, "big")  # IHDR width := 0
    (tmp_path / "zero.png").write_bytes(bytes(data))
    with pytest.raises(ItemError, match="zero-sized image"):
        load_image(tmp_path / "zero.png")


def test_errors_are_one_line_salient_errors(tmp_path):
    with pytest.raises(SalientError) as e:
        load_image(tmp_path / "missing.png")
    assert "\n" not in str(e.value)


def test_sample_images():
    imgs = salient.data.sample_images()
    names = [im.name for im in imgs]
    assert names[:5] == ["chelsea", "coffee", "astronaut", "rocket", "camera"]
    for im in imgs:
        assert im.pixels.dtype == np.float32 and im.pixels.ndim == 3 and im.pixels.shape[2] == 3
        assert 0 <= im.pixels.min() and im.pixels.max() <= 1 and im.pixels.std() > 0.05
    cam = salient.data.sample_images(["camera"])[0]  # grayscale, replicated
    assert np.array_equal(cam.pixels[..., 0], cam.pixels[..., 2])
