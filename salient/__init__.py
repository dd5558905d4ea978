"""salient: saliency maps for image and video classifiers, from a laptop CPU to a Ray cluster."""

from . import data, metrics
from .dispatch import explain  # an image through the engine, or a slide in tile mode
from .engine import Engine
from .errors import ItemError, SalientError
from .images import Image, load_image
from .io import Slide, Video, open_slide, open_video
from .methods import METHODS
from .methods.metric import METRICS
from .models import Model, load_model
from .saliency import Saliency

__version__ = "0.1.0"

__all__ = [
    "METHODS", "METRICS", "Engine", "Image", "ItemError", "Model", "Saliency", "SalientError", "__version__", "data",
    "explain", "load_image", "load_model", "metrics", "Slide", "open_slide", "Video", "open_video",
]
