"""Whole mode: an image explained at its native size by a model that accepts any input size.

A fully convolutional toy with global average pooling (``ConvBnReLU6``, model input 32 x 32) explains
1024 x 1024 and non-square images: RISE equals the dense formula, 2 Ray workers share the one item's
queries and give the local map bit for bit, the memory rule lowers the batch of a large item, a model
that rejects the size is one line, the store holds an OME-Zarr multiscale group per map.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr
from cli_toys import spec
from PIL import Image as PILImage
from toy_models import ConvBnReLU6, Linear, toy

import salient
from salient import cli, images
from salient.engine import memory, whole
from salient.errors import SalientError
from salient.kernels import rise_masks
from salient.methods.cam import cam_maps, gradcam_weights
from salient.store import read_map, read_results

RNG = np.random.default_rng(5)
BIG = RNG.uniform(0, 1, (1024, 1024, 3)).astype(np.float32)
ODD = RNG.uniform(0, 1, (96, 160, 3)).astype(np.float32)  # non-square, not the model's 32 x 32
RISE = {"n_masks": 32, "chunk": 32, "cells": 7, "p": 0.5}


@pytest.fixture(scope="module")
def fcn():
    return toy(ConvBnReLU6(), size=32, score="softmax")


@pytest.fixture(scope="module")
def local(fcn):
    with salient.Engine(fcn, batch_size=4, workers=2) as eng:
        yield eng


def dense_rise(model, img, target: int, seed: int, n_masks: int, chunk: int, cells: int, p: float) -> np.ndarray:
    """S = Σ f(I ⊙ M_i) M_i / (N p) with the original module, 4 masked inputs at a time."""
    x = torch.from_numpy(img).permute(2, 0, 1)  # identity normalisation (mean 0, std 1)
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    for c in range(math.ceil(n_masks / chunk)):
        n = min(chunk, n_masks - c * chunk)
        masks = rise_masks(seed, c, n, cells, p, tuple(x.shape[1:]))
        for s in range(0, n, 4):
            m = masks[s : s + 4]
            with torch.no_grad():
                f = model.score(model.module(x[None] * m[:, None]))[:, target].double()
            total += (f[:, None, None] * m.double()).sum(0)
    return (total / (n_masks * p)).numpy()


def test_rise_at_1024_equals_the_dense_formula(fcn, local):
    s = local.explain(BIG, "rise", whole=True, seed=3, **RISE)
    assert s.map.shape == (1024, 1024)
    np.testing.assert_allclose(s.map, dense_rise(fcn, BIG, s.target, 3, **RISE), rtol=1e-5, atol=1e-6)
    per = local.executor.stats()["per_worker"]
    assert all(p["shape_batches"].get("3x1024x1024") == 4 for p in per if p["shape_batches"])


@pytest.mark.ray
def test_two_ray_workers_share_the_item_and_give_the_local_map(fcn, local, ray_session):
    ref = local.explain(BIG, "rise", whole=True, seed=4, **RISE).map
    with salient.Engine(fcn, executor="ray", workers=2, batch_size=4) as eng:
        got = eng.explain(BIG, "rise", whole=True, seed=4, **RISE).map
        per = eng.executor.stats()["per_worker"]
    assert [p["items_received"] for p in per] == [1, 1]
    assert all(p["n_forward"] >= 16 for p in per)  # each ran at least one query of 16 masks of the item
    assert sum(p["n_forward"] for p in per) == RISE["n_masks"] + 4  # + the unmasked scores, a padded batch
    assert np.array_equal(got, ref)


def test_the_batch_rule_lowers_the_batch_of_a_large_item(fcn):
    big = (3, 1024, 1024)
    per = memory.input_bytes(fcn, big)
    assert per == 4 * 3 * 1024**2 + 3 * -(-fcn.activation_bytes * 1024**2 // 32**2)  # scaled by the pixel count
    assert memory.batch_for(fcn, big, 4, 10 * per) == 4  # the engine's batch when it fits
    assert memory.batch_for(fcn, big, 4, 3 * per - 1) == 2  # floor(limit / per input)
    assert memory.batch_for(fcn, fcn.input_shape, 4, 1) == 4  # the model's own size: the engine's batch
    assert memory.batch_for(fcn, big, 4) == min(4, memory.DEFAULT_MEMORY_LIMIT // per)
    memory.check_input_fits(fcn, big, per)
    with pytest.raises(SalientError, match=r"^whole mode: one 1024x1024 input .* above the per-worker memory "
                                           r"limit .*--memory-limit.*--tiles$"):
        memory.check_input_fits(fcn, big, per - 1)
    assert memory.parse_bytes("1.5GiB") == int(1.5 * 2**30) and memory.parse_bytes("8GB") == 8 * 10**9
    for bad in ("lots", "-1GB", "0", True):
        with pytest.raises(SalientError, match="memory_limit must be a size"):
            memory.parse_bytes(bad)


def test_a_run_above_a_small_limit_succeeds_with_the_lowered_batch(fcn, local):
    per = memory.input_bytes(fcn, (3, 1024, 1024))
    ref = local.explain(BIG, "rise", whole=True, seed=3, **RISE).map
    with salient.Engine(fcn, batch_size=4, workers=1, memory_limit=2 * per + 1) as eng:
        got = eng.explain(BIG, "rise", whole=True, seed=3, **RISE).map
        assert eng.executor.stats()["per_worker"][0]["shape_batches"] == {"3x1024x1024": 2}
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)  # another batch shape: the last bits may move
    with salient.Engine(fcn, batch_size=4, workers=1, memory_limit=per // 2) as eng, \
            pytest.raises(SalientError, match="^whole mode: one 1024x1024 input"):
        eng.explain(BIG, "rise", whole=True, **RISE)


def test_a_gradient_pass_above_the_limit_is_one_line(fcn):
    shape = (3, 1024, 1024)
    outs = []
    leaves = [m for m in fcn.module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, i, o: outs.append(o.numel() * 4)) for m in leaves]
    try:
        with torch.no_grad():
            fcn.module(torch.zeros((1, *shape)))
    finally:
        for h in handles:
            h.remove()
    need = whole.graph_bytes(fcn, shape)
    assert need == 4 * math.prod(shape) + sum(outs)  # the meta device's shapes are the real ones
    with salient.Engine(fcn, batch_size=4, workers=1, memory_limit=need - 1) as eng, \
            pytest.raises(SalientError, match=r"^whole mode: a gradient \(CAM\) pass of model ConvBnReLU6 at "
                                              r"1024x1024 keeps about .* above the per-worker memory limit"):
        eng.explain(BIG, "gradcampp", whole=True)
    with salient.Engine(fcn, batch_size=4, workers=1, memory_limit=need) as eng:
        assert eng.explain(BIG, "gradcampp", whole=True).map.shape == (1024, 1024)


def test_a_model_that_rejects_the_size_is_one_line(tmp_path, capsys):
    with salient.Engine(toy(Linear()), batch_size=4, workers=1) as eng, \
            pytest.raises(SalientError, match=r"^whole mode: model Linear rejects a 96x160 input \(.+\); use --tiles$"):
        eng.explain(ODD, "rise", whole=True, n_masks=16)
    PILImage.fromarray((ODD * 255).astype(np.uint8)).save(tmp_path / "odd.png")
    rc = cli.main(["explain", str(tmp_path / "odd.png"), "--method", "rise", "--whole", "--model", spec("linear"),
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "rejects a 96x160 input" in err and "--tiles" in err
    assert not (tmp_path / "out").exists()


def test_gradcam_and_occlusion_at_a_non_square_native_size(fcn, local):
    x = torch.from_numpy(ODD).permute(2, 0, 1)
    cam = local.explain(ODD, "gradcam", whole=True)
    acts = {}
    layer = fcn.module.act2
    handle = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        inp = x[None].clone().requires_grad_(True)
        logits = fcn.module(inp)
        (g,) = torch.autograd.grad(logits[0, cam.target], acts["a"])
    finally:
        handle.remove()
    a = acts["a"][0].detach()
    ref = cam_maps(gradcam_weights(a, g[0][None]), a, (96, 160))[0]
    assert cam.map.shape == (96, 160) and cam.params["layer"] == "act2"
    np.testing.assert_allclose(cam.map, ref, atol=1e-5)
    occ = local.explain(ODD, "occlusion", whole=True, target=cam.target, window=(32, 40), stride=(32, 40))
    assert occ.map.shape == (96, 160)
    with torch.no_grad():
        base = fcn.score(fcn.module(x[None]))[0, cam.target]
        for y0, x0 in [(0, 0), (32, 120), (64, 40)]:
            hole = x.clone()
            hole[:, y0 : y0 + 32, x0 : x0 + 40] = 0.0
            want = base - fcn.score(fcn.module(hole[None]))[0, cam.target]
            np.testing.assert_allclose(occ.map[y0 : y0 + 32, x0 : x0 + 40], float(want), atol=1e-6)


def test_deletion_curve_and_borex_at_a_non_square_native_size(fcn, local):
    """The curve queries order and fill the item's own pixels: deletion AUC equals the curve computed here
    (step H·W / 224, the top pixels set to fill 0); BOREx's boxes and GP run at that size too."""
    ((_, (s,)),) = list(local.explain_many([ODD], "gradcam", whole=True, metrics=["deletion"]))
    x = torch.from_numpy(ODD).permute(2, 0, 1)
    total = 96 * 160
    step = round(total / 224)
    counts = np.minimum(np.arange(math.ceil(total / step) + 1) * step, total)
    order = np.argsort(-s.map.ravel(), kind="stable")
    rank = np.empty(total, np.int64)
    rank[order] = np.arange(total)
    keep = torch.from_numpy((rank.reshape(96, 160)[None] >= counts[:, None, None]).astype(np.float32))
    with torch.no_grad():
        curve = np.concatenate([fcn.score(fcn.module(x[None] * keep[i : i + 32, None]))[:, s.target].numpy()
                                for i in range(0, len(counts), 32)]).astype(np.float64)
    auc = (curve.sum() - curve[0] / 2 - curve[-1] / 2) / (len(curve) - 1)
    assert s.metrics["deletion_auc"] == pytest.approx(auc, abs=1e-5)
    b = local.explain(ODD, "borex", whole=True, iterations=3, sizes=(10.0, 20.0), **{"prior.n_masks": 16})
    assert b.map.shape == (96, 160) and np.isfinite(b.map).all() and b.n_forward == 1 + 16 + 2 * 3


