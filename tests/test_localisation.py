"""Object masks at the map's resolution and the localisation metrics: known answers on constructed
maps and masks, Quantus 0.6 where the definitions agree, every bad input, and a job end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from job_toys import spec as toy_spec
from PIL import Image as PILImage

from salient.cli import main
from salient.errors import ItemError, SalientError
from salient.methods.drive import first_queries
from salient.methods.metric import METRICS, Undefined, metric_note
from salient.metrics import localisation as loc
from salient.object_mask import area_coverage, box_coverage, object_mask, read_mask
from salient.store import read_map, read_results


def png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    (PILImage.fromarray(arr) if mode is None else PILImage.fromarray(arr).convert(mode)).save(path)
    return str(path)


def rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# -- object masks
def test_box_is_scaled_by_area_coverage():
    # image 20 x 30 -> grid 10 x 15 (factor 1/2): x1 = 15 -> 7.5, column 7 half covered -> object
    got = object_mask(None, [0, 0, 15, 10], (20, 30), (10, 15))
    assert got.dtype == bool and got.shape == (10, 15)
    assert np.array_equal(got, rect((10, 15), 0, 5, 0, 8))
    # a third of a cell covered is not the object
    assert np.array_equal(object_mask(None, [0, 0, 14, 10], (20, 30), (10, 15)), rect((10, 15), 0, 5, 0, 7))


@pytest.mark.parametrize("image_size,size", [((64, 96), (32, 32)), ((20, 30), (32, 32)), ((7, 9), (32, 32)),
                                             ((224, 224), (224, 224))])
def test_mask_image_and_its_box_agree(tmp_path, image_size, size):
    """A rasterised box as a mask image gives the same cells as the box itself, whatever the ratio."""
    h, w = image_size
    box = [w // 5, h // 4, w - w // 3, h - 1]
    arr = np.zeros(image_size, np.uint8)
    arr[box[1] : box[3], box[0] : box[2]] = 255
    path = png(tmp_path / "m.png", arr)
    from_mask = object_mask(path, None, image_size, size)
    from_box = object_mask(None, box, image_size, size)
    assert from_mask.any() and np.array_equal(from_mask, from_box)


def test_area_coverage_is_the_area_average():
    """For whole-number ratios it is torch's area interpolation (the mean over each block)."""
    rng = np.random.default_rng(0)
    m = rng.random((96, 64)) < 0.3
    ref = F.interpolate(torch.from_numpy(m.astype(np.float64))[None, None], size=(24, 16), mode="area")[0, 0].numpy()
    assert np.allclose(area_coverage(m, (24, 16)), ref, atol=1e-12)
    # any ratio: the object's area is kept (Σ coverage · cell area = object pixels)
    cov = area_coverage(m, (37, 29))
    assert math.isclose(cov.sum() * (96 / 37) * (64 / 29), m.sum(), rel_tol=1e-9)
    assert math.isclose(box_coverage([3.5, 2.25, 40, 71], (96, 64), (37, 29)).sum() * (96 / 37) * (64 / 29),
                        (40 - 3.5) * (71 - 2.25), rel_tol=1e-9)


def test_tiny_object_keeps_its_best_cell(tmp_path):
    arr = np.zeros((100, 100), np.uint8)
    arr[57, 23] = 255
    got = object_mask(png(tmp_path / "dot.png", arr), None, (100, 100), (10, 10))
    assert np.array_equal(np.argwhere(got), [[5, 2]])


def test_non_binary_masks_threshold(tmp_path):
    grey = np.tile(np.arange(256, dtype=np.uint8), (2, 1))  # 2 x 256, values 0..255
    path = png(tmp_path / "grey.png", grey)
    assert np.array_equal(read_mask(path, (2, 256))[0], np.arange(256) >= 128)  # v/255 > 0.5
    assert np.array_equal(read_mask(path, (2, 256), threshold=0.25)[0], np.arange(256) > 63.75)
    assert np.array_equal(read_mask(path, (2, 256), threshold=0.0)[0], np.arange(256) > 0)
    rgb = np.stack([grey] * 3, -1)
    assert np.array_equal(read_mask(png(tmp_path / "rgb.png", rgb), (2, 256))[0], np.arange(256) >= 128)
    labels = (np.arange(12).reshape(3, 4) % 2).astype(np.uint8)  # a 0/1 label image
    assert np.array_equal(read_mask(png(tmp_path / "lab.png", labels), (3, 4)), labels == 1)
    p = PILImage.fromarray((labels * 3).astype(np.uint8), mode="L").convert("P")  # palette indices
    p.save(tmp_path / "pal.png")
    assert np.array_equal(read_mask(str(tmp_path / "pal.png"), (3, 4)), labels == 1)
    bits = png(tmp_path / "bits.png", labels * 255, mode="1")
    assert np.array_equal(read_mask(bits, (3, 4)), labels == 1)
    deep = np.tile(np.array([0, 30000, 40000, 65535], np.uint16), (2, 1))
    assert np.array_equal(read_mask(png(tmp_path / "deep.png", deep), (2, 4))[0], [False, False, True, True])


