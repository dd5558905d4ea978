"""The ``slides`` job source: huge images explained in tile mode (:mod:`salient.jobs.tiles`).

``source: {slides: "slides/*.tif", tile: 224, overlap: 0.25, level: 0, skip_background: true}``:
a glob (or directory, or one file) of slides (tiled / pyramidal TIFF, OME-TIFF, Zarr, vendor formats
through openslide, plain images up to a pixel budget: :mod:`salient.io.slides`), walked like
``images``; ``tile`` (default the model's input size), ``overlap`` in [0, 1), ``level`` (default 0)
and ``skip_background`` as in tile mode. Each slide gives one row per (slide, method, target) and a
mosaic ``items/<key>/<method>``; the runner drives it through :func:`salient.jobs.slide_job.drive_slides`
(the source says ``tiled = True``). A slide that cannot be opened, lacks the level, or is smaller
than a tile becomes an ``error`` row.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..io.slides import OPENSLIDE_SUFFIXES, PLAIN_SUFFIXES, TIFF_SUFFIXES
from .slide_job import TileOptions
from .sources import ImageFolder, ImagesSpec, register_source

SLIDE_SUFFIXES = tuple(dict.fromkeys(TIFF_SUFFIXES + OPENSLIDE_SUFFIXES + PLAIN_SUFFIXES))


class SlidesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slides: str = Field(min_length=1)
    tile: int | None = Field(default=None, ge=1)
    overlap: float = 0.0
    level: int = Field(default=0, ge=0)
    skip_background: bool = False

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"overlap must lie in [0, 1), got {v}")
        return v


@register_source("slides")
class SlideFolder(ImageFolder):
    """Slides matched by a glob (see the module docstring)."""

    Spec = SlidesSpec
    tiled = True

    def __init__(self, spec: SlidesSpec, base_dir: Path = Path(".")):
        super().__init__(ImagesSpec(images=spec.slides), base_dir)
        if self.suffixes is not None:
            self.suffixes = SLIDE_SUFFIXES
        self.options = TileOptions(spec.tile, spec.overlap, spec.level, spec.skip_background)
