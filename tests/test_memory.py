"""Memory with a bound: inputs that used to grow a run past gigabytes either run within a stated bound
or are refused with one line before anything is allocated (README, "Memory").

Each CLI case runs in a child process that reports its own peak RSS; a watcher kills the child as
soon as its peak passes the case's bound (so a regression fails fast instead of swapping). The bounds
are the child's measured peak plus a margin: the interpreter with torch and salient alone peaks at about
0.65 GB here, with the real model loaded 0.86 GB; the 100 MP PNG explained with Grad-CAM 1.47 GB (it was
6.6 GB). Before: n_masks=10^12, the billion laughs and --workers 64 passed 3 GB, cells=100000 asked for
4.66 TiB and --batch-size 100000 for 60 GB.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_toys import spec
from PIL import Image as PILImage

import salient
import salient.images as images
from salient.engine import memory
from salient.errors import short_repr
from salient.methods import rise as rise_module
from salient.methods.base import Request
from salient.methods.drive import first_queries

HERE = Path(__file__).parent
SMALL_MB = 1100  # a run refused before it allocates: the interpreter with torch, salient and a model
CHILD = """
import sys
from salient import cli
rc = cli.main(sys.argv[2:])
with open(sys.argv[1], "w") as f:  # VmHWM: getrusage's ru_maxrss keeps the forking parent's peak across exec
    f.write(str(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024))
sys.exit(rc)
"""


def _hwm_mb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def bounded(argv: list[str], limit_mb: int, cwd: Path, timeout: float = 300) -> tuple[int, str, int]:
    """Run ``salient ARGV`` in a child under a peak-RSS bound; returns (exit code, stderr, peak MB)."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    peak_file, err_file = cwd / "peak.txt", cwd / "stderr.txt"
    with open(err_file, "w") as err:
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(peak_file), *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=err, env={**os.environ, "PYTHONPATH": path})
        seen, t0 = 0, time.monotonic()
        while p.poll() is None:
            seen = max(seen, _hwm_mb(p.pid))
            if seen > limit_mb or time.monotonic() - t0 > timeout:
                p.kill()
                p.wait()
                pytest.fail(f"salient {' '.join(argv[:3])} ...: killed at a peak RSS of {seen} MB "
                            f"(bound {limit_mb} MB) after {time.monotonic() - t0:.0f} s")
            time.sleep(0.01)
    peak = int(peak_file.read_text()) if peak_file.exists() else seen
    return p.returncode, err_file.read_text(), max(peak, seen)


