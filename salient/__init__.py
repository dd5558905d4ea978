"""salient: saliency maps for image and video classifiers, from a laptop CPU to a Ray cluster."""

from . import data, metrics
from .engine import Engine, explain
from .errors import ItemError, SalientError
from .images import Image, load_image
from .methods import METHODS
from .methods.metric import METRICS
from .models import Model, load_model
from .saliency import Saliency

__version__ = "0.1.0"

__all__ = [
    "METHODS", "METRICS", "Engine", "Image", "ItemError", "Model", "Saliency", "SalientError", "__version__", "data",
    "explain", "load_image", "load_model", "metrics",
]