def test_files_are_read_at_native_size_up_to_the_whole_budget(tmp_path, monkeypatch, fcn):
    rgb = RNG.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)  # the default reader reduces it ...
    assert images.load_image(tmp_path / "a.png").size == (27, 34)
    native = whole.read_whole(tmp_path / "a.png")  # ... whole mode does not
    assert np.array_equal(native.pixels, rgb.astype(np.float32) / 255)
    monkeypatch.setattr(whole, "WHOLE_MAX_PIXELS", 7999)
    with pytest.raises(SalientError, match=r"a.png: whole mode reads images up to .* this one is 100x80; use --tiles"):
        whole.read_whole(tmp_path / "a.png")
    with salient.Engine(fcn, batch_size=4, workers=1) as eng:
        assert eng.item(ODD, whole=True).x.shape == (3, 96, 160)


def test_a_slide_level_is_read_whole(tmp_path, fcn):
    tifffile = pytest.importorskip("tifffile")
    rgb = RNG.integers(0, 256, (256, 384, 3), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "s.tif") as tif:
        tif.write(rgb, tile=(128, 128), subifds=1)
        tif.write(rgb[::2, ::2], tile=(64, 64), subfiletype=1)
    with salient.Engine(fcn, batch_size=4, workers=1) as eng:
        item = eng.item(str(tmp_path / "s.tif"), whole=True, level=1)
        assert item.x.shape == (3, 128, 192)
        np.testing.assert_array_equal(item.image.pixels, rgb[::2, ::2].astype(np.float32) / 255)
        with pytest.raises(SalientError, match="level 5"):
            eng.item(str(tmp_path / "s.tif"), whole=True, level=5)
    s = salient.explain(fcn, salient.open_slide(tmp_path / "s.tif"), "gradcam", whole=True, level=1)
    assert s.map.shape == (128, 192)  # the Python surface: a slide's level at its native size, not tiles