def one_error(rc: int, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("salient: error: ") and message in lines[0], lines


@pytest.fixture
def photo(tmp_path) -> Path:
    rgb = np.random.default_rng(0).integers(1, 256, (40, 50, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    return tmp_path / "a.png"


def explain(photo: Path, model: str, *more: str) -> list[str]:
    return ["explain", str(photo), "--model", model, *more, "--out", str(photo.parent / "o")]


REFUSED = {  # name -> (argv for the photo, the one line)
    "rise n_masks=10^12": (lambda ph: explain(ph, spec("linear"), "--method", "rise", "--set", "n_masks=1000000000000"),
                           "rise: n_masks must be at most 100,000,000"),
    "rise cells=100000": (lambda ph: explain(ph, spec("linear"), "--method", "rise", "--set", "cells=100000"),
                          "cells must be at most"),
    "local --workers 64": (lambda ph: explain(ph, spec("linear"), "--method", "rise", "--workers", "64"),
                           "workers must be at most "),
    "--batch-size 100000 at 224 x 224": (lambda ph: explain(ph, "efficientnet-lite0", "--method", "occlusion",
                                                            "--batch-size", "100000"),
                                         "batch size 100000 needs about"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unbounded_request_is_refused_before_it_allocates(case, photo):
    argv, message = REFUSED[case]
    rc, err, peak = bounded(argv(photo), SMALL_MB, photo.parent)
    one_error(rc, err, message)
    assert not (photo.parent / "o").exists()


BILLION_LAUGHS = """\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize("where", ["source", "source.images", "targets", "methods.0.n_masks", "model.labels"])
def test_billion_laughs_yaml_gives_one_short_line(where, tmp_path):
    """9 levels of 9 aliases (a 600-byte file; 387 million strings once expanded) under a field: the
    message quotes at most ~200 characters of it."""
    data: dict = {"model": {"name": spec("linear")}, "source": {"images": "*.png"},
                  "methods": [{"name": "rise"}], "out": "o"}
    field, *rest = where.split(".")
    parent, key = (data, field) if not rest else ((data[field][0] if field == "methods" else data[field]), rest[-1])
    parent[key] = "LAUGHS"
    text = BILLION_LAUGHS + yaml.safe_dump(data).replace("LAUGHS", "*i")
    assert len(text) < 1000
    (tmp_path / "job.yaml").write_text(text)
    rc, err, peak = bounded(["run", str(tmp_path / "job.yaml")], SMALL_MB, tmp_path)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and len(err) < 3000, err[:3000]
    assert not (tmp_path / "o").exists()


def write_big_png(path: Path, width: int, height: int) -> None:
    """An RGB PNG written row by row (never whole in memory): a smooth gradient with a bright square."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    x = np.arange(width)
    base = np.stack([x * 255 // width, np.full(width, 96), 255 - x * 255 // width], axis=1).astype(np.uint8)
    comp = zlib.compressobj(6)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for y in range(height):
            row = base.copy()
            if height // 3 <= y < height // 2:
                row[width // 3 : width // 2] = 250
            data = comp.compress(b"\0" + row.tobytes())
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", comp.flush()) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_huge_png_is_explained_within_a_bound(tmp_path):
    """A 10,000 x 10,000 PNG (100 MP, 2 MB on disk) with Grad-CAM on the real model: it used to peak
    at 6.6 GB; it is decoded once (400 MB in Pillow), reduced to 3334 x 3334 and drawn at that size."""
    png = tmp_path / "huge.png"
    write_big_png(png, 10_000, 10_000)
    assert png.stat().st_size < 2**22
    rc, err, peak = bounded(["explain", str(png), "--method", "gradcam", "--out", str(tmp_path / "o")], 1800, tmp_path)
    assert rc == 0, err
    (overlay,) = (tmp_path / "o" / "overlays").glob("*.png")
    with PILImage.open(overlay) as im:
        assert im.size == (3334, 3334)


# -- the mechanisms, in process


def test_rise_asks_for_masks_in_bounded_rounds_with_the_same_map(monkeypatch):
    req = Request("x", (224, 224), (0,), np.zeros(1, np.float32))
    first = first_queries(rise_module.rise(req, n_masks=10**8))
    assert len(first) == rise_module.ROUND_BYTES // (4 * 224 * 224)  # not the 6.25 million queries of 10^8 masks
    assert len(first_queries(rise_module.rise(req))) == 250  # the default 4000 masks: one round, as before
    model = salient.load_model(spec("linear"))
    img = np.random.default_rng(3).random((32, 32, 3), dtype=np.float32)
    with salient.Engine(model, batch_size=4, workers=1) as eng:
        one = eng.explain(img, "rise", n_masks=200, chunk=64, target=0).map
        monkeypatch.setattr(rise_module, "ROUND_BYTES", 3 * 4 * 32 * 32)  # rounds of 3 queries
        monkeypatch.setattr(rise_module, "ROUND_MIN", 1)
        rounds = eng.explain(img, "rise", n_masks=200, chunk=64, target=0).map
    assert np.array_equal(one, rounds)


def test_large_files_are_reduced_while_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    PILImage.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    PILImage.fromarray(rng.integers(0, 65535, (80, 100), dtype=np.uint16)).save(tmp_path / "deep.tif")
    PILImage.fromarray(rgb).convert("P", palette=PILImage.Palette.ADAPTIVE).save(tmp_path / "pal.png")
    small = images.load_image(tmp_path / "a.png").pixels
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    assert images.reduce_factor(100, 80) == 3
    png = images.load_image(tmp_path / "a.png").pixels
    expect = np.asarray(PILImage.fromarray(rgb).reduce(3)).astype(np.float32) / 255
    assert png.shape == (27, 34, 3) and np.array_equal(png, expect)
    for name in ("a.jpg", "deep.tif", "pal.png"):
        h, w, _ = images.load_image(tmp_path / name).pixels.shape
        assert h * w <= 1000 and w >= 25, name
    monkeypatch.setattr(images, "MAX_PIXELS", 8000)  # at the bound: read as it is
    assert np.array_equal(images.load_image(tmp_path / "a.png").pixels, small)


def test_batch_memory_is_checked_against_what_is_available(monkeypatch):
    model = salient.load_model("efficientnet-lite0")
    assert model.activation_bytes >= 96 * 112 * 112 * 4  # the widest layer of its second stage
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 10**9)
    with pytest.raises(salient.SalientError, match=r"batch size 4096 needs about .* choose a batch size of at most"):
        salient.Engine(model, batch_size=4096, workers=1)
    with pytest.raises(salient.SalientError, match="or fewer workers"):
        memory.check_fits(model, torch.device("cpu"), 512, workers=2)
    memory.check_fits(model, torch.device("cpu"), 8, workers=2)


def test_short_repr_is_bounded_and_cheap():
    laughs: list = ["lol"] * 9
    for _ in range(8):
        laughs = [laughs] * 9
    t0 = time.perf_counter()
    s = short_repr({"images": laughs, "n": 10**5000})
    assert len(s) <= 200 and s.startswith("{'images': [[[") and time.perf_counter() - t0 < 0.1
    assert len(short_repr("x" * 10**6)) <= 200 and "..." in short_repr("x" * 10**6)
    assert short_repr(object()).startswith("<object")