def test_bad_masks_and_boxes(tmp_path):
    png(tmp_path / "small.png", np.zeros((10, 30), np.uint8))
    with pytest.raises(ItemError, match=r"size 10x30 differs from its image's 20x30"):
        object_mask(str(tmp_path / "small.png"), None, (20, 30), (8, 8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ItemError, match="not a readable image"):
        object_mask(str(tmp_path / "bad.png"), None, (20, 30), (8, 8))
    with pytest.raises(ItemError, match="no such file"):
        object_mask(str(tmp_path / "none.png"), None, (20, 30), (8, 8))
    for box in ([0, 0, 31, 10], [-1, 0, 5, 5], [5, 5, 5, 9], [0, 12, 10, 4]):
        with pytest.raises(ItemError, match=r"box .*expected 0 <= x0 < x1 <= 30 and 0 <= y0 < y1 <= 20"):
            object_mask(None, box, (20, 30), (8, 8))
    with pytest.raises(SalientError, match=r"threshold must be in \[0, 1\)"):
        object_mask(None, [0, 0, 5, 5], (20, 30), (8, 8), threshold=1.0)
    assert object_mask(None, None, (20, 30), (8, 8)) is None
    empty = object_mask(png(tmp_path / "empty.png", np.zeros((20, 30), np.uint8)), None, (20, 30), (8, 8))
    assert empty.shape == (8, 8) and not empty.any()


# -- metrics: known answers
def test_shares_and_densities_known_answers():
    m = rect((10, 10), 0, 5, 0, 10)  # top half: 50 pixels
    s = 3.0 + rect((10, 10), 0, 10, 0, 4).astype(float) * 2  # 5 on columns 0..3, 3 elsewhere
    # A = minmax(ReLU(S)) = 1 on columns 0..3 (40 px, 20 of them in the mask), 0 elsewhere
    assert loc.object_share(s, m) == pytest.approx(0.5)
    assert loc.context_share(s, m) == pytest.approx(0.5)
    assert loc.object_density(s, m) == pytest.approx(20 / 50)
    assert loc.context_density(s, m) == pytest.approx(20 / 50)
    s2 = np.zeros((10, 10))
    s2[1, 1], s2[8, 8], s2[2, 2] = 1.0, 0.5, -7.0  # negative values are cut by the ReLU
    assert loc.object_share(s2, m) == pytest.approx(1 / 1.5)
    assert loc.context_share(s2, m) == pytest.approx(0.5 / 1.5)
    assert loc.object_density(s2, m) == pytest.approx(1 / 50)
    assert loc.context_density(s2, m) == pytest.approx(0.5 / 50)
    assert loc.mass_accuracy(s2, m) == pytest.approx(1 / 1.5)  # ReLU(S), not the signed sum 1 - 5.5


def test_pointing_game_tolerance_and_ties():
    m = rect((40, 40), 10, 20, 10, 20)
    s = np.zeros((40, 40))
    s[25, 15] = 1.0  # 6 rows below the mask's last row (19): distance 6
    assert loc.pointing_hit(s, m, 0) == 0.0
    assert loc.pointing_hit(s, m, 5.99) == 0.0
    assert loc.pointing_hit(s, m, 6) == 1.0
    assert loc.pointing_hit(s, m) == 1.0  # default 15 px
    s = np.zeros((40, 40))
    s[25, 25] = 1.0  # diagonal: nearest mask pixel (19, 19), distance 6·√2 = 8.49
    assert loc.pointing_hit(s, m, 8.4) == 0.0 and loc.pointing_hit(s, m, 8.5) == 1.0
    s[15, 15] = 1.0  # a tie: the first maximum in row-major order (15, 15) is inside
    assert loc.pointing_hit(s, m, 0) == 1.0
    s = np.zeros((40, 40))
    s[2, 2] = s[15, 15] = 1.0  # tie, first maximum outside: a miss (Quantus would count the tie inside)
    assert loc.pointing_hit(s, m, 0) == 0.0
    with pytest.raises(SalientError, match="tolerance must be >= 0"):
        loc.pointing_hit(s, m, -1)


def test_rank_accuracy_known_answer():
    m = rect((4, 4), 0, 1, 0, 4)  # K = 4: the first row
    s = np.arange(16, dtype=float)[::-1].reshape(4, 4)  # decreasing in row-major order: top 4 = first row
    assert loc.rank_accuracy(s, m) == 1.0
    s[0, 3], s[3, 3] = -1.0, 100.0  # one mask pixel falls out of the top 4, one context pixel enters
    assert loc.rank_accuracy(s, m) == 0.75
    assert loc.rank_accuracy(-s, m) == 0.25  # reversed: top 4 = (0, 3) (value 1) and the last row's 3 smallest


UNDEFINED_CASES = [
    (np.ones((6, 6)), None, loc.NO_MASK, loc.object_share),
    (np.eye(6), np.zeros((6, 6), bool), loc.EMPTY_MASK, loc.object_share),
    (np.eye(6), np.zeros((6, 6), bool), loc.EMPTY_MASK, loc.pointing_hit),
    (np.eye(6), np.zeros((6, 6), bool), loc.EMPTY_MASK, loc.rank_accuracy),
    (np.full((6, 6), -1.0), rect((6, 6), 0, 2, 0, 2), loc.NO_POSITIVE, loc.object_share),
    (np.full((6, 6), -1.0), rect((6, 6), 0, 2, 0, 2), loc.NO_POSITIVE, loc.mass_accuracy),
    (np.full((6, 6), 2.0), rect((6, 6), 0, 2, 0, 2), loc.CONSTANT, loc.context_share),
    (np.full((6, 6), 2.0), rect((6, 6), 0, 2, 0, 2), loc.CONSTANT, loc.pointing_hit),
    (np.full((6, 6), 2.0), rect((6, 6), 0, 2, 0, 2), loc.CONSTANT, loc.rank_accuracy),
    (np.eye(6), np.ones((6, 6), bool), loc.FULL_MASK, loc.context_density),
    (np.eye(6), np.ones((5, 6), bool), "differs from the map's", loc.object_density),
]


@pytest.mark.parametrize("s,m,reason,fn", UNDEFINED_CASES)
def test_undefined_values_are_nan_with_a_reason(s, m, reason, fn):
    v = fn(s, m)
    assert isinstance(v, Undefined) and math.isnan(v) and reason in v.reason


def test_full_mask_context_share_is_zero_not_nan():
    assert loc.context_share(np.eye(6), np.ones((6, 6), bool)) == 0.0


def test_registered_metrics_ask_for_no_forward_pass():
    s, m = np.eye(8), rect((8, 8), 0, 4, 0, 4)
    for name in ("object_share", "context_share", "object_density", "context_density", "pointing_game",
                 "rank_accuracy", "mass_accuracy"):
        metric = METRICS[name]
        assert "mask" in metric.options and metric.higher_is_better is not None
        assert first_queries(metric.run("x", (8, 8), s, 0, {"mask": m, "step": 3})) is None  # returns at once
    for mask, tol, hit in ((rect((8, 8), 6, 8, 6, 8), 0, 0.0), (rect((8, 8), 0, 1, 2, 3), 2, 1.0),
                           (rect((8, 8), 0, 1, 2, 3), 1, 0.0), (rect((8, 8), 0, 1, 2, 3), None, 1.0)):
        gen = METRICS["pointing_game"].run("x", (8, 8), s, 0, {"mask": mask, "tolerance": tol})
        with pytest.raises(StopIteration) as stop:  # the maximum of eye(8) first in row-major order: (0, 0)
            next(gen)
        assert stop.value.value == hit
    assert metric_note({"a": Undefined("x"), "b": 0.5, "c": Undefined("x"), "d": Undefined("y")}) == "x (a, c); y (d)"
    assert metric_note({"a": 1.0}) is None


# -- Quantus 0.6 where the definitions agree
def quantus_scores(metric_cls, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    n = len(maps)
    x = np.zeros((n, 1, *maps.shape[1:]), np.float32)
    metric = metric_cls(normalise=False, abs=False, disable_warnings=True)
    return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(n, int), a_batch=maps[:, None],
                             s_batch=masks[:, None].astype(np.float32), channel_first=True), dtype=np.float64)


