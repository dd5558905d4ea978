"""RISE: randomized input sampling (Petsiuk, Das, Saenko; BMVC 2018)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np

from ..errors import SalientError
from ..kernels import check_fill
from ..queries import RiseQuery
from .base import Request, register

QUERY_MASKS = 16
ROUND_BYTES = 256 * 2**20  # the partial sums an item holds at once (one round of queries)
ROUND_MIN = 8  # queries per round at least: a large image's queries still shard over 8 workers
MAX_MASKS = 10**8  # 100 million forward passes per image: beyond, a typo rather than a plan


@register("rise", signed=False)
def rise(
    req: Request, n_masks: int = 4000, cells: int = 7, p: float = 0.5, chunk: int = 128,
    fill: str = "zero", debiased: bool = False,
):
    """RISE: S(x) = (1 / (N·p)) · Σ_i f_c(I ⊙ M_i) · M_i(x), masks drawn in chunks from (seed, chunk).

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
    if not 0.0 < p < 1.0 if debiased else not 0.0 < p <= 1.0:
        raise SalientError(f"rise: p must lie in (0, 1{')' if debiased else ']'}, got {p}")
    fill = check_fill(fill, "rise: fill")
    queries = _queries(req, n_masks, cells, p, chunk, fill)
    per_round = max(ROUND_MIN, ROUND_BYTES // (4 * len(req.targets) * math.prod(req.size)))
    weighted = np.zeros((len(req.targets), *req.size), dtype=np.float64)
    score_sum = np.zeros(len(req.targets), dtype=np.float64)
    while batch := list(itertools.islice(queries, per_round)):
        partial = yield batch
        for w, s in partial:  # in mask order: the sum does not depend on who computed what
            weighted += w
            score_sum += s
    if debiased:
        out = (weighted - p * score_sum[:, None, None]) / (n_masks * p * (1.0 - p))
    else:
        out = weighted / (n_masks * p)
    return out.astype(np.float32)


def _queries(req: Request, n_masks: int, cells: int, p: float, chunk: int, fill) -> Iterator[RiseQuery]:
    """The queries of all ``n_masks`` masks in mask order (made as they are asked for)."""
    for i in range(math.ceil(n_masks / chunk)):
        n = min(chunk, n_masks - i * chunk)
        for s in range(0, n, QUERY_MASKS):
            yield RiseQuery(req.item, req.targets, seed=req.seed, draw=i, n=n, cells=cells, p=p, fill=fill,
                            start=s, stop=min(s + QUERY_MASKS, n))
