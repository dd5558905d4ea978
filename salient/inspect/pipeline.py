"""``salient inspect``: reconstruction anomaly maps, candidate regions, the Siamese re-check, outputs.

1. The autoencoder's ``recon`` maps (:mod:`salient.methods.recon`) of the normal references and of the
   inspected items, through one engine (batched across items, sharded over its workers), at the
   autoencoder's input size.
2. The candidate threshold from the references' maps, then each item's candidates
   (:mod:`.candidates`).
3. The re-check (:mod:`.recheck`) through a second engine holding the embedding network: a candidate
   is kept if it looks unlike the same place on the references; without an embedding network every
   candidate is kept.
4. Image score = the peak of its kept candidates (0 when none).
Outputs in OUT: the maps in the store (``maps/recon``, unsigned) with a results row per item,
``OUT/inspect/candidates.parquet`` (item_id, position, candidate, y0, y1, x0, x1, area, peak, mean,
distance, kept, and ``true`` when masks are given: the region holds a defect pixel),
``OUT/inspect/images.parquet`` (item_id, position, score, candidates, kept), overlays with the kept
candidates outlined in red and the rejected ones in cyan (``OUT/overlays/<stem>_recon.png``), and,
with ground-truth masks, ``OUT/inspect/metrics.json``: pixel AUROC, AUPRO (FPR <= 0.3), image AUROC and
the candidates the re-check removed that were false / true (:mod:`salient.metrics.anomaly`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import Engine
from ..errors import SalientError
from ..images import Image, load_image
from ..models import Model
from ..models.model import resized
from .candidates import Candidate, calibrate_threshold, find_candidates
from .recheck import Embedder, RecheckSettings, calibrate_distance, crop_box

KEPT_RGB, REJECTED_RGB = (255, 40, 40), (0, 230, 255)
DISPLAY_SIDE = 256  # overlays of smaller images are enlarged to at least this side


@dataclass(frozen=True)
class InspectSettings:
    sigma: float = 4.0  # the recon map's Gaussian smoothing (px)
    kind: str = "abs"  # abs | ssim
    rule: str = "percentile"  # the candidate threshold: percentile | sigma
    q: float = 99.5
    k_sigma: float = 3.0
    opening: int = 3
    min_area: int = 16
    recheck: RecheckSettings = field(default_factory=RecheckSettings)


@dataclass
class InspectResult:
    threshold: float
    distance_threshold: float | None
    maps: list[np.ndarray]  # the recon map of each inspected item, in order
    candidates: Any  # DataFrame
    images: Any  # DataFrame
    metrics: dict[str, float] = field(default_factory=dict)


def pixels_at(image: Image, size: tuple[int, int]) -> np.ndarray:
    """The image's pixels (H, W, 3) resized to ``size`` as the models' preprocessing does."""
    return resized(image, size).permute(1, 2, 0).numpy()


def _names(images: list[Image], prefix: str) -> list[str]:
    return [f"{prefix}{i}:{im.source or im.name}" for i, im in enumerate(images)]


def _recon_maps(engine: Engine, named: list[tuple[str, Image]], settings: InspectSettings) -> dict[str, np.ndarray]:
    out = {}
    for key, res in engine.explain_many(named, method="recon", sigma=settings.sigma, kind=settings.kind):
        if isinstance(res, Exception):
            raise SalientError(f"recon of {key.split(':', 1)[1]}: {res}")
        out[key] = res[0].map
    return out


def inspect_items(ae: Model, parts: list[Any], normals: list[Any], embedding: Model | None = None,
                  settings: InspectSettings | None = None, masks: list[Any] | None = None,
                  executor: str = "local", engines: tuple[Engine, Engine | None] | None = None,
                  **executor_opts: Any) -> InspectResult:
    """Inspect ``parts`` against ``normals`` (images or paths); see the module docstring. ``masks``: per
    part a ground-truth defect mask (path or bool array at the part's size; None for a normal part).
    ``engines``: (autoencoder's, embedding net's) engines to use (and leave open) instead of new ones."""
    import pandas as pd

    settings = settings or InspectSettings()
    part_imgs, ref_imgs = [load_image(p) for p in parts], [load_image(p) for p in normals]
    if not part_imgs or not ref_imgs:
        raise SalientError("inspect: give at least one item and one normal reference")
    sizes = {im.size for im in ref_imgs}
    if len(sizes) > 1 or any(im.size not in sizes for im in part_imgs):
        raise SalientError(f"inspect: the items and the normal references must have one size; got "
                           f"{sorted({im.size for im in part_imgs + ref_imgs})}")
    if embedding is not None:
        settings.recheck.check(len(ref_imgs))
    if masks is not None and len(masks) != len(part_imgs):
        raise SalientError(f"inspect: {len(masks)} masks for {len(part_imgs)} items")
    pnames, rnames = _names(part_imgs, "part"), _names(ref_imgs, "ref")
    with _engine(engines, 0, ae, executor, executor_opts) as eng:
        maps = _recon_maps(eng, list(zip(rnames + pnames, ref_imgs + part_imgs, strict=True)), settings)
    thr = calibrate_threshold([maps[n] for n in rnames], settings.rule, settings.q, settings.k_sigma)
    cands = {n: find_candidates(maps[n], thr, settings.opening, settings.min_area) for n in pnames}
    size = tuple(next(iter(maps.values())).shape)
    rows = [{"name": n, "position": p, "candidate": i, "cand": c} for p, n in enumerate(pnames)
            for i, c in enumerate(cands[n])]
    tau = None
    if embedding is not None and rows:
        rs = settings.recheck
        pixels = {n: pixels_at(im, size) for n, im in zip(rnames + pnames, ref_imgs + part_imgs, strict=True)}
        for r in rows:
            r["crop"] = crop_box(r["cand"].box, rs.margin, size)
        rng = np.random.default_rng([rs.seed, 3])
        chosen = {n: [rnames[j] for j in sorted(rng.choice(len(rnames), rs.k, replace=False))] for n in pnames}
        with _engine(engines, 1, embedding, executor, executor_opts) as eng:
            emb = Embedder(eng)
            tau = calibrate_distance(emb, list(dict.fromkeys(r["crop"] for r in rows)), rnames, pixels, rs)
            emb.embed([(n, r["crop"]) for r in rows for n in (r["name"], *chosen[r["name"]])], pixels)
            for r in rows:
                b = r["crop"]
                r["distance"] = emb.distance((r["name"], b), [(ref, b) for ref in chosen[r["name"]]], rs.reduce)
                r["kept"] = r["distance"] > tau
    table = pd.DataFrame([_cand_row(r) for r in rows], columns=CAND_COLUMNS)
    kept = table[table["kept"].astype(bool)].groupby("position")
    images = pd.DataFrame({"item_id": [n.split(":", 1)[1] for n in pnames], "position": range(len(pnames)),
                           "score": kept["peak"].max().reindex(range(len(pnames)), fill_value=0.0).to_numpy(),
                           "candidates": [len(cands[n]) for n in pnames],
                           "kept": kept.size().reindex(range(len(pnames)), fill_value=0).to_numpy()})
    result = InspectResult(thr, tau, [maps[n] for n in pnames], table, images)
    if masks is not None:
        result.metrics = _metrics(result, [maps[n] for n in pnames], part_imgs, masks, size)
    return result


def _engine(engines: tuple | None, i: int, model: Model, executor: str, opts: dict[str, Any]) -> Any:
    """The given engine (left open), or a new one closed after use."""
    if engines is not None and engines[i] is not None:
        return contextlib.nullcontext(engines[i])
    return Engine(model, executor=executor, **opts)


CAND_COLUMNS = ["item_id", "position", "candidate", "y0", "y1", "x0", "x1", "area", "peak", "mean", "distance",
                "kept"]


def _cand_row(r: dict[str, Any]) -> dict[str, Any]:
    c: Candidate = r["cand"]
    y0, y1, x0, x1 = c.box
    return {"item_id": r["name"].split(":", 1)[1], "position": r["position"], "candidate": r["candidate"],
            "y0": y0, "y1": y1, "x0": x0, "x1": x1, "area": c.area, "peak": c.peak, "mean": c.mean,
            "distance": r.get("distance", float("nan")), "kept": bool(r.get("kept", True))}


def _gt_mask(mask: Any, image: Image, size: tuple[int, int]) -> np.ndarray:
    from ..object_mask import object_mask

    if mask is None:
        return np.zeros(size, bool)
    if isinstance(mask, np.ndarray):
        if mask.shape != image.size:
            raise SalientError(f"inspect: a mask of shape {mask.shape} for an item of size {image.size}")
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        return F.interpolate(t, size=size, mode="area")[0, 0].numpy() >= 0.5
    got = object_mask(str(mask), None, image.size, size)
    return np.zeros(size, bool) if got is None else got


def _metrics(result: InspectResult, maps: list[np.ndarray], images: list[Image], masks: list[Any],
             size: tuple[int, int]) -> dict[str, float]:
    from ..metrics.anomaly import aupro, image_auroc, pixel_auroc

    gts = [_gt_mask(m, im, size) for m, im in zip(masks, images, strict=True)]
    t = result.candidates
    true = np.array([gts[int(p)][y0:y1, x0:x1].any() for p, y0, y1, x0, x1 in
                     zip(t["position"], t["y0"], t["y1"], t["x0"], t["x1"], strict=True)], dtype=bool)
    result.candidates["true"] = true
    kept = t["kept"].to_numpy(bool)
    has_defect = [bool(g.any()) for g in gts]
    out = {"pixel_auroc": pixel_auroc(maps, gts),
           "aupro": aupro(maps, gts) if any(has_defect) else float("nan"),
           "image_auroc": image_auroc(result.images["score"], has_defect),
           "candidates_false": int((~true).sum()), "false_removed": int((~true & ~kept).sum()),
           "candidates_true": int(true.sum()), "true_removed": int((true & ~kept).sum())}
    return out


def outline(rgb: np.ndarray, box: tuple[int, int, int, int], colour: tuple[int, int, int], width: int = 2) -> None:
    """Draw a rectangle's outline into ``rgb`` (H, W, 3) uint8 in place (box in its pixel grid)."""
    y0, y1, x0, x1 = box
    h, w = rgb.shape[:2]
    y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    rgb[y0: min(y1, y0 + width), x0:x1] = colour
    rgb[max(y0, y1 - width): y1, x0:x1] = colour
    rgb[y0:y1, x0: min(x1, x0 + width)] = colour
    rgb[y0:y1, max(x0, x1 - width): x1] = colour


def write_inspection(out: Path, result: InspectResult, parts: list[Any], ae: Model, settings: InspectSettings) -> Path:
    """The store (maps/recon + a row per item), the candidates and images tables, overlays, metrics."""
    import pyarrow as pa

    from ..report.overlay import overlay, save_png
    from ..saliency import Saliency
    from ..store import Store
    from ..store.files import _write_table_atomic

    params = {"sigma": settings.sigma, "kind": settings.kind}
    claims = {"recon": {"method": "recon", "parameters": params, "target": 0, "seed": 0, "signed": False,
                        "label": "anomaly"}}
    d = out / "inspect"
    with Store(out, ae.name, {"command": "inspect", "settings": json.loads(json.dumps(asdict(settings)))},
               methods=claims) as store:
        for pos, part in enumerate(parts):
            img = load_image(part)
            m = result.maps[pos]
            s = Saliency(m, False, "recon", 0, "anomaly", 0.0, params=params, item_id=img.source or img.name)
            store.add(s.item_id, img.source or img.name, [s], position=pos)
            f = max(1, -(-DISPLAY_SIDE // min(img.size)))  # small patches are drawn larger (nearest)
            rgb = overlay(img, m, diverging=False).repeat(f, axis=0).repeat(f, axis=1)
            sy, sx = f * img.size[0] / m.shape[0], f * img.size[1] / m.shape[1]
            for _, c in result.candidates[result.candidates["position"] == pos].iterrows():
                box = (int(c["y0"] * sy), int(np.ceil(c["y1"] * sy)), int(c["x0"] * sx), int(np.ceil(c["x1"] * sx)))
                outline(rgb, box, KEPT_RGB if c["kept"] else REJECTED_RGB)
            save_png(out / "overlays" / f"{pos:04d}_{Path(str(s.item_id)).stem}_recon.png", rgb)
    d.mkdir(parents=True, exist_ok=True)
    _write_table_atomic(pa.Table.from_pandas(result.candidates, preserve_index=False), d / "candidates.parquet")
    _write_table_atomic(pa.Table.from_pandas(result.images, preserve_index=False), d / "images.parquet")
    summary = {"threshold": result.threshold, "distance_threshold": result.distance_threshold, **result.metrics}
    (d / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return d