def test_agrees_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(7)
    n, size = 24, (16, 20)
    maps = rng.random((n, *size)).astype(np.float32)  # continuous, non-negative: no ties, same definitions
    masks = np.zeros((n, *size), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, 12), rng.integers(0, 15)
        masks[i, y0 : y0 + rng.integers(2, 5), x0 : x0 + rng.integers(2, 6)] = True
    ours = {name: np.array([fn(a, m) for a, m in zip(maps, masks, strict=True)]) for name, fn in
            (("pg", lambda a, m: loc.pointing_hit(a, m, 0)), ("rank", loc.rank_accuracy), ("mass", loc.mass_accuracy))}
    assert 0 < ours["pg"].sum() < n  # both hits and misses occur
    assert np.array_equal(ours["pg"], quantus_scores(quantus.PointingGame, maps, masks))
    assert np.allclose(ours["rank"], quantus_scores(quantus.RelevanceRankAccuracy, maps, masks), atol=1e-12)
    assert np.allclose(ours["mass"], quantus_scores(quantus.RelevanceMassAccuracy, maps, masks), rtol=1e-5)
    # where they differ (the docstrings): a signed map's mass, a tie for the maximum, an empty mask
    signed = maps[0] - 0.5
    q_signed = quantus_scores(quantus.RelevanceMassAccuracy, signed[None], masks[:1])[0]
    assert not math.isclose(loc.mass_accuracy(signed, masks[0]), q_signed, rel_tol=1e-3)
    tie = np.zeros(size, np.float32)
    tie[0, 0] = tie[tuple(np.argwhere(masks[0])[0])] = 1.0
    assert quantus_scores(quantus.PointingGame, tie[None], masks[:1])[0] == 1.0
    assert loc.pointing_hit(tie, masks[0], 0) == 0.0
    empty = np.zeros((1, *size), bool)
    assert quantus_scores(quantus.PointingGame, maps[:1], empty)[0] == 1.0  # Quantus 0.6: NaN cast to True
    assert math.isnan(loc.pointing_hit(maps[0], empty[0], 0))


