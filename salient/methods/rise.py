"""RISE: randomized input sampling (Petsiuk, Das, Saenko; BMVC 2018)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np

from ..errors import SalientError
from ..kernels import check_fill
from ..queries import Rise3DQuery, RiseQuery
from .base import Request, register
from .spacetime import clip_only, frame_count, on_clip

QUERY_MASKS = 16
ROUND_BYTES = 256 * 2**20  # the partial sums an item holds at once (one round of queries)
ROUND_MIN = 8  # queries per round at least: a large image's queries still shard over 8 workers
CELLS_T = 4  # RISE-3D's temporal cells s_t by default (at most the clip's frames)
MAX_MASKS = 10**8  # 100 million forward passes per image: beyond, a typo rather than a plan


@register("rise", signed=False)
def rise(
    req: Request, n_masks: int = 4000, cells: int = 7, p: float = 0.5, chunk: int = 128,
    fill: str = "zero", debiased: bool = False, cells_t: int | None = None,
):
    """RISE: S(x) = (1 / (N·p)) · Σ_i f_c(I ⊙ M_i) · M_i(x), masks drawn in chunks from (seed, chunk).

    On a clip (``req.frames`` = T > 0), RISE-3D: M_i is a space-time mask (T, H, W): G ~ Bernoulli(p)^(s_t x
    s x s), cells ceil(T/s_t), ceil(H/s), ceil(W/s), trilinear upsampling with skimage ``resize(order=1,
    mode="reflect")`` semantics to ((s_t+1)·cell_t, (s+1)·cell_h, (s+1)·cell_w), a T x H x W crop at a
    uniform random offset per axis ([0, cell_t) x [0, cell_h) x [0, cell_w)); the same S (and debiased
    form), a (targets, T, H, W) map. s_t = ``cells_t``: an integer in [1, T], default (None) min(4, T);
    clips only (an error on an image). Masks come from :mod:`salient.kernels.torch.rise_masks_3d`
    (its own random stream), built per batch on the worker's device; partial sums as below.

    Same masks as the authors' code (eclique/RISE) up to the random stream; the masked image is
    I ⊙ M + fill ⊙ (1 - M) with fill 0 in normalised space, as theirs. ``debiased`` returns
    Σ f·(M − p) / (N·p·(1−p)) instead (signed in principle; values near 0 mean no effect).
    Masks are drawn ``chunk`` at a time; each query holds ``QUERY_MASKS`` consecutive masks of a
    chunk and returns their partial sums (one map per target), summed here in mask order. 16 is a
    multiple of every power-of-two batch size up to 16 (the engine packs small queries into fuller
    batches) and small enough that an image's last queries keep every worker busy to the end.
    Memory: the queries are asked for in rounds whose partial sums take at most ``ROUND_BYTES``
    (4 bytes per target and pixel per query; 4000 masks at 224 x 224 for up to 5 targets are one
    round), so an item holds a bounded number of them whatever ``n_masks``; summed in mask order
    across rounds, the map does not depend on the rounds. A round holds at least ``ROUND_MIN`` queries,
    so that the queries of a large image (whole mode) still shard over as many workers: at 4096 x 4096,
    8 partial sums of 67 MB per target (537 MB), at the whole-mode budget of 8192 x 8192, 2.1 GB.
    ``n_masks`` is at most ``MAX_MASKS``.
    """
    if n_masks < 1 or cells < 1 or chunk < 1:
        raise SalientError("rise: n_masks, cells and chunk must be >= 1")
    if n_masks > MAX_MASKS:
        raise SalientError(f"rise: n_masks must be at most {MAX_MASKS:,} (forward passes per image), "
                           f"got {n_masks:,}")
    if cells > min(req.size):
        raise SalientError(f"rise: cells must be at most the input's shorter side {min(req.size)} "
                           f"(a cell of at least one pixel), got {cells}")
    clip_only(req, "rise", cells_t=cells_t)
    if req.frames:
        cells_t = frame_count("rise", "cells_t", cells_t, CELLS_T, req.frames)
    if not 0.0 < p < 1.0 if debiased else not 0.0 < p <= 1.0:
        raise SalientError(f"rise: p must lie in (0, 1{')' if debiased else ']'}, got {p}")
    fill = check_fill(fill, "rise: fill")
    queries = _queries(req, n_masks, cells, p, chunk, fill, cells_t)
    per_round = max(ROUND_MIN, ROUND_BYTES // (4 * len(req.targets) * math.prod(req.shape)))
    weighted = np.zeros((len(req.targets), *req.shape), dtype=np.float64)
    score_sum = np.zeros(len(req.targets), dtype=np.float64)
    while batch := list(itertools.islice(queries, per_round)):
        partial = yield batch
        for w, s in partial:  # in mask order: the sum does not depend on who computed what
            weighted += w
            score_sum += s
    if debiased:
        out = (weighted - p * score_sum.reshape(-1, *[1] * len(req.shape))) / (n_masks * p * (1.0 - p))
    else:
        out = weighted / (n_masks * p)
    return on_clip(req, out, cells_t=cells_t)


def _queries(req: Request, n_masks: int, cells: int, p: float, chunk: int, fill,
             cells_t: int | None = None) -> Iterator[RiseQuery]:
    """The queries of all ``n_masks`` masks in mask order (made as they are asked for); space-time
    ones (Rise3DQuery with ``cells_t``) on a clip."""
    extra = {"cells_t": cells_t} if req.frames else {}
    kind = Rise3DQuery if req.frames else RiseQuery
    for i in range(math.ceil(n_masks / chunk)):
        n = min(chunk, n_masks - i * chunk)
        for s in range(0, n, QUERY_MASKS):
            yield kind(req.item, req.targets, seed=req.seed, draw=i, n=n, cells=cells, p=p, fill=fill,
                       start=s, stop=min(s + QUERY_MASKS, n), **extra)
