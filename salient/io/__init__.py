"""Lazy readers of inputs too big to load whole: slides, tiled TIFF / OME-TIFF, Zarr (:mod:`.slides`);
videos decoded frame by frame with PyAV (:mod:`.video`)."""

from .slides import Slide, open_slide
from .video import VIDEO_SUFFIXES, Video, is_video_path, open_video

__all__ = ["VIDEO_SUFFIXES", "Slide", "Video", "is_video_path", "open_slide", "open_video"]
