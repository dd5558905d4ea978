"""``salient demo-audit``: composites of the bundled photos with exact masks, audited with the real model.

Two objects are cut from scikit-image's photos with an elliptical mask (the cat of ``chelsea``,
labelled "Egyptian cat"; the cup of ``coffee``, labelled "espresso": the classes the embedded
EfficientNet-Lite0 gives them) and pasted, at 62% of the side, on the centre of six backgrounds
resized to 336 x 336 (the textures ``grass``, ``brick``, ``gravel``, and the photos ``rocket``,
``astronaut``, ``hubble_deep_field``): 12 items whose masks are exact by construction. The job runs
Grad-CAM++ and RISE (250 masks) with the localisation metrics and the context variants, then
``salient audit`` prints what it finds: on this model the astronaut's and the rocket's backgrounds
win over the object (the cat is a "punching bag", the cups a "bobsled" and a "drilling platform"),
and the object on black (only_fg) or on another item's background (mixed_rand) gets its own class
back: those items are flagged. About 3,200 forward passes, under two minutes on a 2-core CPU.

OUT must be new, empty or an earlier demo-audit's (its ``job.yaml`` starts with :data:`MARK`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..paths import check_out_dir
from .demo import _write_text, check_demo_out
from .spec import parse_spec

MARK = "# written by salient demo-audit (rerun or resume: salient run job.yaml)\n"
SIDE = 336
OBJECTS = {  # photo, (centre y, centre x, radius y, radius x) of the ellipse, label
    "cat": ("chelsea", (150, 200, 140, 160), "Egyptian cat"),
    "cup": ("coffee", (170, 300, 150, 210), "espresso"),
}
BACKGROUNDS = ("grass", "brick", "gravel", "rocket", "astronaut", "hubble_deep_field")
CONTEXT = ["only_fg", "no_fg", "mean_bg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next",
           "perturb:gaussian_noise:3", "perturb:blur:3", "perturb:jpeg:3"]
LOCALISATION = ("object_share", "pointing_game", "rank_accuracy", "mass_accuracy")


def _rgb(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)().astype(np.float64) / 255.0
    return np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3]


def composite(obj: str, bg: str) -> tuple[np.ndarray, np.ndarray]:
    """The composite of object ``obj`` on background ``bg``: uint8 RGB (SIDE, SIDE, 3) and its bool mask."""
    from skimage.transform import resize

    photo, (cy, cx, ry, rx), _ = OBJECTS[obj]
    crop = _rgb(photo)[cy - ry: cy + ry, cx - rx: cx + rx]
    yy, xx = np.mgrid[0: 2 * ry, 0: 2 * rx]
    ellipse = ((yy - ry) / ry) ** 2 + ((xx - rx) / rx) ** 2 <= 1
    scale = 0.62 * SIDE / max(crop.shape[:2])
    h, w = int(crop.shape[0] * scale), int(crop.shape[1] * scale)
    crop = resize(crop, (h, w), order=1, anti_aliasing=True)
    inside = resize(ellipse.astype(np.float64), (h, w), order=0) > 0.5
    out = resize(_rgb(bg), (SIDE, SIDE), order=1, anti_aliasing=True)
    mask = np.zeros((SIDE, SIDE), bool)
    y0, x0 = (SIDE - h) // 2, (SIDE - w) // 2
    out[y0: y0 + h, x0: x0 + w][inside] = crop[inside]
    mask[y0: y0 + h, x0: x0 + w] = inside
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8), mask


def items() -> list[tuple[str, str, str]]:
    """(stem, object, background) of every composite, in the manifest's order."""
    return [(f"{o}_on_{b}", o, b) for o in OBJECTS for b in BACKGROUNDS]


DEMO_METHODS = [{"name": "gradcampp"}, {"name": "rise", "n_masks": 250}]


def audit_spec(methods: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "model": "efficientnet-lite0", "source": {"manifest": "items/items.csv"}, "targets": "top1",
        "methods": methods or DEMO_METHODS,
        "metrics": list(LOCALISATION), "audit": {"context": CONTEXT}, "seed": 0, "out": ".",
    }


def audit_files(data: dict[str, Any]) -> dict[str, str]:
    rows = ["path,label,mask", *(f"{s}.png,{OBJECTS[o][2]},{s}_mask.png" for s, o, _ in items())]
    return {"job.yaml": MARK + yaml.safe_dump(data, sort_keys=False), "items/items.csv": "\n".join(rows) + "\n"}


def run_demo_audit(out: str | Path = "demo-audit", restart: bool = False, progress: bool | None = None,
                   echo: Callable[[str], None] = print, methods: list[dict[str, Any]] | None = None):
    """Write the composites and the job into ``out``, run it, print the audit; returns the Findings.
    ``methods``: other methods than the demo's (a shorter run)."""
    from PIL import Image as PILImage

    from ..audit.findings import audit_findings, write_findings
    from .runner import run_job

    out = Path(out)
    check_out_dir(out, "--out")
    data = audit_spec(methods)
    spec = parse_spec(data, out.resolve(), "demo-audit job")
    files = audit_files(data)
    check_demo_out(out, files, restart, MARK, "demo-audit")
    for rel, body in files.items():
        _write_text(out / rel, body)
    for stem, obj, bg in items():
        if not (out / "items" / f"{stem}_mask.png").exists():
            img, mask = composite(obj, bg)
            PILImage.fromarray(img).save(out / "items" / f"{stem}.png")
            PILImage.fromarray(mask.astype(np.uint8) * 255).save(out / "items" / f"{stem}_mask.png")
    echo(f"demo-audit: {len(items())} composites with exact masks -> {out} (rerun or resume: salient run "
         f"{out / 'job.yaml'})")
    summary = run_job(spec, restart=restart, progress=progress, echo=echo)
    for line in summary.lines()[:1]:
        echo(line)
    findings = audit_findings(out)
    where = write_findings(out, findings)
    for line in findings.lines():
        echo(line)
    echo(f"demo-audit: tables and overlays of the flagged items in {where}; compare the methods with "
         f"`salient compare {out} gradcampp rise --metric object_share`")
    return findings
