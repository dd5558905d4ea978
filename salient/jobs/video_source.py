"""The ``videos`` job source: long videos explained clip by clip (:mod:`salient.jobs.video`).

``source: {videos: "footage/**/*.mp4", clip: 16, stride: 8, fps: 8}``: a glob (or directory, or one
file) of videos (:data:`salient.io.video.VIDEO_SUFFIXES`), walked like ``images``; ``clip`` the clip
length (default the model's ``frames``; it becomes the model's ``frames`` option when the model spec
does not set one), ``stride`` between clip starts (default the clip length), and the sampling: ``fps``
or ``frame_step`` (default every frame), ``top_clips`` (explain only the k clips with the highest target
score; default all). Each video gives one row per (video, method, target) and a
map along t ``items/<key>/<method>``; the runner drives it through
:func:`salient.jobs.video_job.explain_video_into_store` (the source says ``clips = True``). A video that cannot be
decoded, has no video stream or no frames becomes an ``error`` row.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..io.video import VIDEO_SUFFIXES
from .sources import ImageFolder, ImagesSpec, register_source
from .video_job import VideoOptions


class VideosSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    videos: str = Field(min_length=1)
    clip: int | None = Field(default=None, ge=1)
    stride: int | None = Field(default=None, ge=1)
    fps: float | None = Field(default=None, gt=0)
    frame_step: int | None = Field(default=None, ge=1)
    top_clips: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _sampling(self) -> VideosSpec:
        if self.fps is not None and self.frame_step is not None:
            raise ValueError("give fps or frame_step, not both")
        if self.clip is not None and self.stride is not None and self.stride > self.clip:
            raise ValueError(f"stride {self.stride} is longer than the clip ({self.clip} frames): frames would be "
                             "skipped")
        return self


@register_source("videos")
class VideoFolder(ImageFolder):
    """Videos matched by a glob (see the module docstring)."""

    Spec = VideosSpec
    clips = True

    def __init__(self, spec: VideosSpec, base_dir: Path = Path(".")):
        super().__init__(ImagesSpec(images=spec.videos), base_dir)
        if self.suffixes is not None:
            self.suffixes = VIDEO_SUFFIXES
        self.clip = spec.clip
        self.options = VideoOptions(spec.stride, spec.fps, spec.frame_step, spec.top_clips)
