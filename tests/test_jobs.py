"""Jobs: a folder or a manifest into the store, bad items as error rows, strict mode, refusal of a
changed spec, --restart, the two-worker case, progress, show and the demo (toy models, 32 x 32)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
import zarr
from job_toys import OPTIONS
from job_toys import spec as toy_spec
from PIL import Image as PILImage

import salient
from salient.cli import main
from salient.errors import SalientError
from salient.jobs.progress import Progress
from salient.jobs.runner import run_job
from salient.store import read_map, read_results

METHODS = [{"name": "rise", "n_masks": 40, "chunk": 20}, {"name": "dida", "grids": [4, 8], "weights": [0.5, 0.5],
                                                          "targets": "top2"}]


def png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr).save(path)
    return path


def folder(root: Path) -> Path:
    """good (RGB, two sizes), grayscale, white (NaN scores), corrupt, truncated, empty, wrong shape."""
    rng = np.random.default_rng(0)
    d = root / "photos"
    png(d / "a_good.png", (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    png(d / "b_good.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8))
    png(d / "sub" / "c_gray.png", (rng.random((36, 30)) * 255).astype(np.uint8))
    png(d / "white.png", np.full((32, 32, 3), 255, np.uint8))
    (d / "corrupt.png").write_bytes(b"just some bytes, not an image")
    good = (d / "a_good.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    np.save(d / "wrong_shape.npy", np.zeros((4, 4, 5), np.uint8))
    (d / "notes.txt").write_text("not an image, not matched")
    return d


def write_job(root: Path, **fields) -> Path:
    job = {"model": toy_spec("nan_on_white"), "source": {"images": "photos"}, "targets": "top1",
           "methods": METHODS, "metrics": ["insertion", "deletion"], "executor": {"batch_size": 16},
           "seed": 3, "out": "out", **fields}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


EXPECTED = {  # item id -> status, reason fragment
    "a_good.png": ("ok", ""), "b_good.png": ("ok", ""), "sub/c_gray.png": ("ok", ""),
    "corrupt.png": ("error", "not a readable image"), "empty.jpg": ("error", "empty file (0 bytes)"),
    "truncated.png": ("error", "truncated"), "white.png": ("error", "NaN or infinite scores"),
    "wrong_shape.npy": ("error", "C in 1..4"),
}


@pytest.fixture(scope="module")
def folder_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    folder(root)
    summary = run_job(write_job(root), progress=False, echo=None)
    return root, summary


def test_folder_job_rows_statuses_and_reasons(folder_job):
    root, summary = folder_job
    df = read_results(root / "out")
    assert sorted(set(df["item_id"])) == sorted(EXPECTED)
    order = sorted(df.drop_duplicates("position")[["position", "item_id"]].itertuples(index=False))
    assert [i for _, i in order] == ["a_good.png", "b_good.png", "corrupt.png", "empty.jpg", "sub/c_gray.png",
                                     "truncated.png", "white.png", "wrong_shape.npy"]  # sorted per directory
    for item, (status, reason) in EXPECTED.items():
        rows = df[df["item_id"] == item]
        assert set(rows["status"]) == {status}, item
        if status == "ok":
            assert sorted(rows["method"]) == ["dida", "dida", "rise"]
            assert rows["insertion_auc"].notna().all() and rows["deletion_auc"].notna().all()
        else:
            assert sorted(rows["method"]) == ["dida", "rise"]
            assert all(reason in r and "\n" not in r for r in rows["error"]), (item, list(rows["error"]))
    assert len(df) == 3 * 3 + 5 * 2
    assert summary.counts == {"rise": {"ok": 3, "error": 5}, "dida": {"ok": 3, "error": 5}}
    assert summary.items == 8 and summary.complete


def test_folder_job_maps_equal_the_engine(folder_job):
    root, _ = folder_job
    df = read_results(root / "out")
    model = salient.load_model(toy_spec("nan_on_white"))
    with salient.Engine(model, batch_size=16) as eng:
        for item in ("a_good.png", "sub/c_gray.png"):
            path = root / "photos" / item
            rise = eng.explain(path, "rise", "top1", 3, n_masks=40, chunk=20)
            dida = eng.explain(path, "dida", "top2", 3, grids=(4, 8), weights=(0.5, 0.5))
            rows = df[df["item_id"] == item]
            got = {(r["method"], int(r["rank"])): read_map(root / "out", r) for _, r in rows.iterrows()}
            assert np.array_equal(got[("rise", 0)], rise.map)
            assert [int(t) for t in rows[rows["method"] == "dida"]["target"]] == [s.target for s in dida]
            for j, s in enumerate(dida):
                assert np.array_equal(got[("dida", j)], s.map)


def test_store_opens_with_xarray_names_and_attrs(folder_job):
    root, _ = folder_job
    ds = xr.open_zarr(root / "out" / "saliency.zarr", group="maps")
    assert ds["rise"].dims == ("item", "y", "x") and ds["rise"].shape == (8, 32, 32)
    assert ds["dida"].dims == ("item", "top2", "y", "x") and ds["dida"].shape == (8, 2, 32, 32)
    attrs = ds["rise"].attrs
    assert attrs["method"] == "rise" and attrs["parameters"]["n_masks"] == 40 and attrs["seed"] == 3
    assert attrs["target"] == "top1" and attrs["signed"] is False and ds["dida"].attrs["signed"] is True
    bad = read_results(root / "out").query("status == 'error'")["position"].unique()
    assert np.isnan(ds["rise"].values[bad]).all()
    good = read_results(root / "out").query("status == 'ok'")["position"].unique()
    assert np.isfinite(ds["rise"].values[good]).all()
    root_attrs = zarr.open_group(root / "out" / "saliency.zarr", mode="r").attrs
    assert root_attrs["complete"] is True and root_attrs["batch_size"] == 16 and len(root_attrs["spec_hash"]) == 16


def test_rerun_is_a_no_op_changed_spec_refused_restart_starts_over(folder_job, tmp_path):
    root, _ = folder_job
    before = read_results(root / "out").drop(columns=["seconds"])
    again = run_job(root / "job.yaml", progress=False, echo=None)
    assert again.skipped == 3 and again.done_now == 5  # the error items are retried
    pd.testing.assert_frame_equal(read_results(root / "out").drop(columns=["seconds"]), before)
    changed = write_job(tmp_path, out=str(root / "out"), seed=4)
    (tmp_path / "photos").symlink_to(root / "photos")
    with pytest.raises(SalientError, match=r"different job spec \(changed: seed\).*--restart"):
        run_job(changed, progress=False, echo=None)
    fresh = run_job(changed, restart=True, progress=False, echo=None)
    assert fresh.skipped == 0 and fresh.done_now == 8
    attrs = zarr.open_group(root / "out" / "saliency.zarr", mode="r")["maps/rise"].attrs
    assert attrs["seed"] == 4


def test_strict_and_exit_codes(tmp_path, capsys):
    folder(tmp_path)
    job = write_job(tmp_path, methods=[{"name": "rise", "n_masks": 8, "chunk": 8}], metrics=[])
    assert main(["run", str(job), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "rise: 3 ok, 5 error" in out and "empty.jpg" in out
    assert main(["run", str(job), "--strict", "--quiet"]) == 1
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "rise" in shown and "complete" in shown


def test_manifest_with_label_mask_and_box(tmp_path):
    rng = np.random.default_rng(1)
    png(tmp_path / "im" / "x.png", (rng.random((20, 30, 3)) * 255).astype(np.uint8))
    png(tmp_path / "im" / "y.png", (rng.random((20, 30, 3)) * 255).astype(np.uint8))
    png(tmp_path / "im" / "x_mask.png", np.zeros((20, 30), np.uint8))
    png(tmp_path / "im" / "small_mask.png", np.zeros((10, 30), np.uint8))
    rows = [
        {"path": "im/x.png", "label": "cat", "mask": "im/x_mask.png", "box": "1,2,10,12"},
        {"path": "im/y.png", "label": "dog", "mask": "im/small_mask.png", "box": ""},
        {"path": "im/x.png", "label": "cat", "mask": "", "box": "0,0,40,10"},
        {"path": "im/none.png", "label": "", "mask": "", "box": ""},
    ]
    for kind in ("csv", "parquet"):
        df = pd.DataFrame(rows).assign(id=[f"r{i}" for i in range(4)], extra=1)
        manifest = tmp_path / f"items.{kind}"
        df.to_csv(manifest, index=False) if kind == "csv" else df.to_parquet(manifest)
        job = write_job(tmp_path, model=toy_spec("linear"), source={"manifest": manifest.name}, out=f"out_{kind}",
                        methods=[{"name": "rise", "n_masks": 8, "chunk": 8}], metrics=[])
        summary = run_job(job, progress=False, echo=None)
        assert summary.counts["rise"] == {"ok": 1, "error": 3}
        res = read_results(tmp_path / f"out_{kind}").set_index("item_id")
        assert list(res.index) == ["r0", "r1", "r2", "r3"]
        assert res.loc["r0", "status"] == "ok" and res.loc["r0", "true_label"] == "cat"
        assert list(res.loc["r0", "box"]) == [1.0, 2.0, 10.0, 12.0]
        assert res.loc["r0", "mask"].endswith("im/x_mask.png")
        assert "size 10x30 differs from its image's 20x30" in res.loc["r1", "error"]
        assert res.loc["r1", "true_label"] == "dog"
        assert "box [0.0, 0.0, 40.0, 10.0]" in res.loc["r2", "error"]
        assert "no such file" in res.loc["r3", "error"]


BAD_SPECS = [  # (change to a good spec, field named in the message, what it says)
    ({"modle": "x"}, "modle", "unknown key"),
    ({"methods": [{"name": "rise", "n_mask": 10}]}, "methods.0", "unknown parameter 'n_mask'"),
    ({"methods": [{"name": "rise", "n_masks": "many"}]}, "methods.0", "expects int"),
    ({"methods": [{"name": "nope"}]}, "methods.0", "unknown method 'nope'"),
    ({"methods": []}, "methods", "at least 1"),
    ({"methods": [{"name": "rise"}, {"name": "rise"}]}, "methods.1", "listed twice"),
    ({"source": {"images": "p", "manifest": "m.csv"}}, "source", "exactly one of the keys"),
    ({"source": "photos"}, "source", "expected a mapping"),
    ({"source": {"images": "photos", "recursive": True}}, "source.recursive", "unknown key"),
    ({"metrics": ["insertion", "pointing"]}, "metrics.kinds", "unknown metric 'pointing'"),
    ({"executor": {"kind": "slurm"}}, "executor.kind", "'local' or 'ray'"),
    ({"executor": {"workers": 0}}, "executor.workers", "greater than or equal to 1"),
    ({"executor": {"batch": 8}}, "executor.batch", "unknown key"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"seed": "zero"}, "seed", "valid integer"),
    ({"out": None}, "out", "valid string"),
    ({"model": {"name": "efficientnet-lite0", "score": "prob"}}, "model.score", "'softmax', 'logit' or 'sigmoid'"),
    ({"store": {"compressor": "gzip"}}, "store.compressor", "'lz4', 'zstd' or 'none'"),
]


@pytest.mark.parametrize("change, field, says", BAD_SPECS, ids=[b[1] + ":" + b[2][:20] for b in BAD_SPECS])
def test_bad_spec_names_the_field(tmp_path, change, field, says):
    path = write_job(tmp_path, **change)
    with pytest.raises(SalientError) as err:
        run_job(path, progress=False, echo=None)
    msg = str(err.value)
    assert f"{field}: " in msg and says in msg, msg
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()  # nothing written before validation passed


def test_spec_errors_found_after_parsing_name_their_field(tmp_path):
    folder(tmp_path)
    cases = [
        ({"targets": "top9"}, "targets: "),
        ({"methods": [{"name": "rise", "targets": "zebra"}]}, "methods.0.targets: unknown target label"),
        ({"model": "job_toys:nothing"}, "model: "),
        ({"source": {"images": "no_such_dir/*.png"}}, "source.images: "),
        ({"source": {"manifest": "none.csv"}}, "source.manifest: "),
    ]
    for change, says in cases:
        with pytest.raises(SalientError, match=says.replace(".", r"\.")):
            run_job(write_job(tmp_path, **change), progress=False, echo=None)
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(SalientError, match="invalid YAML at line"):
        run_job(tmp_path / "bad.yaml", progress=False, echo=None)
    (tmp_path / "code.yaml").write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SalientError, match="invalid YAML"):
        run_job(tmp_path / "code.yaml", progress=False, echo=None)
    assert not (tmp_path / "out").exists()


def test_glob_sources_are_sorted_recursive_and_lazy(tmp_path):
    from salient.jobs.sources import ImageFolder, ImagesSpec

    for rel in ["b/2.png", "b/10.png", "a.png", "b/c/d.png", "b/.hidden.png", "z.jpg", "b/x.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    ids = lambda pat: [e.id for e in ImageFolder(ImagesSpec(images=pat), tmp_path).entries()]  # noqa: E731
    assert ids("**/*.png") == ["a.png", "b/10.png", "b/2.png", "b/c/d.png"]
    assert ids("*/*.png") == ["b/10.png", "b/2.png"]
    assert ids("b/**") == ["10.png", "2.png", "c/d.png", "x.txt"]
    assert ids(".") == ["a.png", "b/10.png", "b/2.png", "b/c/d.png", "z.jpg"]
    assert ids("b/[12]*.png") == ["10.png", "2.png"]
    assert ImageFolder(ImagesSpec(images="**/*.png"), tmp_path).count() == 4
    gen = ImageFolder(ImagesSpec(images="**/*"), tmp_path).entries()
    assert next(gen).id == "a.png"  # a generator: entries come one at a time


def test_progress_is_quiet_off_a_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    p = Progress()
    p.on_forward(100)
    p.item_done()
    p.close()
    assert buf.getvalue() == ""
    p = Progress(enabled=True, min_postfix_seconds=0)
    p.set_total(4)
    p.on_forward(50)
    p.item_done(error=True)
    p.close()
    shown = buf.getvalue()
    assert "1/4" in shown and "passes/s" in shown and "errors=1" in shown


def _many(root: Path, n: int = 18) -> None:
    rng = np.random.default_rng(2)
    for i in range(n):
        png(root / "photos" / f"p{i:02d}.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8))
    (root / "photos" / "p07.png").write_bytes(b"")  # one error in the middle of a shard


def _two_workers(root: Path, executor: dict) -> None:
    """Every (item, method, target) row of a multi-shard job is present, and every map is bitwise the
    one of a one-worker run: the maps of both workers reach the single writer."""
    _many(root)
    store = {"shard_items": 4, "flush_rows": 3}
    one = write_job(root, model=toy_spec("linear"), out="one", executor={"batch_size": 8, "workers": 1},
                    store=store, metrics=[])
    run_job(one, progress=False, echo=None)
    two = write_job(root, model=toy_spec("linear"), out="two", executor=executor, store=store, metrics=[])
    run_job(two, progress=False, echo=None)
    a, b = read_results(root / "one"), read_results(root / "two")
    assert len(b) == 17 * 3 + 2 and b["status"].value_counts().to_dict() == {"ok": 51, "error": 2}
    cols = ["item_id", "index", "method", "target", "rank", "status", "base_score"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    za = zarr.open_group(root / "one" / "saliency.zarr", mode="r")
    zb = zarr.open_group(root / "two" / "saliency.zarr", mode="r")
    for m in ("rise", "dida"):
        x, y = za[f"maps/{m}"][:], zb[f"maps/{m}"][:]
        assert x.shape == y.shape and x.shape[0] == 18, (m, x.shape, y.shape)
        differ = [i for i in range(18) if not np.array_equal(x[i], y[i], equal_nan=True)]
        assert not differ, (m, differ, float(np.nanmax(np.abs(x[differ] - y[differ]))))
        assert np.isfinite(y).all(axis=tuple(range(1, y.ndim))).sum() == 17


def test_two_local_workers_write_every_map(tmp_path):
    _two_workers(tmp_path, {"kind": "local", "workers": 2, "batch_size": 8})


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_workers_write_every_map(tmp_path, ray_session):
    _two_workers(tmp_path, {"kind": "ray", "workers": 2, "batch_size": 8})


def test_demo_with_a_toy_model(tmp_path, capsys):
    from salient.jobs.demo import demo_methods, run_demo

    methods = demo_methods()
    methods[0].update(n_masks=16, chunk=16)
    methods[1].update(grids=[4], weights=[1.0])
    methods[3].update(iterations=3)
    model = {"name": "job_toys:conv", **OPTIONS}  # a CAM needs a conv layer (a linear model is refused up front)
    run_demo(tmp_path / "demo", photos=("chelsea", "coffee"), methods=methods, model=model, step=64, batch_size=8)
    printed = capsys.readouterr().out
    assert "insertion_auc" in printed and "rise" in printed and "dida" in printed
    overlays = sorted(p.name for p in (tmp_path / "demo" / "overlays").iterdir())
    assert "chelsea_dida_panel.png" in overlays and any(n.startswith("coffee_rise_") for n in overlays)
    df = read_results(tmp_path / "demo")
    assert set(df.query("status == 'ok'")["method"]) >= {"rise", "dida"}
    again = run_job(tmp_path / "demo" / "job.yaml", progress=False, echo=None)  # the demo is a resumable job
    assert again.done_now == sum(1 for _ in df.query("status == 'error'").groupby("position"))



def test_a_changed_source_is_refused(tmp_path):
    folder(tmp_path)
    job = write_job(tmp_path, model=toy_spec("linear"), methods=[{"name": "rise", "n_masks": 8, "chunk": 8}],
                    metrics=[])
    run_job(job, progress=False, echo=None)
    png(tmp_path / "photos" / "a_aaa.png", np.zeros((8, 8, 3), np.uint8))  # sorts first: positions shift
    with pytest.raises(SalientError, match=r"position 0 is now 'a_aaa.png', but the store holds 'a_good.png'"):
        run_job(job, progress=False, echo=None)
    assert run_job(job, restart=True, progress=False, echo=None).done_now == 9


def test_a_job_killed_before_its_first_row_resumes(tmp_path):
    """The store's root carries the spec hash from its creation: a run killed before writing any row
    is resumed, not refused."""
    from salient.jobs.runner import plan_job, prepare_out
    from salient.jobs.spec import load_spec
    from salient.store import Store

    folder(tmp_path)
    job = write_job(tmp_path, model=toy_spec("linear"), methods=[{"name": "rise", "n_masks": 8, "chunk": 8}],
                    metrics=[])
    spec = load_spec(job)
    st = Store(tmp_path / "out", attrs={"spec_hash": spec.spec_hash(), "job": spec.results_dict()})
    st._lock.release()  # killed here
    assert prepare_out(plan_job(spec), restart=False)["spec_hash"] == spec.spec_hash()
    assert run_job(job, progress=False, echo=None).done_now == 8


def test_executor_fuse_reaches_the_engine_and_the_spec_hash(tmp_path):
    """``executor: {fuse: false}`` (or ``incremental: false``) turns a CPU fast path off (the last bits
    of every score differ, so the hash changes); the defaults leave the hash of older specs as it was."""
    from salient.jobs.spec import load_spec

    folder(tmp_path)
    default = load_spec(write_job(tmp_path, model=toy_spec("linear")))
    off = load_spec(write_job(tmp_path, model=toy_spec("linear"), executor={"fuse": False}))
    assert "fuse" not in default.executor.options() and off.executor.options()["fuse"] is False
    assert "fuse" not in default.results_dict() and off.results_dict()["fuse"] is False
    assert default.spec_hash() != off.spec_hash()
    inc = load_spec(write_job(tmp_path, model=toy_spec("linear"), executor={"incremental": False}))
    assert inc.executor.options() == {"incremental": False} and inc.spec_hash() not in (default.spec_hash(),
                                                                                        off.spec_hash())
    with pytest.raises(SalientError, match="executor.fuse: "):
        load_spec(write_job(tmp_path, model=toy_spec("linear"), executor={"fuse": "maybe"}))