# -- a job end to end
def test_job_writes_localisation_columns(tmp_path):
    rng = np.random.default_rng(3)
    im = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    png(tmp_path / "im" / "x.png", im)
    obj = np.zeros((20, 30), np.uint8)
    obj[4:14, 6:20] = 255
    png(tmp_path / "im" / "obj.png", obj)
    png(tmp_path / "im" / "empty.png", np.zeros((20, 30), np.uint8))
    png(tmp_path / "im" / "small.png", np.zeros((10, 30), np.uint8))
    rows = [{"path": "im/x.png", "label": "a", "mask": "im/obj.png", "box": ""},
            {"path": "im/x.png", "label": "a", "mask": "", "box": "3,2,25,18"},
            {"path": "im/x.png", "label": "b", "mask": "", "box": ""},
            {"path": "im/x.png", "label": "b", "mask": "im/empty.png", "box": ""},
            {"path": "im/x.png", "label": "b", "mask": "im/small.png", "box": ""}]
    pd.DataFrame(rows).assign(id=[f"r{i}" for i in range(5)]).to_csv(tmp_path / "items.csv", index=False)
    metrics = ["insertion", "deletion", "object_share", "pointing_game"]
    job = {"model": toy_spec("linear"), "source": {"manifest": "items.csv"}, "targets": "top1",
           "methods": [{"name": "rise", "n_masks": 8, "chunk": 8}], "executor": {"batch_size": 16},
           "metrics": {"kinds": metrics, "tolerance": 2}, "seed": 0, "out": "out"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml"), "--quiet"]) == 0
    res = read_results(tmp_path / "out").set_index("item_id")
    assert {"object_share", "pointing_game", "context_share", "metric_note"} <= set(res.columns)
    assert list(res["status"]) == ["ok"] * 4 + ["error"] and "size 10x30 differs" in res.loc["r4", "error"]
    masks = {"r0": object_mask(str(tmp_path / "im" / "obj.png"), None, (20, 30), (32, 32)),
             "r1": object_mask(None, [3, 2, 25, 18], (20, 30), (32, 32))}
    for rid, m in masks.items():
        row = res.loc[rid]
        sal = read_map(tmp_path / "out", row)
        assert row["object_share"] == loc.object_share(sal, m) and row["pointing_game"] == loc.pointing_hit(sal, m, 2)
        assert np.isfinite(row["insertion_auc"]) and pd.isna(row["metric_note"])
        assert pd.isna(row["context_share"])  # not asked for: null
    assert np.isnan(res.loc["r2", "object_share"]) and np.isfinite(res.loc["r2", "insertion_auc"])
    assert res.loc["r2", "metric_note"] == "no object mask (object_share, pointing_game)"
    assert res.loc["r3", "metric_note"] == "empty object mask (object_share, pointing_game)"
    shown = []
    from salient.report.table import show_table

    shown = "\n".join(show_table(tmp_path / "out"))
    assert "object_share" in shown and "pointing_game" in shown and "context_share" not in shown
    assert "NaN in 1 ok row: no object mask (object_share, pointing_game)" in shown
