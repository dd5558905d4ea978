"""Classifiers with their preprocessing, labels and score kind."""

from .loader import load_model, parse_spec
from .model import SCORE_KINDS, Model

__all__ = ["Model", "SCORE_KINDS", "load_model", "parse_spec"]
