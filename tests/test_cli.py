"""The ``salient`` command: outputs, the store, and every bad input (exit 2, one line, nothing written).

Runs ``salient.cli.main`` in-process on 32 x 32 toy models (``cli_toys``) and real files in tmp_path;
one subprocess checks the installed console script, one run uses the real model.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_toys import spec
from PIL import Image as PILImage

import salient
from salient import cli
from salient.jobs import read_results

LINEAR = spec("linear")
OCC = ["--method", "occlusion", "--set", "window=8", "--set", "stride=8", "--batch-size", "16"]
N_WINDOWS = 16  # 32 x 32 input, window 8, stride 8


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good images in several formats (name -> path) and bad files, written once."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = lambda h, w: rng.integers(1, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731 - no exact zeros
    out = {}
    PILImage.fromarray(rgb(40, 50)).save(out.setdefault("png", d / "rgb.png"))
    PILImage.fromarray(rgb(64, 48)).save(out.setdefault("jpeg", d / "photo.jpg"), quality=95)
    PILImage.fromarray(rgb(30, 36)[:, :, 0]).save(out.setdefault("gray", d / "gray.png"))
    rgba = np.dstack([rgb(33, 31), rng.integers(1, 256, (33, 31), dtype=np.uint8)])
    PILImage.fromarray(rgba).save(out.setdefault("rgba", d / "rgba.png"))
    deep = rng.integers(1, 65535, (27, 29), dtype=np.uint16)
    PILImage.fromarray(deep).save(out.setdefault("tiff16", d / "deep.tif"))
    assert PILImage.open(out["tiff16"]).mode.startswith("I;16")
    data = out["jpeg"].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "garbage.png").write_bytes(b"this is not an image at all")
    ihdr = b"IHDR" + (0).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    (d / "zero.png").write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + b"\0" * 4)
    (d / "folder.png").mkdir()
    for name in ("truncated.jpg", "empty.png", "garbage.png", "zero.png", "folder.png"):
        out[name.split(".")[0]] = d / name
    return out


GOOD = ("png", "jpeg", "gray", "rgba", "tiff16")


def test_explain_writes_pngs_store_and_lines(files, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "explain", *(files[k] for k in GOOD), "--model", LINEAR, *OCC, "--out", out)
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == len(GOOD)
    table = read_results(out)
    assert sorted(table["source"]) == sorted(str(files[k]) for k in GOOD)
    assert (table["status"] == "ok").all() and (table["method"] == "occlusion").all()
    assert (table["n_forward"] == 1 + N_WINDOWS).all()  # the preflight's pass is not counted
    maps = zarr.open_group(out / "saliency.zarr", mode="r")["maps/occlusion"]
    assert maps.shape == (len(GOOD), 32, 32)
    model = salient.load_model(LINEAR)
    with salient.Engine(model, batch_size=16) as eng:
        for _, row in table.iterrows():
            s = eng.explain(row["source"], method="occlusion", target="top1", window=8, stride=8)
            assert row["target"] == s.target and row["label"] == s.label == f"class_{s.target}"
            np.testing.assert_allclose(maps[int(row["index"])], s.map, rtol=1e-5, atol=1e-6)
            line = next(ln for ln in lines if ln.startswith(row["source"]))
            assert f"{s.label} ({s.target})" in line and "occlusion" in line and f"n_forward={1 + N_WINDOWS}" in line
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == len(GOOD)
    for k in GOOD:
        (png,) = [p for p in pngs if p.name.startswith(files[k].stem + "_occlusion_")]
        with PILImage.open(files[k]) as src, PILImage.open(png) as im:
            assert im.size == src.size and im.mode == "RGB"


def test_topk_panel_metrics_and_label_target(files, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "explain", files["png"], "--model", LINEAR, *OCC, "--target", "top2", "--metrics",
                          "--out", out)
    assert rc == 0, err
    model = salient.load_model(LINEAR)
    scores = model.module(model.preprocess(files["png"])[None])[0].detach().numpy()
    top2 = list(np.argsort(-scores)[:2])
    table = read_results(out)
    assert list(table["target"]) == top2
    np.testing.assert_allclose(table["base_score"], scores[top2], rtol=1e-4, atol=1e-5)  # batch of 16 vs 1
    assert np.isfinite(table["insertion_auc"]).all() and np.isfinite(table["deletion_auc"]).all()
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and all("insertion_auc=" in ln and "deletion_auc=" in ln for ln in lines)
    with PILImage.open(out / "overlays" / "rgb_occlusion_panel.png") as im:
        assert im.height == 256 + 22 and im.width > 3 * 256 * 50 / 40  # original + 2 overlays of 320 px
    assert len(list((out / "overlays").glob("rgb_occlusion_*-class-*.png"))) == 2
    # a label and a class id as targets
    for target, want in (("class_1", 1), ("2", 2)):
        o = tmp_path / f"t{want}"
        assert run(capsys, "explain", files["png"], "--model", LINEAR, *OCC, "--target", target, "--out", o)[0] == 0
        assert list(read_results(o)["target"]) == [want]
        assert not list((o / "overlays").glob("*panel*"))


def test_set_prior_layer_are_param_names():
    ns = cli.build_parser().parse_args(["explain", "x.png", "--method", "rise", "--set", "prior.n_masks=100",
                                         "--set", "cells = 5", "--prior", "gradcampp", "--layer", "_blocks.15"])
    assert cli.method_params(ns) == {"prior.n_masks": "100", "cells": "5", "prior": "gradcampp", "layer": "_blocks.15"}


def test_executor_options_pass_through(files, tmp_path, capsys, monkeypatch):
    seen = {}

    class Recording(salient.Engine):
        def __init__(self, model, **kw):
            seen.update(kw)
            super().__init__(model, **kw)

    monkeypatch.setattr(cli, "Engine", Recording)
    rc, _, err = run(capsys, "explain", files["png"], "--model", LINEAR, *OCC, "--workers", "2",
                     "--out", tmp_path / "o")
    assert rc == 0, err
    assert seen == {"executor": "local", "workers": 2, "batch_size": 16}


def test_duplicates_and_colliding_names(files, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        (d / "x.png").write_bytes(files["png"].read_bytes())
    out = tmp_path / "out"
    rc, stdout, _ = run(capsys, "explain", a / "x.png", b / "x.png", a / "x.png", "--model", LINEAR, *OCC,
                        "--out", out)
    assert rc == 0
    assert len(read_results(out)) == 2 and len(stdout.strip().splitlines()) == 2
    names = sorted(p.name.split("_")[0] for p in (out / "overlays").glob("*.png"))
    assert names == ["x", "x-2"]


def test_progress_bar_only_on_a_terminal(files, tmp_path, capsys, monkeypatch):
    rc, _, err = run(capsys, "explain", files["png"], "--model", LINEAR, *OCC, "--out", tmp_path / "o1")
    assert rc == 0 and "1/1" not in err and "\r" not in err

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert cli.main(["explain", str(files["png"]), "--model", LINEAR, *OCC, "--out", str(tmp_path / "o2")]) == 0
    assert "1/1" in tty.getvalue() and "item" in tty.getvalue()


def test_help_lists_registered_methods(capsys):
    rc, stdout, _ = run(capsys, "explain", "--help")
    assert rc == 0
    for name in salient.METHODS:
        assert name in stdout


def test_subcommands_hook(monkeypatch, capsys):
    def add_subcommands(sub):
        p = sub.add_parser("hello")
        p.set_defaults(func=lambda args: 3)

    monkeypatch.setitem(sys.modules, "salient.jobs.commands", types.SimpleNamespace(add_subcommands=add_subcommands))
    assert run(capsys, "hello")[0] == 3
    assert run(capsys, "explain", "--help")[0] == 0


# -- bad input: exit 2, one line naming the problem, OUT never created
BAD = {
    "missing file": (["{missing}"], [], "no such file"),
    "a directory": (["{folder}"], [], "not a regular file"),
    "empty file": (["{empty}"], [], "empty file"),
    "truncated jpeg": (["{truncated}"], [], "truncated"),
    "zero-sized png": (["{zero}"], [], "zero-sized"),
    "not an image": (["{garbage}"], [], "not a readable image"),
    "one bad among good": (["{png}", "{jpeg}", "{truncated}"], [], "truncated"),
    "unknown method": (["{png}"], ["--method", "nosuch"], "invalid choice: 'nosuch'"),
    "unknown parameter": (["{png}"], ["--set", "size=3"], "unknown parameter 'size' for method occlusion; valid:"),
    "ill-typed parameter": (["{png}"], ["--set", "window=big"], "parameter 'window' of method occlusion expects"),
    "ill-typed int": (["{png}"], ["--method", "rise", "--set", "n_masks=1.5"], "'n_masks' of method rise expects int"),
    "dotted key unknown to rise": (["{png}"], ["--method", "rise", "--set", "prior.n_masks=100"],
                                   "unknown parameter 'prior.n_masks'"),
    "--prior on rise": (["{png}"], ["--method", "rise", "--prior", "gradcampp"], "unknown parameter 'prior'"),
    "--set without =": (["{png}"], ["--set", "window"], "--set expects KEY=VALUE"),
    "window over the input": (["{png}"], ["--set", "window=40"], "larger than the input"),
    "target id out of range": (["{png}"], ["--target", "3"], "target class id 3 out of range [0, 2]"),
    "negative target id": (["{png}"], ["--target", "-1"], "out of range"),
    "unknown label": (["{png}"], ["--target", "zebra"], "unknown target label 'zebra'"),
    "topK over classes": (["{png}"], ["--target", "top4"], "top1 .. top3"),
    "unknown model spec": (["{png}"], ["--model", "resnet-9000"], "unknown model spec 'resnet-9000'"),
    "unimportable model": (["{png}"], ["--model", "no_such_pkg.mod:net"], "cannot import 'no_such_pkg.mod'"),
    "unknown model option": (["{png}"], ["--model", spec("linear", colour="red")], "unknown model option(s) colour"),
    "output not (N, classes)": (["{png}"], ["--model", spec("spatial")], "expected (N, classes)"),
    "NaN scores": (["{png}"], ["--model", spec("nan_always")], "NaN"),
    "batch size 0": (["{png}"], ["--batch-size", "0"], "expected a positive integer"),
    "unknown executor": (["{png}"], ["--executor", "mpi"], "invalid choice: 'mpi'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, files, tmp_path, capsys):
    images, extra, expect = BAD[case]
    paths = [p.format(missing=tmp_path / "missing.jpg", **{k: str(v) for k, v in files.items()}) for p in images]
    out = tmp_path / "out"
    base = ["--batch-size", "16"] if "--method" in extra else OCC
    argv = ["explain", *paths, "--model", LINEAR, *base, *extra, "--out", out]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert expect in err and "Traceback" not in err
    assert err.startswith("salient")
    assert not out.exists()
    assert stdout == ""


def test_out_is_a_file(files, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("keep me")
    rc, _, err = run(capsys, "explain", files["png"], "--model", LINEAR, *OCC, "--out", out)
    assert rc == 2 and "not a directory" in err and out.read_text() == "keep me"


def test_failure_mid_run_is_an_error_row(files, tmp_path, capsys):
    """Finite scores on the photo (preflight passes), NaN once a window is occluded: the item's row
    says error, no overlay is drawn, exit 2."""
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "explain", files["png"], "--model", spec("nan_masked"), *OCC, "--out", out)
    assert rc == 2 and stdout == ""
    assert "NaN" in err and "Traceback" not in err
    table = read_results(out)
    assert list(table["status"]) == ["error"] and "NaN" in table["error"][0]
    assert not (out / "overlays").exists()


def test_unexpected_error_is_one_line_exit_1(files, tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "load_model", boom)
    rc, _, err = run(capsys, "explain", files["png"], *OCC, "--out", tmp_path / "o")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "internal error: RuntimeError: boom second line" in err and "Traceback" not in err


def test_console_script_bad_input_is_one_line(tmp_path):
    """The installed ``salient`` entry point: exit 2 and exactly one stderr line (no warnings either)."""
    exe = Path(sys.executable).with_name("salient")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "salient"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    p = subprocess.run([*cmd, "explain", str(tmp_path / "nope.jpg"), "--method", "rise", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [f"salient: error: {tmp_path / 'nope.jpg'}: no such file"]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_real_model_end_to_end(samples, tmp_path, capsys):
    """The embedded EfficientNet-Lite0 on chelsea saved as JPEG: a cat class, a 224 x 224 map, a PNG at 451 x 300."""
    photo = tmp_path / "chelsea.jpg"
    PILImage.fromarray((samples["chelsea"].pixels * 255).round().astype(np.uint8)).save(photo, quality=95)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "explain", photo, "--method", "occlusion", "--set", "window=112", "--set",
                          "stride=112", "--batch-size", "8", "--out", out)
    assert rc == 0, err
    (row,) = read_results(out).itertuples()
    assert 281 <= row.target <= 285 and row.n_forward == 5  # a cat; 1 + 4 windows
    assert "cat" in row.label and row.label in stdout
    maps = zarr.open_group(out / "saliency.zarr", mode="r")["maps/occlusion"]
    assert maps.shape == (1, 224, 224) and np.isfinite(maps[0]).all() and np.abs(maps[0]).max() > 0
    (png,) = (out / "overlays").glob("*.png")
    with PILImage.open(png) as im:
        assert im.size == (451, 300)
