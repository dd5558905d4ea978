"""Score-CAM (Wang et al., CVPR-W 2020) as engine queries, matching pytorch-grad-cam 1.5.7's ScoreCAM.

H^k = minmax(upsample(A^k)) with bilinear upsampling (align_corners=True, as torch's
UpsamplingBilinear2d; trilinear for video nets) and minmax(u) = (u − min) / (max − min + 1e-8);
s_k = y_c(I ⊙ H^k), the RAW logit; w = softmax_k(s); map as every CAM (:func:`cam.cam_maps`).
One small white-box query reads A on the worker; the K masked passes are ordinary batched queries
of channel ranges that carry their slice of A, so any worker builds the same masks from the query
alone (sharding needs no shared state) and the map does not depend on how queries are packed.
All targets share the K passes (pytorch-grad-cam repeats them per target), and channels whose
activations are bitwise equal (dead ReLU channels, typically half of a head layer) share one pass:
equal activations give equal inputs, and a sample's logits do not depend on its batch companions,
so the map is bitwise the same as with one pass per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SalientError
from ..queries import ItemContext, Query, WhiteBoxQuery
from ..saliency import Maps
from .base import Request, register
from .cam import cam_maps
from .cam_layers import capture, check_layer, folded, model_input, resolve_layer

EPS_MASK = 1e-8


@dataclass(frozen=True)
class ActivationQuery(WhiteBoxQuery):
    """One forward pass on the worker; result: (layer label, A (K, *s) float32, input shape (H, W) or (T, H, W))."""

    layer: str = ""

    def run(self, ctx: ItemContext, module: torch.nn.Module) -> tuple[tuple[str, np.ndarray, tuple[int, ...]], int]:
        x = model_input(ctx.x)
        layer = resolve_layer(module, self.layer, x)
        with torch.inference_mode(), capture(layer, grad=False) as box:
            module(x)
        act = folded(module, box["act"])[0].float().cpu().numpy().copy()
        return (layer.label, act, tuple(ctx.x.shape[1:])), 1


def score_masks(acts: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Activations (n, *s) -> H (n, *shape): upsampled (align_corners=True), min-max normalised with 1e-8."""
    mode = "bilinear" if acts.ndim == 3 else "trilinear"
    up = F.interpolate(acts[:, None], size=tuple(shape), mode=mode, align_corners=True)[:, 0]
    flat = up.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * len(shape))
    hi = flat.max(dim=1).values.view(-1, *[1] * len(shape))
    return (up - lo) / (hi - lo + EPS_MASK)


@dataclass(frozen=True)
class ScoreCamQuery(Query):
    """Inputs I ⊙ H^k for the channels whose activations (n, *s) it carries; result: raw logits (n, T)."""

    score_kind: ClassVar[str] = "logit"  # the worker scores these inputs with raw logits
    acts: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.float32))

    def n_inputs(self) -> int:
        return len(self.acts)

    def build(self, ctx, start, stop, out):
        acts = torch.as_tensor(self.acts[start:stop], device=ctx.device)
        masks = score_masks(acts, tuple(ctx.x.shape[1:]))
        out.copy_(ctx.x[None] * masks[:, None])


def distinct_channels(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct, inverse): the bitwise-distinct channels of acts (K, *s), in order; acts == distinct[inverse]."""
    rows = np.ascontiguousarray(acts).reshape(len(acts), -1)
    keys = rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1])))[:, 0]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique's order is by bytes; keep the channels' own order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return acts[first[order]], rank[inverse.reshape(-1)]


@register("scorecam", signed=False, check=check_layer)
def scorecam(req: Request, layer: str = "", chunk: int = 64, normalize: bool = True):
    """Score-CAM: ReLU(Σ_k softmax_k(y_c(I ⊙ H^k)) · A^k), min-max normalised, resized (as pytorch-grad-cam).

    ``layer`` as for gradcam; one forward pass per distinct channel of the layer, ``chunk`` channels per query."""
    if chunk < 1:
        raise SalientError("scorecam: chunk must be >= 1")
    ((label, acts, shape),) = yield [ActivationQuery(req.item, layer=str(layer))]
    distinct, inverse = distinct_channels(acts)
    parts = [distinct[s : s + chunk] for s in range(0, len(distinct), chunk)]
    scores = yield [ScoreCamQuery(req.item, req.targets, acts=p) for p in parts]
    weights = torch.from_numpy(np.concatenate(scores)[inverse]).T.softmax(dim=-1)  # (T, K)
    return Maps(cam_maps(weights, torch.from_numpy(np.array(acts)), shape, normalize),  # np.array: Ray's is read-only
                {"layer": label})
