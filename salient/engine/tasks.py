"""Task generators the engine drives: explain one item with one method, and score a map."""

from __future__ import annotations

import time

import numpy as np

from ..errors import ItemError, SalientError
from ..item import Item
from ..methods import Request, get_method
from ..models import Model
from ..queries import ScoreQuery
from ..saliency import Saliency


def raising(e: BaseException):
    """Generator: a task that fails with ``e`` when the scheduler first steps it (an item that could not
    be read or built is reported through the same path as one that fails while it runs)."""
    raise e
    yield  # pragma: no cover - makes this a generator


def parse_target(spec: int | str, model: Model) -> int | tuple[str, int]:
    """``top1``/``topK`` -> ("top", K); a class id or label -> its id. Validated before any work. A model
    without classes (an autoencoder) has one target, 0, whatever is asked."""
    if getattr(model, "output", "classes") == "reconstruction":
        return 0
    if isinstance(spec, str) and spec.strip().lower().startswith("top"):
        k = spec.strip()[3:] or "1"
        if not k.isdigit() or not 1 <= int(k) <= model.n_classes:
            raise SalientError(f"target {spec!r}: use top1 .. top{model.n_classes}, a class id or a label")
        return ("top", int(k))
    return model.resolve_target(spec)


def resolve_targets(target: int | tuple[str, int], scores: np.ndarray) -> tuple[int, ...]:
    if isinstance(target, tuple):
        order = np.argsort(-scores, kind="stable")
        return tuple(int(i) for i in order[: target[1]])
    return (int(target),)


def base_scores(item: Item):
    """Generator: the unmasked scores of all classes, checked for NaN."""
    (scores,) = yield [ScoreQuery(item.id)]
    if not np.isfinite(scores).all():
        raise ItemError(f"model returned NaN or infinite scores for item {item.id!r}")
    return scores


def explain_task(item: Item, model: Model, method: str, target: int | tuple[str, int], seed: int, params: dict,
                 scores: np.ndarray | None = None):
    """Generator: resolve targets from the unmasked scores (``scores`` if known, else one score
    query), run the method, return list[Saliency]."""
    t0 = time.perf_counter()
    m = get_method(method)
    if m.output != "classes":  # an autoencoder (recon): no class scores; one map, target 0
        scores = np.zeros(1, dtype=np.float32)
        target = 0
    elif scores is None:
        scores = yield from base_scores(item)
    targets = resolve_targets(target, scores)
    req = Request(item.id, item.size, targets, scores[list(targets)], seed, int(item.x.shape[0]), frames=item.frames)
    maps = yield from m.fn(req, **params)
    resolved = dict(getattr(maps, "params", None) or {})  # e.g. the CAM layer actually used (methods.cam.Maps)
    maps = np.asarray(maps, dtype=np.float32)
    if not np.isfinite(maps).all():
        raise ItemError(f"{method} produced NaN values for item {item.id!r}")
    return [
        Saliency(map=maps[i], signed=m.signed, diverging=m.diverging, method=method, target=t,
                 label=model.label(t) if m.output == "classes" else "anomaly",
                 base_score=float(scores[t]), seed=seed, params={**params, **resolved}, item_id=item.id,
                 seconds=time.perf_counter() - t0)
        for i, t in enumerate(targets)
    ]
