"""The Siamese re-check of candidate regions: does the region look like the same place on normal items?

For a candidate box b of an item I and K normal references R_1..R_K (the same K for every candidate
of an item, a seeded draw): crops of I and of every R_j at b grown by ``margin`` (a fraction of the
box's side on each side, clipped to the image), each resized (bilinear, antialiased) to the embedding
network's input on the worker and embedded by it (one engine query per image, one input per crop).
With e = E(crop) / ‖E(crop)‖, d(b) = min_j ‖e_I − e_{R_j}‖ (``reduce="mean"``: the mean over j).
The candidate is kept if d(b) > τ, τ calibrated on normal–normal pairs: for up to
``calibration_boxes`` candidate boxes (a seeded draw), each of the first ``K + 1`` references (``K``
when there are only K) against the others at that box (leave one out, the same rule), τ = the
``q``-th percentile (default 99) of those distances.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..engine import Engine, Task
from ..errors import ItemError, SalientError
from ..item import Item
from ..queries.inspection import CropQuery


@dataclass(frozen=True)
class RecheckSettings:
    k: int = 5
    margin: float = 0.25
    reduce: str = "min"
    q: float = 99.0
    calibration_boxes: int = 64
    seed: int = 0

    def check(self, n_references: int) -> None:
        if self.k < 1:
            raise SalientError(f"re-check: k must be >= 1, got {self.k}")
        if n_references < max(self.k, 2):
            raise SalientError(f"re-check: {n_references} normal references, fewer than k = {self.k} "
                               "(and at least 2 are needed to calibrate)")
        if self.reduce not in ("min", "mean"):
            raise SalientError(f"re-check: reduce must be min or mean, got {self.reduce!r}")
        if not 0 <= self.margin <= 2:
            raise SalientError(f"re-check: margin must be in [0, 2], got {self.margin}")
        if not 0 < self.q < 100:
            raise SalientError(f"re-check: q must be in (0, 100), got {self.q}")


def crop_box(box: tuple[int, int, int, int], margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box grown by ``margin`` x its side on each side, clipped to an image of ``size``."""
    y0, y1, x0, x1 = box
    my, mx = round((y1 - y0) * margin), round((x1 - x0) * margin)
    return max(0, y0 - my), min(size[0], y1 + my), max(0, x0 - mx), min(size[1], x1 + mx)


def _embed_gen(item_id: str, boxes: tuple[tuple[int, int, int, int], ...], size: tuple[int, int]):
    (vecs,) = yield [CropQuery(item_id, boxes=boxes, size=size)]
    v = np.asarray(vecs, dtype=np.float64).reshape(len(boxes), -1)
    if not np.isfinite(v).all():
        raise ItemError(f"the embedding network returned NaN or infinite values for {item_id!r}")
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class Embedder:
    """Crops of pixel images (H, W, 3) in [0, 1] at boxes, embedded by the network of ``engine`` (one
    query per image holding all its crops, cut and resized on the worker); cached."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model = engine.model
        self.cache: dict[tuple[str, tuple[int, int, int, int]], np.ndarray] = {}

    def embed(self, wanted: list[tuple[str, tuple[int, int, int, int]]], pixels: dict[str, np.ndarray]) -> None:
        """Embed every (image name, box) of ``wanted`` not cached yet, batched through the engine."""
        by_image: dict[str, list[tuple[int, int, int, int]]] = {}
        for name, box in dict.fromkeys(k for k in wanted if k not in self.cache):
            by_image.setdefault(name, []).append(tuple(int(v) for v in box))
        size = tuple(int(v) for v in self.model.input_size)

        def tasks() -> Iterator[Task]:
            for name, boxes in by_image.items():
                x = torch.from_numpy(np.ascontiguousarray(pixels[name])).permute(2, 0, 1).float()
                item = Item(name, self.model.normalize(x).contiguous())
                yield Task(name, item, _embed_gen(name, tuple(boxes), size))

        for task, out in self.engine.run(tasks()):
            if isinstance(out, BaseException):
                raise out
            for box, vec in zip(by_image[task.key], out, strict=True):
                self.cache[(task.key, box)] = vec

    def distance(self, a: tuple[str, tuple], refs: list[tuple[str, tuple]], reduce: str) -> float:
        d = [float(np.linalg.norm(self.cache[a] - self.cache[r])) for r in refs]
        return float(min(d) if reduce == "min" else np.mean(d))


def calibrate_distance(embedder: Embedder, boxes: list[tuple[int, int, int, int]], refs: list[str],
                       pixels: dict[str, np.ndarray], settings: RecheckSettings) -> float:
    """τ from normal–normal pairs at ``boxes`` (already grown by the margin); see the module docstring."""
    rng = np.random.default_rng([settings.seed, 17])
    if len(boxes) > settings.calibration_boxes:
        boxes = [boxes[i] for i in sorted(rng.choice(len(boxes), settings.calibration_boxes, replace=False))]
    group = refs[: min(len(refs), settings.k + 1)]
    embedder.embed([(r, b) for b in boxes for r in group], pixels)
    dists = [embedder.distance((r, b), [(o, b) for o in group if o != r], settings.reduce)
             for b in boxes for r in group]
    return float(np.percentile(dists, settings.q))