@pytest.mark.parametrize(("flags", "message"), [(["--whole", "--tiles"], "exclude each other"),
                                                (["--level", "1"], "--level reads a pyramid level")])
def test_bad_flag_combinations_are_one_line(tmp_path, capsys, flags, message):
    PILImage.fromarray((ODD * 255).astype(np.uint8)).save(tmp_path / "odd.png")
    rc = cli.main(["explain", str(tmp_path / "odd.png"), "--method", "rise", *flags, "--model", spec("relu6"),
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_the_cli_writes_an_ome_zarr_group_per_map(tmp_path, capsys):
    big = (RNG.uniform(0, 1, (1100, 300, 3)) * 255).astype(np.uint8)
    PILImage.fromarray(big).save(tmp_path / "tall.png")
    out = tmp_path / "out"
    rc = cli.main(["explain", str(tmp_path / "tall.png"), "--method", "occlusion", "--set", "window=100",
                   "--set", "stride=100", "--whole", "--model", spec("relu6"), "--workers", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    df = read_results(out)
    assert list(df["status"]) == ["ok"] and int(df["index"].iloc[0]) == -1
    root = zarr.open_group(out / "saliency.zarr", mode="r")
    assert "maps" not in root or "occlusion" not in root["maps"]
    (key,) = list(root["items"].group_keys())
    node = root[f"items/{key}/occlusion"]
    ome = node.attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ome["datasets"]] == ["0", "1"]  # 1100 -> 550 (< 1024)
    assert node["0"].shape == (1100, 300) and node["1"].shape == (550, 150)
    m = read_map(out, df.iloc[0])
    assert m.shape == (1100, 300) and np.isfinite(m).all()
    with salient.Engine(toy(ConvBnReLU6(), size=32, score="logit"), batch_size=4, workers=1) as eng:
        ref = eng.explain(str(tmp_path / "tall.png"), "occlusion", whole=True, window=100, stride=100).map
    np.testing.assert_array_equal(m, ref)
