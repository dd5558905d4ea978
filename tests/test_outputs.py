"""Outputs never mix (issue 20, section 5): ``explain`` into an OUT that holds maps of another model
or other settings, or a job's results, is refused; ``demo`` refuses a folder that is not its own and
reads only its own photos; a job never reads its own output as items. Each refusal: exit code 2,
one line, and every file of the earlier output unchanged, byte for byte (toy models, 32 x 32)."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_toys import spec
from PIL import Image as PILImage

from salient import cli
from salient.jobs import demo
from salient.store import read_results

LINEAR = spec("linear")
OCC = ["--method", "occlusion", "--set", "window=8", "--set", "stride=8", "--batch-size", "16"]


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def pngs(folder: Path, names, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        paths.append(folder / name)
        PILImage.fromarray(rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(rc: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("salient: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture()
def explained(tmp_path, capsys):
    """Two images explained into ``out``; returns (images, out, the store's files)."""
    images = pngs(tmp_path / "img", ["a.png", "b.png"])
    out = tmp_path / "out"
    rc, _, err = run(capsys, "explain", *images, "--model", LINEAR, *OCC, "--out", out)
    assert rc == 0, err
    return images, out, snapshot(out)


@pytest.mark.parametrize("change, says", [
    (["--set", "window=16"], "occlusion maps made with other settings (parameters.window [8] there, [16] here)"),
    (["--target", "1"], 'target "top1" there, "1" here'),
    (["--seed", "5"], "seed 0 there, 5 here"),
    (["--model", spec("region")], "maps of model cli_toys:linear?"),
    (["--model", spec("linear", score="softmax")], "score=softmax"),
], ids=["parameter", "target", "seed", "model", "model-option"])
def test_explain_with_other_settings_is_refused(explained, capsys, change, says):
    """Another model (or model option) or other method settings into the same OUT: one line naming
    what differs and the way out; the first run's maps, table and overlays unchanged."""
    images, out, before = explained
    model = [] if change[0] == "--model" else ["--model", LINEAR]
    rc, stdout, err = run(capsys, "explain", *images, *OCC, *model, *change, "--out", out)
    refused(rc, err, f"{out} holds", says, "another --out", "--restart")
    assert stdout == "" and snapshot(out) == before


def stored_maps(out: Path) -> np.ndarray:
    import zarr

    return zarr.open_group(out / "saliency.zarr", mode="r")["maps/occlusion"][:]


def test_explain_again_replaces_and_restart_discards(explained, capsys):
    """The same command again replaces the maps of the images OUT holds (at their rows, equal bit
    for bit: the table does not grow) and appends a new image; ``--restart`` with other settings
    starts over (the earlier maps, rows and overlays gone)."""
    images, out, before = explained
    first = stored_maps(out)
    (extra,) = pngs(images[0].parent, ["c.png"], seed=1)
    rc, _, err = run(capsys, "explain", images[1], extra, images[0], "--model", LINEAR, *OCC, "--out", out)
    assert rc == 0, err
    df = read_results(out)
    assert list(df["item_id"]) == [str(p) for p in [*images, extra]] and list(df["position"]) == [0, 1, 2]
    again = stored_maps(out)
    assert again.shape[0] == 3 and again[:2].tobytes() == first.tobytes()
    assert all(snapshot(out)[k] == v for k, v in before.items() if k.startswith("overlays/"))
    rc, _, err = run(capsys, "explain", images[0], "--model", LINEAR, *OCC, "--set", "window=16", "--restart",
                     "--out", out)
    assert rc == 0, err
    assert list(read_results(out)["item_id"]) == [str(images[0])] and stored_maps(out).shape[0] == 1
    overlays = [p.name for p in (out / "overlays").iterdir()]
    assert overlays and all(n.startswith("a_") for n in overlays)


def test_the_store_refuses_at_open(tmp_path):
    """The rule lives in the Store: what it records (model, a job's spec hash, a method's settings)
    against what a writer declares, before the writer writes anything."""
    from salient.errors import SalientError
    from salient.store import Store

    rise = {"parameters": {"n_masks": 8}, "target": "top1", "seed": 0}
    Store(tmp_path, "model-a", methods={"rise": rise}).close()
    before = snapshot(tmp_path)
    for kwargs, says in [({"model_id": "model-b"}, "maps of model model-a, not model-b"),
                         ({"attrs": {"spec_hash": "x"}}, "results not written by this job"),
                         ({"methods": {"rise": {**rise, "seed": 1}}}, "seed 0 there, 1 here")]:
        with pytest.raises(SalientError, match=re.escape(says)):
            Store(tmp_path, **{"model_id": "model-a", **kwargs})
        assert snapshot(tmp_path) == before
    Store(tmp_path, "model-a", methods={"rise": rise, "occlusion": {"seed": 0}}).close()  # same settings, new method
    job = tmp_path / "job"
    Store(job, "model-a", attrs={"spec_hash": "x"}).close()
    with pytest.raises(SalientError, match="the results of a job"):
        Store(job, "model-a", methods={"rise": rise})


def write_job(root: Path, source: str, out: str) -> Path:
    job = {"model": LINEAR, "source": {"images": source}, "targets": "top1",
           "methods": [{"name": "occlusion", "window": 8, "stride": 8}], "metrics": [],
           "executor": {"batch_size": 16}, "seed": 0, "out": out}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_explain_into_a_jobs_output_is_refused(tmp_path, capsys):
    """A job's store is the job's: explain (with or without --restart) adds nothing to it, and the
    job's rerun still finds only its own items."""
    images = pngs(tmp_path / "photos", ["a.png", "b.png"])
    job = write_job(tmp_path, "photos", "out")
    rc, _, err = run(capsys, "run", job, "--quiet")
    assert rc == 0, err
    out = tmp_path / "out"
    before = snapshot(out)
    for more in ([], ["--restart"]):
        rc, stdout, err = run(capsys, "explain", images[0], "--model", LINEAR, *OCC, "--out", out, *more)
        refused(rc, err, f"{out} holds the results of a job", "another --out")
        assert stdout == "" and snapshot(out) == before
    rc, stdout, err = run(capsys, "run", job, "--quiet")
    assert rc == 0 and "2 items (0 explained now, 2 done before)" in stdout, stdout + err


@pytest.mark.parametrize("source, out", [("data/**", "data/out"), ("data/**", "data")],
                         ids=["out-inside-the-glob", "the-glob-inside-out"])
def test_a_job_never_reads_its_own_output(tmp_path, capsys, source, out):
    """A source glob that spans the job's output folder skips it (or, where the glob's folder is the
    output folder, the store's folders in it): the items are the photos, and a rerun resumes."""
    pngs(tmp_path / "data", ["a.png", "b.png"])
    job = write_job(tmp_path, source, out)
    for expect in ("2 items (2 explained now, 0 done before)", "2 items (0 explained now, 2 done before)"):
        rc, stdout, err = run(capsys, "run", job, "--quiet")
        assert rc == 0 and expect in stdout, stdout + err
    df = read_results(tmp_path / out)
    assert list(df["item_id"]) == ["a.png", "b.png"] and (df["status"] == "ok").all()


TOY_DEMO = {"photos": ("chelsea", "coffee"), "methods": [{"name": "rise", "n_masks": 16, "chunk": 16}],
            "model": {"name": "cli_toys:linear", "input_size": 32, "mean": "0,0,0", "std": "1,1,1", "score": "logit"},
            "step": 256, "batch_size": 8}


@pytest.fixture()
def toy_demo(monkeypatch):
    """``salient demo`` on the toy model (fast); returns the real ``run_demo``."""
    real = demo.run_demo
    monkeypatch.setattr(demo, "run_demo", partial(real, **TOY_DEMO))
    return real


def test_demo_refuses_a_folder_that_is_not_its_own(tmp_path, capsys, toy_demo):
    """A user's folder with a job.yaml and photos of their own: refused (with --restart too),
    nothing written or lost."""
    d = tmp_path / "mine"
    pngs(d / "photos", ["holiday.png"])
    (d / "job.yaml").write_text("model: mine\n")
    before = snapshot(d)
    for more in ([], ["--restart"]):
        rc, _, err = run(capsys, "demo", "--out", d, *more)
        refused(rc, err, f"demo: --out {d} is not empty and holds no earlier demo", "new or empty folder")
        assert snapshot(d) == before


def kept(files: dict[str, bytes]) -> dict[str, bytes]:
    """The maps, photos, overlays and job files of a demo (not the table's parts or zarr metadata)."""
    return {k: v for k, v in files.items() if not (k.startswith("results/") or k.endswith("zarr.json"))}


def test_demo_reads_only_its_own_photos(tmp_path, capsys, toy_demo):
    """A PNG dropped into an earlier demo's photos/ is not adopted: the rerun resumes the demo's two
    photos (maps, overlays, files unchanged); a demo with other settings is refused without
    --restart, before anything is written."""
    from salient.errors import SalientError

    d = tmp_path / "demo"
    rc, _, err = run(capsys, "demo", "--out", d)
    assert rc == 0, err
    pngs(d / "photos", ["aaa.png"])  # sorts first
    before = snapshot(d)
    rc, _, err = run(capsys, "demo", "--out", d)
    assert rc == 0, err
    assert sorted(set(read_results(d)["item_id"])) == ["chelsea.png", "coffee.png"]
    after = snapshot(d)
    assert kept(after) == kept(before)
    with pytest.raises(SalientError, match=r"holds an earlier demo with other settings \(photos/photos.csv differ"):
        toy_demo(d, **{**TOY_DEMO, "photos": ("chelsea",)}, echo=lambda _: None)
    assert snapshot(d) == after
