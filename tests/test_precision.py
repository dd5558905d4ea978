"""Precision, the kernel backend's choice and the GPU-only options, on a CPU (issue 16).

bf16/fp16 autocast runs on the CPU too, so the precision path is tested here: its maps differ from fp32 ones
(autocast really ran) but correlate, and stay the same bits whatever the worker count. The GPU-only options
fail with one line on a machine without a GPU; ``auto`` kernels fall back to torch with a log line.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import yaml
from cli_toys import spec
from PIL import Image as PILImage
from toy_models import ConvBnReLU6, toy

import salient
from salient import cli
from salient.engine import Engine
from salient.engine.worker import Worker
from salient.errors import SalientError
from salient.jobs.spec import load_spec
from salient.kernels import TORCH, kernels_for
from salient.queries import ItemContext, Query


@pytest.fixture(scope="module")
def model():
    return toy(ConvBnReLU6(n_classes=3), size=32, score="softmax")


@pytest.fixture(scope="module")
def image():
    return salient.Image(np.random.default_rng(3).random((32, 32, 3), dtype=np.float32), name="noise")


def rise_map(model, image, **opts) -> np.ndarray:
    with Engine(model, batch_size=4, **opts) as eng:
        return eng.explain(image, method="rise", n_masks=256, chunk=64, seed=1).map


def test_bf16_maps_differ_from_fp32_but_correlate_and_keep_their_bits_over_workers(model, image):
    fp32 = rise_map(model, image, workers=1)
    bf16 = rise_map(model, image, workers=1, precision="bf16")
    assert not np.array_equal(fp32, bf16)  # autocast ran
    assert np.corrcoef(fp32.ravel(), bf16.ravel())[0, 1] >= 0.99
    assert np.array_equal(rise_map(model, image, workers=2, precision="bf16"), bf16)
    fp16 = rise_map(model, image, workers=1, precision="fp16")
    assert np.corrcoef(fp32.ravel(), fp16.ravel())[0, 1] >= 0.99
    assert np.array_equal(rise_map(model, image, workers=1, precision="fp32"), fp32)


def test_the_fp32_fast_paths_are_off_at_another_precision(model):
    assert Worker(model, "cpu", 4).fused is not None
    w = Worker(model, "cpu", 4, precision="bf16")
    assert w.fused is None and w.plan is None
    assert w.stats()["precision"] == "bf16" and w.stats()["kernels"] == "torch"


@pytest.mark.parametrize(("opts", "message"), [
    ({"precision": "fp64"}, "precision 'fp64': unknown; use one of fp32, bf16, fp16"),
    ({"kernels": "cuda"}, "kernels 'cuda': unknown; use one of auto, torch, cupy"),
    ({"kernels": "cupy"}, "kernels: cupy needs CuPy on a CUDA device: this worker runs on cpu"),
    ({"cuda_graphs": True}, "cuda_graphs needs a CUDA device"),
])
def test_bad_gpu_options_are_one_line_errors(model, opts, message):
    with pytest.raises(SalientError, match=message.replace("(", r"\(")) as err:
        Engine(model, batch_size=4, **opts)
    assert "\n" not in str(err.value)


def test_auto_kernels_fall_back_to_torch_with_a_log_line_without_a_usable_cupy(caplog):
    assert kernels_for("cpu", "auto") is TORCH
    caplog.set_level(logging.INFO, logger="salient.kernels")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: auto picks CuPy where it is usable")
    assert kernels_for("cuda", "auto") is TORCH
    assert "torch kernels on cuda" in caplog.text
    with pytest.raises(SalientError, match="kernels: cupy needs CuPy on a CUDA device: "):
        kernels_for("cuda", "cupy")


class Recorder(Query):
    """One input per count; records when its inputs are built and when their scores come back."""

    def __init__(self, item, log, n):
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "targets", (0,))
        object.__setattr__(self, "log", log)
        object.__setattr__(self, "n", n)

    def n_inputs(self):
        return self.n

    def build(self, ctx: ItemContext, start, stop, out):
        self.log.append(("build", start))
        out.copy_(ctx.x.expand_as(out))

    def reduce(self, state, aux, scores):
        self.log.append(("scores", len(state) * 4))
        return super().reduce(state, aux, scores)


def test_a_batch_is_read_back_after_the_next_one_is_built(model):
    w = Worker(model, "cpu", 4)
    w.put("a", torch.zeros(3, 32, 32))
    log: list = []
    (out,) = w.run([Recorder("a", log, 12)])
    assert out.shape == (12, 1)
    assert log == [("build", 0), ("build", 4), ("scores", 0), ("build", 8), ("scores", 4), ("scores", 8)]


@pytest.fixture
def place(tmp_path):
    (tmp_path / "photos").mkdir()
    rgb = np.random.default_rng(0).integers(1, 256, (40, 50, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "photos" / "a.png")
    return tmp_path


def exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code)


def explain_argv(root, *more):
    return ["explain", str(root / "photos" / "a.png"), "--model", spec("relu6"), "--method", "occlusion", "--set",
            "window=8", "--set", "stride=8", "--batch-size", "4", "--out", str(root / "o"), *more]


@pytest.mark.parametrize(("more", "message"), [
    (["--precision", "fp64"], "invalid choice: 'fp64'"),
    (["--gpus-per-worker", "0"], "expected a number > 0, got '0'"),
    (["--kernels", "cupy"], "kernels: cupy needs CuPy on a CUDA device"),
    (["--cuda-graphs"], "cuda_graphs needs a CUDA device"),
])
def test_cli_bad_gpu_options_exit_2_and_write_nothing(place, capsys, more, message):
    assert exit_code(explain_argv(place, *more)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (place / "o").exists()


def test_cli_precision_is_claimed_by_the_store(place, capsys):
    assert exit_code(explain_argv(place, "--precision", "bf16")) == 0
    assert exit_code(explain_argv(place)) == 2  # the fp32 maps of the same settings are other maps
    assert "precision" in capsys.readouterr().err
    assert exit_code(explain_argv(place, "--precision", "bf16")) == 0


def job_spec(tmp_path, **executor):
    data = {"model": spec("relu6"), "source": {"images": "photos/*.png"},
            "methods": [{"name": "occlusion", "window": 8, "stride": 8}],
            "executor": {"batch_size": 4, **executor}, "out": "o"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "job.yaml"


def test_spec_precision_changes_the_hash_and_fp32_leaves_it(tmp_path):
    plain = load_spec(job_spec(tmp_path))
    assert load_spec(job_spec(tmp_path, precision="fp32")).spec_hash() == plain.spec_hash()
    assert load_spec(job_spec(tmp_path, precision="bf16")).spec_hash() != plain.spec_hash()
    opts = load_spec(job_spec(tmp_path, precision="bf16", kernels="torch", accelerator="H100")).executor.options()
    assert opts["precision"] == "bf16" and opts["kernels"] == "torch" and opts["accelerator"] == "H100"


@pytest.mark.parametrize(("executor", "field"), [
    ({"precision": "fp64"}, "executor.precision"), ({"kernels": "gpu"}, "executor.kernels"),
    ({"gpus_per_worker": 0}, "executor.gpus_per_worker"),
])
def test_spec_bad_gpu_options_name_their_field(tmp_path, executor, field):
    with pytest.raises(SalientError, match=field):
        load_spec(job_spec(tmp_path, **executor))
