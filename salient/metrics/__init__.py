"""Metrics that judge maps. Each module registers its metrics in the registry
(:data:`salient.methods.metric.METRICS`: a query generator and a results-table column); importing
this package registers them all. :mod:`.curves`: insertion and deletion (RISE's causal metrics);
:mod:`.localisation`: object/context share and density, pointing game, relevance rank and mass
accuracy (need the item's object mask). Dataset statistics over a store's table: :mod:`.paired`
(Wilcoxon signed-rank of two methods), :mod:`.clusters` (k-means of attention maps).
A new metric is one module here plus its ``register_metric``."""

from __future__ import annotations

from typing import Any

from ..saliency import Saliency
from .curves import CURVE_KINDS, Curve, auc, curve, curve_counts
from .localisation import pointing_hit  # noqa: F401 - registers the localisation metrics


def _run_curve(model: Any, image: Any, saliency: Saliency, kind: str, step: int | None, substrate: Any) -> Curve:
    from ..engine import Task, engine_for
    from ..models import load_model

    eng = engine_for(load_model(model))
    item = eng.item(image)
    gen = curve(item.id, item.size, saliency.map, saliency.target, kind, step=step, substrate=substrate)
    ((_, out),) = list(eng.run([Task(kind, item, gen)]))
    if isinstance(out, Exception):
        raise out
    return out


def insertion(model: Any, image: Any, saliency: Saliency, step: int | None = None, substrate: Any = "blur") -> Curve:
    """Insertion curve of ``saliency`` on ``image`` (substrate blur(I) by default; "zero" = the
    BOREx authors' choice)."""
    return _run_curve(model, image, saliency, "insertion", step, substrate)


def deletion(model: Any, image: Any, saliency: Saliency, step: int | None = None, substrate: Any = "zero") -> Curve:
    """Deletion curve of ``saliency`` on ``image`` (substrate fill 0 by default)."""
    return _run_curve(model, image, saliency, "deletion", step, substrate)


__all__ = ["CURVE_KINDS", "Curve", "auc", "curve", "curve_counts", "deletion", "insertion"]
