"""``salient demo``: the sample photos, the real model, four methods, their metrics, the store,
PNG overlays, DiDA-View panels and a summary table, in a few minutes on a laptop CPU.

It writes a job spec to ``OUT/job.yaml`` and the photos to ``OUT/photos/`` with a manifest listing
them (``photos/photos.csv``: the job reads these files and no others), then runs that job (so
``salient run OUT/job.yaml`` reruns or resumes it, and ``salient show OUT`` summarises it).
OUT must be new, empty, or an earlier demo's output (its ``job.yaml`` starts with
:data:`DEMO_MARK`); anything else is refused before a file is written, and so is an earlier demo
with other settings (other photos or methods) unless ``restart``.

Forward-pass budget (at about 30 passes/s on a 2-core CPU), for 4 photos:
RISE 1000 masks (4 x 1001), DiDA with grids 7, 11, 15 for the top 3 classes (4 x 396),
Grad-CAM++ (one forward and backward each), BOREx on the Grad-CAM++ prior with 30 iterations
(4 x about 62), and insertion + deletion at 28 steps (step 1792 px) for each of the 24 maps
(24 x 58): about 7,200 passes, about 4 minutes. A method that is not installed is skipped with a note.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import SalientError
from ..methods import get_method
from ..paths import check_out_dir
from ..saliency import Saliency
from ..store import read_map, read_results
from .spec import parse_spec

DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEMO_GRIDS = (7, 11, 15)
DEMO_STEP = 1792  # insertion/deletion: 28 steps at 224 x 224
DEMO_MARK = "# written by salient demo (rerun or resume: salient run job.yaml)\n"
MANIFEST = "photos/photos.csv"  # the demo's items: its photos, listed (never whatever else lies in photos/)


def blend_weights(n: int) -> tuple[float, ...]:
    """DiDA's mixing weights for n grids, coarse to fine: alpha-blending the grid maps in order with
    opacity a_i = 1/(i+1) + 0.1 for the i-th after the first gives w_i = a_i · Π_{j>i} (1 − a_j)
    (w_0 with a_0 = 1). For n = 8 these are the paper's (0.044, ..., 0.225)."""
    a = [1.0] + [1.0 / (i + 1) + 0.1 for i in range(1, n)]
    w = [a[i] * float(np.prod([1.0 - a[j] for j in range(i + 1, n)])) for i in range(n)]
    return tuple(round(v, 4) for v in w)


def demo_methods() -> list[dict[str, Any]]:
    return [
        {"name": "rise", "n_masks": 1000},
        {"name": "dida", "grids": list(DEMO_GRIDS), "weights": list(blend_weights(len(DEMO_GRIDS))), "targets": "top3"},
        {"name": "gradcampp"},
        {"name": "borex", "prior": "gradcampp", "iterations": 30},
    ]


