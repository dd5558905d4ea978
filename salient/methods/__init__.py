"""The explainers: pure algorithms that yield queries and never call the model."""

from . import borex, cam, cam_score, dida, occlusion, recon, rise, temporal  # noqa: F401  (registration)
from .base import METHODS, Method, Request, get_method, register

__all__ = ["METHODS", "Method", "Request", "get_method", "register"]
