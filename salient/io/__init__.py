"""Lazy readers of inputs too big to load whole: slides, tiled TIFF / OME-TIFF, Zarr (:mod:`.slides`)."""

from .slides import Slide, open_slide

__all__ = ["Slide", "open_slide"]