def available(methods: list[dict[str, Any]], echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """The methods that are registered and accept these parameters; a note for each one skipped."""
    keep = []
    for m in methods:
        params = {k: v for k, v in m.items() if k not in ("name", "targets")}
        try:
            get_method(m["name"]).check_params(params)
        except SalientError as e:
            echo(f"demo: skipping {m['name']} ({e})")
            continue
        keep.append(m)
    return keep


def _write_text(path: Path, text: str) -> None:
    """Write a whole file at once (a temp file renamed): a crash leaves the old one or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def demo_files(data: dict[str, Any], photos: tuple[str, ...]) -> dict[str, str]:
    """The demo's own text files (relative path -> content): the job spec and its manifest."""
    return {"job.yaml": DEMO_MARK + yaml.safe_dump(data, sort_keys=False),
            MANIFEST: "".join(f"{line}\n" for line in ("path", *(f"{n}.png" for n in photos)))}


def check_demo_out(out: Path, files: dict[str, str], restart: bool, mark: str = DEMO_MARK,
                   what: str = "demo") -> None:
    """Refuse, before anything is written, an OUT that is neither new, empty nor an earlier demo's
    output (its job.yaml starts with ``mark``), and (unless ``restart``) an earlier demo whose files
    differ from ``files``. ``what``: the command's name in the messages."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SalientError(f"{what}: --out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return

    def text(rel: str) -> str | None:
        try:
            return (out / rel).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    if not (text("job.yaml") or "").startswith(mark):
        raise SalientError(f"{what}: --out {out} is not empty and holds no earlier {what} (no job.yaml written by "
                           f"salient {what}); choose a new or empty folder")
    changed = [rel for rel, body in files.items() if text(rel) not in (None, body)]  # a missing one is written
    if changed and not restart:
        raise SalientError(f"{what}: {out} holds an earlier {what} with other settings ({', '.join(changed)} "
                           "differ); rerun with --restart to discard it, or choose another --out")


def write_photos(folder: Path, names: tuple[str, ...]) -> None:
    from ..data import sample_images
    from ..report.overlay import save_png, to_uint8

    folder.mkdir(parents=True, exist_ok=True)
    for im in sample_images(names):
        path = folder / f"{im.name}.png"
        if not path.exists():
            save_png(path, to_uint8(im.pixels))


def write_overlays(out: Path, echo: Callable[[str], None]) -> int:
    """One PNG per map under OUT/overlays/, and a DiDA-View panel per item for methods with K > 1."""
    try:
        from ..report import save_overlay, save_panel
    except ImportError as e:  # pragma: no cover - the report module is optional here
        echo(f"demo: no overlays ({e})")
        return 0
    from ..images import load_image

    df = read_results(out)
    ok = df[df["status"] == "ok"]
    folder = out / "overlays"
    folder.mkdir(exist_ok=True)
    n = 0
    for (item, method), g in ok.groupby(["item_id", "method"], sort=True):
        image = load_image(g["source"].iloc[0])
        m = get_method(str(method))
        maps = [Saliency(read_map(out, r), m.signed, str(method), int(r["target"]), str(r["label"]),
                         float(r["base_score"]), diverging=m.diverging) for _, r in g.iterrows()]
        stem = Path(str(item)).stem
        for s in maps:
            label = "".join(c if c.isalnum() else "-" for c in s.label)[:30].strip("-")
            save_overlay(folder / f"{stem}_{method}_{s.target}-{label}.png", image, s)
            n += 1
        if len(maps) > 1:
            save_panel(folder / f"{stem}_{method}_panel.png", image, maps)
            n += 1
    return n


def demo_spec(methods: list[dict[str, Any]], model: str | dict = "efficientnet-lite0",
              step: int | None = DEMO_STEP, batch_size: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": model, "source": {"manifest": MANIFEST}, "targets": "top1", "methods": methods,
        "metrics": {"kinds": ["insertion", "deletion"], "step": step}, "seed": 0, "out": ".",
    }
    if batch_size:
        spec["executor"] = {"batch_size": batch_size}
    return spec


def run_demo(out: str | Path = "demo", restart: bool = False, photos: tuple[str, ...] = DEMO_PHOTOS,
             methods: list[dict[str, Any]] | None = None, model: str | dict = "efficientnet-lite0",
             step: int | None = DEMO_STEP, batch_size: int | None = None, progress: bool | None = None,
             echo: Callable[[str], None] = print):
    """Run the demo into ``out`` (see the module docstring); returns the JobSummary."""
    from ..report.table import show_table
    from .runner import run_job

    out = Path(out)
    check_out_dir(out, "--out")
    chosen = available(methods if methods is not None else demo_methods(), echo)
    if not chosen:
        raise SalientError("demo: none of its methods is available")
    data = demo_spec(chosen, model, step, batch_size)
    spec = parse_spec(data, out.resolve(), "demo job")  # validated before anything is written
    files = demo_files(data, photos)
    check_demo_out(out, files, restart)
    for rel, body in files.items():  # job.yaml first: from here on OUT is recognisably the demo's
        _write_text(out / rel, body)
    write_photos(out / "photos", photos)
    if restart:  # the earlier demo's overlays go with its store
        for png in (out / "overlays").glob("*.png"):
            png.unlink()
    echo(f"demo: {len(photos)} photos, methods {', '.join(m['name'] for m in chosen)} -> {out} "
         f"(rerun or resume: salient run {out / 'job.yaml'})")
    summary = run_job(spec, restart=restart, progress=progress, echo=echo)
    n = write_overlays(out, echo)
    for line in summary.lines()[:1]:
        echo(line)
    for line in show_table(out):
        echo(line)
    echo(f"demo: {n} PNGs in {out / 'overlays'}")
    from ..report.html import build_report

    echo(f"demo: report {build_report(out)}")
    return summary
