"""Bad values that pass a type check (issue 20, sections 3 and 6): each is refused before any work, with
one line naming the parameter; and the CPU fast paths (fusion, incremental) keep NaN inputs NaN.

CLI cases run ``salient.cli.main`` in-process on a 32 x 32 toy whose conv -> batch norm -> ReLU6 chains
the fast paths rewrite (``cli_toys:relu6``), and assert exit code 2, one line on stderr and no --out
folder; job cases run ``salient run`` on a YAML; Python cases assert a SalientError raised before the
engine ran anything.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from cli_toys import spec
from PIL import Image as PILImage
from toy_models import ConvBnReLU6, toy

import salient
from salient import cli
from salient.engine import fuse
from salient.engine.worker import Worker
from salient.errors import ItemError, SalientError
from salient.queries import BoxQuery, QueryFailure, RiseQuery, ScoreQuery

MODEL = spec("relu6")
FILL = "must be a fill name (zero, black, blur, mean) or a finite number, got"
RISE = ["--method", "rise", "--set", "n_masks=16", "--set", "cells=4"]
OCC = ["--method", "occlusion", "--set", "window=8", "--set", "stride=8"]
DIDA = ["--method", "dida", "--set", "grids=3,5", "--set", "weights=0.5,0.5"]

# Section 3: every method parameter that is a number used as an input value, made non-finite.
# (method, parameters, the one-line error)
NONFINITE = [
    ("rise", {"n_masks": 16, "cells": 4, "fill": "nan"}, f"rise: fill {FILL} 'nan'"),
    ("rise", {"n_masks": 16, "cells": 4, "fill": math.inf}, f"rise: fill {FILL} inf"),
    ("occlusion", {"window": 8, "stride": 8, "baseline": "nan"},
     "parameter 'baseline' of method occlusion must be finite, got 'nan'"),
    ("occlusion", {"window": 8, "stride": 8, "baseline": "inf"},
     "parameter 'baseline' of method occlusion must be finite, got 'inf'"),
    ("occlusion", {"window": 8, "stride": 8, "baseline": -math.inf},
     "parameter 'baseline' of method occlusion must be finite, got -inf"),
    ("dida", {"grids": (3, 5), "weights": (0.5, 0.5), "fill": "nan"}, f"dida: fill {FILL} 'nan'"),
    ("borex", {"iterations": 2, "prior.n_masks": 16, "fill": "nan"}, f"borex: fill {FILL} 'nan'"),
    ("borex", {"iterations": 2, "prior.n_masks": 16, "prior.fill": "nan"}, f"rise: fill {FILL} 'nan'"),
    ("gp", {"iterations": 2, "fill": "-inf"}, f"borex: fill {FILL} '-inf'"),
]

# Section 6 through the CLI: explain IMAGE --model MODEL <argv> -> (exit 2, a line holding the text)
CLI_CASES = {
    "seed -1": (RISE + ["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    "gradcam unknown layer": (["--method", "gradcam", "--layer", "nonexistent.layer"],
                              "gradcam: unknown layer 'nonexistent.layer'; layers with spatial output: "),
    "gradcampp unknown layer": (["--method", "gradcampp", "--layer", "nonexistent.layer"],
                                "gradcampp: unknown layer 'nonexistent.layer'"),
    "scorecam unknown layer": (["--method", "scorecam", "--layer", "nonexistent.layer"],
                               "scorecam: unknown layer 'nonexistent.layer'"),
    "borex prior layer": (["--method", "borex", "--prior", "gradcampp", "--set", "prior.layer=nonexistent.layer",
                           "--set", "iterations=2"],
                          "borex prior.*: gradcampp: unknown layer 'nonexistent.layer'"),
    "scorecam layer without a feature map": (["--method", "scorecam", "--layer", "head"],
                                             "scorecam: layer 'head' outputs shape (1, 3), not a feature map"),
    "dida weights nan": (DIDA + ["--set", "weights=nan,1"],
                         "parameter 'weights' of method dida must be finite, got 'nan,1'"),
    "dida weights negative": (DIDA + ["--set", "weights=-0.5,1"],
                              "dida: weights must be finite and >= 0, at least one > 0, got (-0.5, 1.0)"),
    "dida weights all zero": (DIDA + ["--set", "weights=0,0"], "dida: weights must be finite and >= 0"),
    "rise cells larger than the input": (RISE + ["--set", "cells=33"],
                                         "rise: cells must be at most the input's shorter side 32"),
    "n_masks inf": (RISE + ["--set", "n_masks=inf"],
                    "parameter 'n_masks' of method rise expects int like 4000, got 'inf'"),
    "n_masks 1e400": (RISE + ["--set", "n_masks=1e400"],
                      "parameter 'n_masks' of method rise expects int like 4000, got '1e400'"),
    "rise fill=nan": (RISE + ["--set", "fill=nan"], f"rise: fill {FILL} 'nan'"),
    "occlusion baseline=nan": (OCC + ["--set", "baseline=nan"],
                               "parameter 'baseline' of method occlusion must be finite, got 'nan'"),
    "occlusion baseline=inf": (OCC + ["--set", "baseline=inf"],
                               "parameter 'baseline' of method occlusion must be finite, got 'inf'"),
    "dida fill=nan": (DIDA + ["--set", "fill=nan"], f"dida: fill {FILL} 'nan'"),
    "borex fill=nan": (["--method", "borex", "--set", "iterations=2", "--set", "prior.n_masks=16", "--set",
                        "fill=nan"], f"borex: fill {FILL} 'nan'"),
}

# Section 6 through a job: methods / metrics of the YAML -> (exit 2, a line holding the text)
JOB_CASES = {
    "metrics substrate purple": ({"metrics": {"kinds": ["deletion"], "substrate": "purple"}},
                                 "metrics.substrate: substrate must be one of zero, black, blur, mean or a number, "
                                 "got 'purple'"),
    "metrics substrate nan": ({"metrics": {"kinds": ["deletion"], "substrate": float("nan")}},
                              "metrics.substrate: substrate must be a fill name (zero, black, blur, mean) or a "
                              "finite number, got nan"),
    "n_masks true": ({"methods": [{"name": "rise", "n_masks": True}]},
                     "methods.0: parameter 'n_masks' of method rise expects int like 4000, got True"),
    "n_masks .inf": ({"methods": [{"name": "rise", "n_masks": float("inf")}]},
                     "methods.0: parameter 'n_masks' of method rise expects int like 4000, got inf"),
    "grids true": ({"methods": [{"name": "dida", "grids": [True, 3], "weights": [1, 1]}]},
                   "methods.0: parameter 'grids' of method dida expects tuple"),
    "dida weights of the wrong length": ({"methods": [{"name": "dida", "grids": [3, 5], "weights": [1]}]},
                                         "methods.0: dida: 2 grid sizes but 1 weights"),
    "rise cells larger than the input": ({"methods": [{"name": "rise", "n_masks": 16, "cells": 33}]},
                                         "methods.0: rise: cells must be at most the input's shorter side 32"),
    "gradcam unknown layer": ({"methods": [{"name": "gradcam", "layer": "nonexistent.layer"}]},
                              "methods.0: gradcam: unknown layer 'nonexistent.layer'"),
}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    pixels = np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(d / "a.png")
    return d / "a.png"


def _one_line_error(capsys, argv: list, out) -> str:
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("salient"), err
    assert not out.exists(), "nothing may be written"
    return lines[0]


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_before_writing(case, photo, tmp_path, capsys):
    argv, text = CLI_CASES[case]
    out = tmp_path / "out"
    line = _one_line_error(capsys, ["explain", photo, "--model", MODEL, *argv, "--out", out], out)
    assert text in line


@pytest.mark.parametrize("case", sorted(JOB_CASES))
def test_job_refuses_before_writing(case, photo, tmp_path, capsys):
    changes, text = JOB_CASES[case]
    job = {"model": MODEL, "source": {"images": str(photo)}, "out": "out",
           "methods": [{"name": "occlusion", "window": 8, "stride": 8}], **changes}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    line = _one_line_error(capsys, ["run", path], tmp_path / "out")
    assert text in line


@pytest.fixture(scope="module")
def model():
    return toy(ConvBnReLU6(), size=32)


def _refused(eng: salient.Engine, image, method: str, **params) -> SalientError:
    """The SalientError of explaining ``image``, raised before the engine ran anything."""
    with pytest.raises(SalientError) as e:
        eng.explain(image, method, **params)
    assert not isinstance(e.value, ItemError), f"refused per item, not before any work: {e.value}"
    assert eng.summary().items == 0 and eng.n_forward == 0
    assert "\n" not in str(e.value)
    return e.value


@pytest.mark.parametrize("method, params, text", NONFINITE, ids=[f"{m}-{k}={p[k]}" for m, p, _ in NONFINITE
                                                                for k in p if k.endswith(("fill", "baseline"))])
def test_nonfinite_inputs_are_refused_alike_with_and_without_the_fast_paths(method, params, text, model, photo):
    messages = {}
    for fast in (True, False):
        with salient.Engine(model, workers=1, fuse=fast, incremental=fast) as eng:
            assert (eng.executor.workers[0].fused is not None) == fast
            messages[fast] = str(_refused(eng, photo, method, **params))
    assert messages[True] == messages[False]
    assert text in messages[True]


PY_CASES = {
    "n_masks=True": ("rise", {"n_masks": True}, "parameter 'n_masks' of method rise expects int like 4000, got True"),
    "p=True": ("rise", {"n_masks": 16, "cells": 4, "p": True}, "parameter 'p' of method rise expects float"),
    "weights (nan, 1)": ("dida", {"grids": (3, 5), "weights": (math.nan, 1)},
                         "parameter 'weights' of method dida must be finite"),
    "weights (-1, 2)": ("dida", {"grids": (3, 5), "weights": (-1, 2)}, "dida: weights must be finite and >= 0"),
    "cells=33": ("rise", {"n_masks": 16, "cells": 33}, "rise: cells must be at most the input's shorter side 32"),
    "gradcam layer": ("gradcam", {"layer": "nonexistent.layer"}, "gradcam: unknown layer 'nonexistent.layer'"),
    "gradcampp layer": ("gradcampp", {"layer": "stem@3"}, "gradcampp: layer 'stem' runs 1 time(s) per forward pass"),
    "seed=-1": ("rise", {"n_masks": 16, "cells": 4, "seed": -1}, "seed must be an integer >= 0, got -1"),
}


@pytest.mark.parametrize("case", sorted(PY_CASES))
def test_python_api_refuses_before_any_work(case, model, photo):
    method, params, text = PY_CASES[case]
    with salient.Engine(model, workers=1) as eng:
        assert text in str(_refused(eng, photo, method, **params))


def test_a_bad_metric_substrate_is_refused_before_any_work(model, photo):
    with salient.Engine(model, workers=1) as eng:
        with pytest.raises(SalientError, match="substrate must be a fill name .* or a finite number, got nan"):
            list(eng.explain_many([photo], "occlusion", metrics=("deletion",), substrate=math.nan, window=8, stride=8))
        assert eng.summary().items == 0


@pytest.mark.skipif(not fuse.available(), reason="this torch has no oneDNN fused convolution")
def test_the_fast_paths_give_nan_inputs_the_original_modules_scores(model, photo):
    """The root of section 3: the fused ReLU6 turns NaN into 0. An item holding NaN fails alike with and
    without the fast paths (fused, incremental), and finite samples that share a batch with its inputs
    keep the fast path's outputs bit for bit."""
    fast, plain = Worker(model, "cpu", 4), Worker(model, "cpu", 4, fuse=False)
    assert fast.fused is not None and fast.plan is not None
    x = model.preprocess(photo)
    bad = x.clone()
    bad[:, 12:16, 12:16] = math.nan
    for w in (fast, plain):
        w.put("ok", x)
        w.put("bad", bad)
    batch = bad[None].repeat(4, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # the cause: the fused ReLU6 turns NaN into 0, the original keeps it
        assert torch.isnan(model.module(batch)).all() and torch.isfinite(fast.fused(batch)).all()
    boxes = ((0, 8, 0, 8), (24, 32, 24, 32))  # NaN outside the boxes: the incremental plan's base holds it
    assert fast.plan.pays(boxes)
    runs = [[ScoreQuery("ok"), ScoreQuery("bad"), RiseQuery("bad", (0,), n=4, cells=4)],  # whole forwards
            [BoxQuery("bad", (0,), boxes=boxes), BoxQuery("ok", (0,), boxes=boxes, fill=0.5)]]  # incremental
    for queries in runs:
        got = {w: w.run(queries) for w in (fast, plain)}
        for q, a, b in zip(queries, got[fast], got[plain], strict=True):
            if q.item == "bad":
                assert isinstance(a, QueryFailure) and isinstance(b, QueryFailure), q
                assert a.reason == b.reason == "model returned NaN or infinite scores for item 'bad'"
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
                assert np.array_equal(a, fast.run([q])[0])  # the same bits as in a batch without NaN rows


@pytest.mark.parametrize("argv, text", [
    (["--method", "rise", "--set", "n_masks=64", "--set", "fill=nan"], f"rise: fill {FILL} 'nan'"),
    (["--method", "gradcam", "--layer", "nonexistent.layer"], "gradcam: unknown layer 'nonexistent.layer'"),
], ids=["rise fill=nan", "gradcam unknown layer"])
def test_the_real_model_refuses_too(argv, text, samples, tmp_path, capsys):
    """The issue's own commands, on the embedded EfficientNet-Lite0 (ReLU6 throughout: fused, NaN hid)."""
    photo = tmp_path / "chelsea.jpg"
    PILImage.fromarray((samples["chelsea"].pixels * 255).round().astype(np.uint8)).save(photo, quality=95)
    out = tmp_path / "out"
    assert text in _one_line_error(capsys, ["explain", photo, *argv, "--out", out], out)
