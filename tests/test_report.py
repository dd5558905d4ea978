"""Overlay colour rules and sizes (salient.report)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from salient import Saliency, load_image
from salient.report import (
    colorize,
    overlay,
    panel,
    resize_map,
    save_overlay,
    save_panel,
    sequential_colors,
    signed_colors,
    signed_scale,
)
from salient.report.colormaps import colormap_lut
from salient.report.panel import TITLE_HEIGHT


def photo(h: int = 40, w: int = 70, seed: int = 0):
    return load_image(np.random.default_rng(seed).random((h, w, 3)).astype(np.float32), name="photo")


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


# -- signed: red / blue on black
def test_signed_zero_is_black_positive_red_negative_blue():
    d = np.array([[0.0, 0.5, -0.5, 2.0, -3.0]])
    rgb = signed_colors(d, scale=1.0)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_allclose(rgb[0, 1], [0.5, 0, 0])
    np.testing.assert_allclose(rgb[0, 2], [0, 0, 0.5])
    np.testing.assert_array_equal(rgb[0, 3], [1, 0, 0])  # clipped at full
    np.testing.assert_array_equal(rgb[0, 4], [0, 0, 1])


def test_signed_brightness_monotone_in_magnitude_and_clipped():
    d = np.linspace(-2.0, 2.0, 401)[None, :]
    rgb = signed_colors(d, scale=1.0)[0]
    pos, neg = d[0] >= 0, d[0] < 0
    assert (rgb[pos, 1:] == 0).all() and (rgb[neg, :2] == 0).all()  # one channel only
    red, blue = rgb[pos, 0], rgb[neg, 2][::-1]  # both ordered by increasing |d|
    for a, mag in ((red, d[0][pos]), (blue, -d[0][neg][::-1])):
        assert (np.diff(a) >= 0).all()
        assert (np.diff(a[mag <= 1.0]) > 0).all()  # strictly increasing below the scale
        assert (a[mag >= 1.0] == 1.0).all()  # clipped at full above it


def test_signed_default_scale_is_a_high_percentile():
    d = np.concatenate([np.linspace(0, 1, 999), [100.0]])
    assert signed_scale(d) == pytest.approx(np.percentile(np.abs(d), 99.5))
    rgb = signed_colors(d[None, :])[0]
    assert rgb[-1, 0] == 1.0 and rgb[-2, 0] == 1.0  # the outlier and the top values saturate
    assert 0.4 < rgb[500, 0] < 0.6  # the bulk is not dimmed by the outlier
    assert (signed_colors(np.zeros((4, 4))) == 0).all()  # an all-zero map is black, not NaN


def test_signed_overlay_darkens_neutral_and_tints_by_sign():
    img = photo()
    m = np.zeros((32, 32), np.float32)
    m[:16, :16] = 1.0  # top-left: supports the class
    m[16:, 16:] = -1.0  # bottom-right: argues against it
    s = Saliency(m, signed=True, method="dida", target=0)
    out = overlay(img, s, alpha=0.5).astype(np.float32) / 255
    expect = 0.5 * img.pixels
    # neutral region (top-right quadrant, away from the bilinear seams): exactly the photo at half
    np.testing.assert_allclose(out[2:18, 40:68], expect[2:18, 40:68], atol=1 / 255)
    tl, br = out[2:18, 2:30] - expect[2:18, 2:30], out[22:38, 40:68] - expect[22:38, 40:68]
    np.testing.assert_allclose(tl[..., 0], 0.5, atol=1 / 255)  # full red added at alpha 0.5
    np.testing.assert_allclose(tl[..., 1:], 0.0, atol=1 / 255)
    np.testing.assert_allclose(br[..., 2], 0.5, atol=1 / 255)
    np.testing.assert_allclose(br[..., :2], 0.0, atol=1 / 255)


# -- unsigned: a sequential colour map
def test_unsigned_colours_are_sequential():
    v = np.linspace(0, 5, 256)[None, :]
    rgb = sequential_colors(v)[0]
    lum = luminance(rgb)
    assert (np.diff(lum) > 0).all()  # lightness rises with the value
    np.testing.assert_allclose(rgb[0], colormap_lut()[0])
    np.testing.assert_allclose(rgb[-1], colormap_lut()[-1])
    assert (sequential_colors(np.full((3, 3), 7.0)) == colormap_lut()[0]).all()  # constant map: lowest colour
    np.testing.assert_array_equal(colorize(v, signed=False)[0], rgb)
    np.testing.assert_array_equal(colorize(v - 2.5, signed=True, scale=1.0), signed_colors(v - 2.5, 1.0))


def test_overlay_alpha_endpoints():
    img = photo()
    m = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    s = Saliency(m, signed=False, method="rise", target=0)
    np.testing.assert_array_equal(overlay(img, s, alpha=0.0), np.rint(img.pixels * 255).astype(np.uint8))
    full = overlay(img, s, alpha=1.0).astype(np.float32) / 255
    np.testing.assert_allclose(full, sequential_colors(resize_map(m, img.size)), atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError):
        overlay(img, s, alpha=1.5)


# -- sizes and orientation
@pytest.mark.parametrize("size", [(40, 70), (300, 451), (17, 9)])
def test_overlay_has_the_original_size(size):
    img = photo(*size)
    for signed in (True, False):
        out = overlay(img, Saliency(np.random.default_rng(2).normal(size=(224, 224)), signed, "m", 0))
        assert out.shape == (*size, 3) and out.dtype == np.uint8


def test_resize_keeps_orientation_and_constants():
    m = np.zeros((32, 32), np.float32)
    m[:8, :] = 1.0  # a hot top band on a non-square photo: a transposed resize would put it on the left
    r = resize_map(m, (40, 80))
    assert r.shape == (40, 80)
    assert r[:8].mean() > 0.9 and r[-20:].max() < 1e-6 and np.allclose(r[:8, 0], r[:8, -1])
    np.testing.assert_allclose(resize_map(np.full((5, 7), 3.0), (50, 20)), 3.0, rtol=1e-6)
    np.testing.assert_array_equal(resize_map(m, (32, 32)), m)
    assert resize_map(np.stack([m, 3 * m]), (32, 32)) == pytest.approx(2 * m)  # (T, H, W): mean over t


def test_panel_layout_titles_and_files(tmp_path):
    img = photo(40, 70)
    sal = [Saliency(np.random.default_rng(i).normal(size=(32, 32)), True, "dida", i, f"class {i}", 0.5 / (i + 1))
           for i in range(3)]
    p = panel(img, sal, tile_height=64, gap=4)
    tile_w = round(70 * 64 / 40)
    assert p.shape == (64 + TITLE_HEIGHT, 4 * tile_w + 3 * 4, 3) and p.dtype == np.uint8
    first = p[TITLE_HEIGHT:, :tile_w].astype(np.float32)
    want = np.asarray(PILImage.fromarray(np.rint(img.pixels * 255).astype(np.uint8)).resize(
        (tile_w, 64), PILImage.Resampling.LANCZOS), dtype=np.float32)
    np.testing.assert_allclose(first, want, atol=1)  # the original, unchanged
    for k in range(4):
        band = p[:TITLE_HEIGHT, k * (tile_w + 4) : k * (tile_w + 4) + tile_w]
        assert (band < 128).any() and (band == 255).mean() > 0.5  # dark title text on white
    assert (p[:, tile_w : tile_w + 4] == 255).all()  # the gap
    with pytest.raises(ValueError):
        panel(img, [])
    a = save_panel(tmp_path / "p" / "panel.png", img, sal)
    b = save_overlay(tmp_path / "o.png", img, sal[0])
    with PILImage.open(a) as pa, PILImage.open(b) as pb:
        assert pa.height == 256 + TITLE_HEIGHT and pb.size == (70, 40) and pb.mode == "RGB"
