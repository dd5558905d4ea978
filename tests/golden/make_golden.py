"""The golden set: every method's map, and the insertion/deletion curves of one map, for two
sample photos and a seeded random ResNet-18, with small fixed parameters.

``python tests/golden/make_golden.py`` recomputes the set (local executor) and writes
``tests/golden/expected.json``; ``tests/test_golden.py`` imports :func:`compute` and compares. Regenerate
only on purpose (a change that is meant to change maps), and say why in the commit.

Per array ``expected.json`` keeps: shape, dtype, the SHA-256 of the raw bytes (any bit changes it),
min and max, and a small copy (8 x 8 block means of a map, a curve's points as they are), rounded to
6 significant digits; per map also the target class and its base score; plus the machine fingerprint
(CPU capability and model, torch / torchvision / numpy versions, BLAS / oneDNN) the bits were made on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected.json"

MODEL_SPEC = "torchvision:resnet18?seed=0&input_size=112"  # random init under torch.manual_seed(0)
PHOTOS = ("chelsea", "coffee")  # skimage.data, uint8 arrays, given to the engine as they are
SEED = 0
TARGET = "top1"
ENGINE = {"batch_size": 4, "workers": 2, "device": "cpu"}  # fixed: the batch size changes the last bits
# key -> (method, params); keys are "<photo>/<key>" in the golden set
JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "rise": ("rise", {"n_masks": 64}),
    "dida": ("dida", {"grids": (3, 5, 7), "weights": (0.2, 0.3, 0.5)}),
    "occlusion": ("occlusion", {"window": (28, 28), "stride": (28, 28)}),
    "gradcam": ("gradcam", {}),  # default layer: the last spatial one (layer4)
    "gradcampp": ("gradcampp", {}),
    "scorecam": ("scorecam", {"layer": "layer3"}),  # 256 channels: layer4's 512 passes cost ~10 s
    "borex_rise": ("borex", {"prior": "rise", "iterations": 4, "prior.n_masks": 30}),
    "borex_gradcampp": ("borex", {"prior": "gradcampp", "iterations": 4}),
    "gp": ("gp", {"iterations": 4}),
}
ADAPTIVE = ("borex_rise", "borex_gradcampp", "gp")  # the next query depends on a GP fit: not bit-stable across CPUs
CURVE_OF = ("chelsea", "rise")  # the map whose curves are stored, as "<photo>/insertion", "<photo>/deletion"
CURVE_STEP = 392  # pixels per step at 112 x 112: 33 points
BLOCK = 8
DIGITS = 6


def config() -> dict[str, Any]:
    """What the golden set is made of (stored beside it, shown when the set no longer matches)."""
    return {"model": MODEL_SPEC, "photos": list(PHOTOS), "seed": SEED, "target": TARGET, "engine": ENGINE,
            "jobs": {k: [m, {p: list(v) if isinstance(v, tuple) else v for p, v in ps.items()}]
                     for k, (m, ps) in JOBS.items()},
            "curves": {"of": "/".join(CURVE_OF), "step": CURVE_STEP}, "block": BLOCK, "digits": DIGITS}


def fingerprint() -> dict[str, str]:
    """What decides the last bits of a float32 forward pass on this machine."""
    import torch
    import torchvision

    shown = torch.__config__.show()

    def setting(key: str) -> str:
        m = re.search(rf"\b{key}=([^,\n]*)", shown)
        return m.group(1).strip() if m else ""

    def line(prefix: str) -> str:
        return next((s.strip(" -") for s in shown.splitlines() if s.strip(" -").startswith(prefix)), "")

    cpu = ""
    try:
        cpu = next((s.split(":", 1)[1].strip() for s in Path("/proc/cpuinfo").read_text().splitlines()
                    if s.startswith("model name")), "")
    except OSError:  # not Linux
        cpu = platform.processor()
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "blas": setting("BLAS_INFO"),
        "use_mkl": setting("USE_MKL"),
        "use_mkldnn": setting("USE_MKLDNN"),
        "mkl": line("Intel(R) oneAPI Math Kernel Library") or line("Intel(R) Math Kernel Library"),
        "onednn": line("Intel(R) MKL-DNN") or line("oneDNN"),
    }


def photos() -> dict[str, Any]:
    import skimage.data

    import salient

    return {name: salient.load_image(getattr(skimage.data, name)(), name=name) for name in PHOTOS}


def compute(executor: str = "local", model: Any = None, timings: dict[str, float] | None = None,
            **engine_opts: Any) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """The golden set on ``executor`` ("local" or "ray"; Ray must already run or be startable).

    Returns (arrays, info): arrays "<photo>/<job>" (float32 (H, W) maps) and "<photo>/insertion|deletion"
    (float64 curve scores); info per map: target class and base score. ``timings`` (if given) receives
    seconds per job."""
    import salient
    from salient.engine import Task
    from salient.metrics import curve

    model = salient.load_model(MODEL_SPEC) if model is None else model
    imgs = photos()
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    with salient.Engine(model, executor=executor, **{**ENGINE, **engine_opts}) as eng:
        for job, (method, params) in JOBS.items():
            t0 = time.perf_counter()
            out = dict(eng.explain_many(list(imgs.items()), method, target=TARGET, seed=SEED, **params))
            for name in PHOTOS:
                res = out[name]
                if isinstance(res, Exception):
                    raise res
                (s,) = res
                arrays[f"{name}/{job}"] = s.map
                info[f"{name}/{job}"] = {"target": int(s.target), "base_score": float(s.base_score)}
            if timings is not None:
                timings[job] = time.perf_counter() - t0
        t0 = time.perf_counter()
        name, job = CURVE_OF
        item = eng.item(imgs[name])
        sal = arrays[f"{name}/{job}"]
        target = info[f"{name}/{job}"]["target"]
        tasks = [Task(kind, item, curve(item.id, item.size, sal, target, kind, step=CURVE_STEP))
                 for kind in ("insertion", "deletion")]
        for task, c in eng.run(tasks):
            if isinstance(c, Exception):
                raise c
            arrays[f"{name}/{task.key}"] = np.asarray(c.scores)
        if timings is not None:
            timings["curves"] = time.perf_counter() - t0
    return dict(sorted(arrays.items())), info


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def small(a: np.ndarray, block: int = BLOCK, digits: int = DIGITS) -> list:
    """A map's ``block`` x ``block`` means (edges that do not fill a block dropped), a 1-D array as it
    is, rounded to ``digits`` significant digits (computed in float64)."""
    x = np.asarray(a, dtype=np.float64)
    if x.ndim == 2:
        h, w = (x.shape[0] // block) * block, (x.shape[1] // block) * block
        x = x[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    return [float(f"{v:.{digits}g}") for v in x.ravel()] if x.ndim == 1 else [
        [float(f"{v:.{digits}g}") for v in row] for row in x]


def record(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": sha256(a), "min": float(np.min(a)),
            "max": float(np.max(a)), "small": small(a)}


def golden(arrays: dict[str, np.ndarray], info: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON document of a computed set."""
    return {"config": config(), "fingerprint": fingerprint(), "adaptive": list(ADAPTIVE),
            "arrays": {k: {**record(a), **info.get(k, {})} for k, a in arrays.items()}}


def dumps(doc: dict[str, Any]) -> str:
    """JSON with one line per array (diffs of expected.json then show which arrays changed)."""

    def block(d: dict[str, Any], indent: str) -> str:
        rows = ",\n".join(f"{indent}{json.dumps(k)}: {json.dumps(v)}" for k, v in d.items())
        return "{\n" + rows + "\n" + indent[1:] + "}"

    parts = [f" {json.dumps(k)}: {block(v, '  ') if isinstance(v, dict) else json.dumps(v)}" for k, v in doc.items()]
    return "{\n" + ",\n".join(parts) + "\n}\n"


def is_adaptive(key: str) -> bool:
    return key.split("/", 1)[1] in ADAPTIVE


def main() -> int:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    arrays, info = compute(timings=timings)
    doc = golden(arrays, info)
    EXPECTED.write_text(dumps(doc))
    print(f"wrote {EXPECTED} ({len(arrays)} arrays, {time.perf_counter() - t0:.1f} s; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
