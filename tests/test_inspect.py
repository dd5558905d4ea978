"""Visual inspection: the recon method, candidates, the Siamese re-check, the anomaly metrics, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from inspect_toys import REGION
from PIL import Image as PILImage

import salient
from salient.cli import main
from salient.errors import SalientError
from salient.inspect.candidates import calibrate_threshold, find_candidates
from salient.inspect.pipeline import InspectSettings, inspect_items
from salient.metrics.anomaly import aupro, image_auroc, pixel_auroc

TOY = {"input_size": 32, "mean": "0,0,0", "std": "1,1,1", "output": "reconstruction"}


def _ae(name: str = "region_ae"):
    return salient.load_model(f"inspect_toys:{name}", **TOY)


def _grey(value: float, size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), value, np.float32)


def test_recon_map_is_zero_where_the_ae_reproduces_and_positive_where_it_does_not():
    img = np.random.default_rng(0).uniform(0.2, 0.8, (32, 32, 3)).astype(np.float32)
    s = salient.explain(_ae(), img, method="recon", sigma=0)
    y0, y1, x0, x1 = REGION
    inside = np.zeros((32, 32), bool)
    inside[y0:y1, x0:x1] = True
    assert s.map.shape == (32, 32) and not s.signed and s.label == "anomaly"
    assert np.all(s.map[~inside] == 0) and np.all(s.map[inside] > 0)
    assert np.allclose(s.map[inside], img.sum(axis=-1)[inside], atol=1e-6)  # Σ_c |x - 0|
    smooth = salient.explain(_ae(), img, method="recon", sigma=2)
    from scipy.ndimage import gaussian_filter

    assert np.allclose(smooth.map, gaussian_filter(s.map.astype(np.float64), 2, mode="reflect"), atol=1e-5)
    ssim = salient.explain(_ae(), img, method="recon", sigma=0, kind="ssim")
    assert ssim.map[inside].mean() > ssim.map[~inside].mean() + 0.2


def test_candidates_equal_the_region_the_ae_cannot_reproduce():
    part = _grey(0.0)
    part[REGION[0]:REGION[1], REGION[2]:REGION[3]] = 0.7
    r = inspect_items(_ae(), [part, _grey(0.0)], [_grey(0.0)] * 3,
                      settings=InspectSettings(sigma=0, opening=0, min_area=1), workers=1)
    c = r.candidates
    assert len(c) == 1 and tuple(c.iloc[0][["y0", "y1", "x0", "x1"]]) == REGION
    assert c.iloc[0]["area"] == 80 and c.iloc[0]["kept"]  # no embedding net: every candidate is kept
    assert np.isclose(r.images["score"][0], 2.1) and r.images["score"][1] == 0.0  # no candidate: score 0


def test_threshold_rules_and_component_filters():
    rng = np.random.default_rng(0)
    normals = [rng.normal(0, 1, (20, 20)) for _ in range(5)]
    v = np.concatenate([m.ravel() for m in normals])
    assert calibrate_threshold(normals, "percentile", 99) == pytest.approx(np.percentile(v, 99))
    assert calibrate_threshold(normals, "sigma", k=3) == pytest.approx(v.mean() + 3 * v.std())
    m = np.zeros((30, 30))
    m[2:4, 2:4] = 5  # 4 px: below min_area
    m[10:20, 10:15] = 5  # 50 px
    m[25, 25] = 9  # a speck: removed by the opening
    got = find_candidates(m, 1.0, opening=3, min_area=10)
    assert [(c.box, c.area, c.peak) for c in got] == [((10, 20, 10, 15), 50, 5.0)]
    for bad in ("median",):
        with pytest.raises(SalientError, match="threshold rule"):
            calibrate_threshold(normals, bad)


def _brute_auroc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _brute_aupro(maps, masks, limit):
    from scipy import ndimage

    regions = []
    for i, k in enumerate(masks):
        lab, n = ndimage.label(k, structure=np.ones((3, 3)))
        regions += [(i, lab == j) for j in range(1, n + 1)]
    normal = sum((~k).sum() for k in masks)
    pts = [(0.0, 0.0)]
    for t in sorted(set(np.concatenate([m.ravel() for m in maps])), reverse=True):
        fpr = sum(((m >= t) & ~k).sum() for m, k in zip(maps, masks, strict=True)) / normal
        pro = np.mean([((maps[i] >= t) & r).sum() / r.sum() for i, r in regions])
        pts.append((fpr, pro))
    x, y = np.array(pts).T
    xs = np.linspace(0, limit, 20001)
    return np.trapezoid(np.interp(xs, x, y), xs) / limit


def test_anomaly_metrics_equal_brute_force():
    rng = np.random.default_rng(1)
    maps = [np.round(rng.uniform(0, 1, (6, 7)), 1) for _ in range(3)]  # ties on purpose
    masks = [np.zeros((6, 7), bool) for _ in range(3)]
    masks[0][1:3, 1:4] = True
    masks[0][5, 6] = True
    masks[2][2:5, 3:5] = True
    for m, k in zip(maps, masks, strict=True):
        m[k] += 0.3
    s = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([k.ravel() for k in masks])
    assert pixel_auroc(maps, masks) == pytest.approx(_brute_auroc(s, y))
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, limit) == pytest.approx(_brute_aupro(maps, masks, limit), abs=1e-6)
    perfect = [k.astype(float) for k in masks]
    assert aupro(perfect, masks) == pytest.approx(1.0) and pixel_auroc(perfect, masks) == 1.0
    assert image_auroc([0.9, 0.1, 0.5], [True, False, True]) == 1.0
    assert np.isnan(image_auroc([0.9, 0.1], [True, True]))


def test_inspection_bad_input(tmp_path):
    with pytest.raises(SalientError, match="expected a reconstruction of its input"):
        _ae("shrinks")
    with pytest.raises(SalientError, match="must have one size"):
        inspect_items(_ae(), [_grey(0.1)], [_grey(0.1, 40)], workers=1)
    emb = salient.load_model("job_toys:linear", input_size=32, mean="0,0,0", std="1,1,1", output="embedding")
    with pytest.raises(SalientError, match="fewer than k = 5"):
        inspect_items(_ae(), [_grey(0.1)], [_grey(0.1)] * 3, emb, workers=1)
    with pytest.raises(SalientError, match="NaN or infinite"):
        inspect_items(_ae("nan_ae"), [_grey(0.95)], [_grey(0.1)] * 2, workers=1)
    with pytest.raises(SalientError, match="mask of shape"):
        inspect_items(_ae(), [_grey(0.1)], [_grey(0.1)] * 2, masks=[np.zeros((5, 5), bool)], workers=1)
    with pytest.raises(SalientError, match="explains models whose output is classes"):
        salient.explain(_ae(), _grey(0.1), method="rise")
    cls = salient.load_model("job_toys:linear", input_size=32, mean="0,0,0", std="1,1,1")
    with pytest.raises(SalientError, match="recon explains models whose output is reconstruction"):
        salient.explain(cls, _grey(0.1), method="recon")


def test_inspect_command_writes_store_tables_overlays_and_metrics(tmp_path, capsys):
    from salient.store import read_map, read_results

    part = (_grey(0.2) * 255).astype(np.uint8)
    part[REGION[0]:REGION[1], REGION[2]:REGION[3]] = 230
    PILImage.fromarray(part).save(tmp_path / "a.png")
    PILImage.fromarray((_grey(0.2) * 255).astype(np.uint8)).save(tmp_path / "ref.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[REGION[0]:REGION[1], REGION[2]:REGION[3]] = 255
    (tmp_path / "masks").mkdir()
    PILImage.fromarray(mask).save(tmp_path / "masks" / "a.png")
    out = tmp_path / "out"
    spec = "inspect_toys:region_ae?input_size=32&mean=0,0,0&std=1,1,1"
    code = main(["inspect", str(tmp_path / "a.png"), "--ae", spec,
                 "--normals", str(tmp_path / "ref.png"), "--masks", str(tmp_path / "masks" / "*.png"),
                 "--out", str(out), "--sigma", "0", "--min-area", "1", "--workers", "1"])
    text = capsys.readouterr().out
    assert code == 0 and "1 candidates" in text and "pixel_auroc: 1.0000" in text
    df = read_results(out)
    assert list(df["method"]) == ["recon"] and (df["status"] == "ok").all()
    assert read_map(out, df.iloc[0]).shape == (32, 32)
    import pandas as pd

    cand = pd.read_parquet(out / "inspect" / "candidates.parquet")
    assert cand["true"].tolist() == [True] and cand["kept"].tolist() == [True]
    assert len(list((out / "overlays").glob("*_recon.png"))) == 1
    from salient.report.html import build_report

    html = build_report(out).read_text()
    assert "<h2 id=inspect>Inspection</h2>" in html and "1 candidates: 1 kept by the re-check" in html
    assert main(["inspect", str(tmp_path / "a.png"), "--ae", "inspect_toys:region_ae?input_size=32",
                 "--normals", str(tmp_path / "nope.png"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_recheck_removes_false_candidates_on_planted_defect_textures(tmp_path):
    from salient.inspect.demo import run_demo_inspect

    found = run_demo_inspect(tmp_path / "demo", textures=("brick",), echo=lambda s: None, steps=(400, 300),
                             n_items=24)["brick"]
    assert found["pixel_auroc"] > 0.95 and found["aupro"] > 0.8
    assert found["candidates_false"] >= 4 and found["false_removed"] >= found["candidates_false"] / 2
    assert found["true_removed"] <= 0.1 * found["candidates_true"]
    assert (tmp_path / "demo" / "brick" / "inspect" / "metrics.json").is_file()


def test_a_job_runs_the_recon_method_into_the_store(tmp_path):
    from salient.jobs.runner import run_job
    from salient.jobs.spec import parse_spec
    from salient.store import read_map, read_results

    for i in range(3):
        PILImage.fromarray(np.full((32, 32, 3), 40 * (i + 1), np.uint8)).save(tmp_path / f"p{i}.png")
    spec = parse_spec({"model": {"name": "inspect_toys:region_ae", **TOY}, "source": {"images": str(tmp_path)},
                       "methods": [{"name": "recon", "sigma": 0}], "out": str(tmp_path / "out")})
    summary = run_job(spec, progress=False, echo=None)
    assert summary.counts["recon"] == {"ok": 3, "error": 0}
    df = read_results(tmp_path / "out")
    outside = np.ones((32, 32), bool)
    outside[REGION[0]:REGION[1], REGION[2]:REGION[3]] = False
    for _, row in df.iterrows():
        m = read_map(tmp_path / "out", row)
        assert (m[~outside] > 0).all() and (m[outside] == 0).all()
    assert set(df["label"]) == {"anomaly"}
    bad = parse_spec({"model": {"name": "inspect_toys:region_ae", **TOY}, "source": {"images": str(tmp_path)},
                      "methods": [{"name": "recon"}], "metrics": ["insertion"], "out": str(tmp_path / "o2")})
    with pytest.raises(SalientError, match="metrics: insertion judges class scores"):
        run_job(bad, progress=False, echo=None)
