"""User errors that used to surface as internal errors (exit 1, a traceback, torch warnings): each is now a
one-line ``salient: error: ...`` with exit 2 from the CLI (a SalientError from the Python API), and
nothing is written. One case per input; the CLI cases run ``salient.cli.main`` on 32 x 32 toy models,
except where only a separate process shows the behaviour (warnings, Ray).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_toys import TOY_OPTIONS, spec
from PIL import Image as PILImage

import salient
from salient import cli

HERE = Path(__file__).parent
OCC = ["--method", "occlusion", "--set", "window=8", "--set", "stride=8", "--batch-size", "4"]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def place(tmp_path):
    """A folder with an image, a job's photos and a plain file (tmp_path/plain.txt)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = np.random.default_rng(0).integers(1, 256, (40, 50, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(photos / "a.png")
    (tmp_path / "plain.txt").write_text("not a folder")
    return tmp_path


@pytest.fixture
def read_only(tmp_path):
    """A directory this process cannot write to: a chmod 0555 folder, or (as root, whom modes do not stop)
    a read-only place such as /proc/sys."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(stat.S_IRUSR | stat.S_IXUSR)
        yield d
        d.chmod(stat.S_IRWXU)
        return
    for d in (Path("/proc/sys"), Path("/sys/kernel")):
        if d.is_dir() and not os.access(d, os.W_OK):
            yield d
            return
    pytest.skip("running as root and no read-only directory at hand")


def job(root: Path, out: str, model: str = spec("linear"), **executor) -> Path:
    data = {"model": model, "source": {"images": "photos/*.png"},
            "methods": [{"name": "occlusion", "window": 8, "stride": 8}], "executor": {"batch_size": 4, **executor},
            "out": out}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def explain(root: Path, model: str, *more: str) -> list[str]:
    return ["explain", str(root / "photos" / "a.png"), "--model", model, *OCC, "--out", str(root / "o"), *more]


VIDEO = "error_toys:video?frames=4&input_size=16&mean=0,0,0&std=1,1,1&score=logit"

# name -> (argv for a place, what the one line says); the read-only cases take the read-only folder too
CLI_CASES = {
    "factory raises": (lambda r, ro: explain(r, "error_toys:raises?" + TOY_OPTIONS),
                       "model factory 'error_toys:raises' raised RuntimeError: the weights server is down"),
    "factory needs arguments": (lambda r, ro: explain(r, "error_toys:needs?" + TOY_OPTIONS),
                                "model factory 'error_toys:needs' needs arguments (depth)"),
    "factory exits": (lambda r, ro: explain(r, "error_toys:exits?" + TOY_OPTIONS),
                      "model factory 'error_toys:exits' raised SystemExit"),
    "os:system as a model": (lambda r, ro: explain(r, "os:system"),
                             "os.system is part of Python itself, not a model factory"),
    "seed=abc in a model spec": (lambda r, ro: explain(r, spec("linear", seed="abc")),
                                 "seed must be an integer in [0, 2**63), got 'abc'"),
    "video net, still image": (lambda r, ro: explain(r, VIDEO), "is a video net (clips of 4 frames)"),
    "run: video net, still images": (lambda r, ro: ["run", str(job(r, "o", model=VIDEO))],
                                     "model: error_toys:video is a video net"),
    "run: 64 local workers": (lambda r, ro: ["run", str(job(r, "o", workers=64))],
                              "executor: workers must be at most"),
    "explain: out under a file": (lambda r, ro: [*explain(r, spec("linear"))[:-1], str(r / "plain.txt" / "o")],
                                  "plain.txt is a file, not a directory"),
    "run: out under a file": (lambda r, ro: ["run", str(job(r, "plain.txt/o"))],
                              "plain.txt is a file, not a directory"),
    "run: out in a read-only folder": (lambda r, ro: ["run", str(job(r, str(ro / "salient-out")))],
                                       "is not writable"),
    "demo: out under a file": (lambda r, ro: ["demo", "--out", str(r / "plain.txt" / "demo")],
                               "plain.txt is a file, not a directory"),
    "demo: out in a read-only folder": (lambda r, ro: ["demo", "--out", str(ro / "salient-demo")], "is not writable"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_user_error_is_one_line_exit_2_and_writes_nothing(case, place, request, capsys):
    argv_for, message = CLI_CASES[case]
    ro = request.getfixturevalue("read_only") if "read-only" in case else None
    argv = argv_for(place, ro)
    before = tree(place)
    rc = cli.main(argv)
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == 2, cap.err
    assert len(lines) == 1 and lines[0].startswith("salient: error: ") and message in lines[0], lines
    assert tree(place) == before  # nothing written (not even OUT)
    if ro is not None:
        assert not any(p.name.startswith("salient-") for p in ro.iterdir())


def console(*argv: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "salient", *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def test_torch_warnings_do_not_surround_the_one_line_error(place):
    """The factory makes torch warn, then its net fails on the check input: one line only, no warning."""
    p = console(*explain(place, "error_toys:warns?" + TOY_OPTIONS))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("salient: error: model error_toys:warns failed"), lines
    assert not (place / "o").exists()


@pytest.mark.ray
def test_ray_address_without_a_cluster(place):
    """``--address auto`` with no Ray cluster running on this machine (auto joins any that runs here)."""
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    if find_gcs_addresses() or find_bootstrap_address(None):
        pytest.skip("a Ray instance runs on this machine: --address auto would join it")
    p = console(*explain(place, spec("linear"), "--executor", "ray", "--address", "auto"), env={"RAY_ADDRESS": ""})
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("salient: error: Ray address 'auto': no Ray cluster there"), lines
    assert not (place / "o").exists()


# -- the Python API: SalientError, one line


def _no_gpu_device() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 where there is none)


API_CASES = {
    "load_image(12345)": (lambda: salient.load_image(12345), "load_image expects a file path"),
    "load_image(None)": (lambda: salient.load_image(None), "got NoneType"),
    "device='tpu9'": (lambda: salient.Engine(salient.load_model(spec("linear")), device="tpu9"),
                      "device 'tpu9': not a device"),
    "a GPU this machine lacks": (lambda: salient.Engine(salient.load_model(spec("linear")), device=_no_gpu_device()),
                                 "this machine has"),
    "load_model(seed='abc')": (lambda: salient.load_model(spec("linear"), seed="abc"), "seed must be an integer"),
    "load_model(seed=-1)": (lambda: salient.load_model(spec("linear"), seed=-1), "seed must be an integer"),
    "a still image for a video net": (lambda: salient.Engine(salient.load_model(VIDEO), batch_size=2).item(
        np.zeros((16, 16, 3), np.float32)), "is a video net"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_python_api_user_error_is_a_salient_error(case):
    call, message = API_CASES[case]
    with pytest.raises(salient.SalientError) as info:
        call()
    msg = str(info.value)
    assert message in msg and "\n" not in msg, msg
