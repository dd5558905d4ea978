"""The explainers: pure algorithms that yield queries and never call the model."""

from . import borex, cam, cam_score, dida, occlusion, rise  # noqa: F401  (registration)
from .base import METHODS, Method, Request, get_method, register
from .queries import BoxQuery, CurveQuery, ItemContext, Query, RiseQuery, ScoreQuery

__all__ = [
    "METHODS", "BoxQuery", "CurveQuery", "ItemContext", "Method", "Query", "Request", "RiseQuery",
    "ScoreQuery", "get_method", "register",
]
