"""Grad-CAM and Grad-CAM++ (white-box, on the worker that holds the model), and the CAM map math.

Both match pytorch-grad-cam 1.5.7 (``GradCAM``, ``GradCAMPlusPlus``) for the same model, layer and
target. A^k are the target layer's activations, g = ∂y_c/∂A with y_c the RAW logit of class c:
- Grad-CAM: w_k = mean_ij g^k_ij;
- Grad-CAM++: α = g² / (2g² + (Σ_ab A^k_ab)·g³ + 1e-6), α = 0 where g = 0, w_k = Σ_ij ReLU(g^k_ij)·α^k_ij;
- map = minmax(ReLU(resize(minmax(ReLU(Σ_k w_k A^k))))), minmax(m) = (m − min) / (1e-7 + max(m − min)).
The resize is bilinear (half-pixel centres, as cv2.resize) to the input's (H, W). Video nets
(5-D activations (N, C, T, H, W); a ``frames:`` model's image-net activations folded to clips, see
:mod:`salient.methods.cam_layers`): means and sums run over (t, i, j) and the resize to the clip's
(T, H, W) is pytorch-grad-cam's: scipy.ndimage.zoom with its defaults (cubic spline, corner-aligned),
not trilinear (it overshoots, hence the second ReLU). The outer ReLU and minmax are pytorch-grad-cam's
multi-layer aggregation step, kept so that maps agree to float precision. Layers: see :mod:`salient.methods.cam_layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ItemError
from ..queries import ItemContext, WhiteBoxQuery
from ..saliency import Maps
from .base import Request, register
from .cam_layers import capture, check_layer, folded, model_input, resolve_layer

EPS_PLUSPLUS = 1e-6
EPS_MINMAX = 1e-7


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per map (axis 0): (m − min) / (1e-7 + max(m − min)), pytorch-grad-cam's scale_cam_image."""
    flat = cam.flatten(1)
    cam = cam - flat.min(dim=1).values.view(-1, *[1] * (cam.ndim - 1))
    return cam / (EPS_MINMAX + cam.flatten(1).max(dim=1).values.view(-1, *[1] * (cam.ndim - 1)))


def _resize(cam: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(T, h, w) -> (T, H, W) bilinear (cv2.resize semantics); (T, t, h, w) -> (T, *shape) by scipy zoom."""
    if cam.ndim == 3:
        return F.interpolate(cam[:, None], size=tuple(shape), mode="bilinear", align_corners=False)[:, 0]
    from scipy.ndimage import zoom

    out = [zoom(np.float32(c), [t / s for s, t in zip(c.shape, shape, strict=True)]) for c in cam.cpu().numpy()]
    return torch.from_numpy(np.stack(out).astype(np.float32))


def cam_maps(weights: torch.Tensor, acts: torch.Tensor, shape: tuple[int, ...], normalize: bool = True) -> np.ndarray:
    """Weights (T, K), activations (K, *s) -> maps (T, *shape) in [0, 1] (module docstring);
    ``normalize=False``: ReLU(resize(ReLU(Σ_k w_k A^k))) in the units of the weights, no min-max, so
    that maps of several inputs (the tiles of one image) share one scale."""
    weights = weights.to(acts.device, torch.float32)
    cam = torch.einsum("tk,kn->tn", weights, acts.float().flatten(1)).view(len(weights), *acts.shape[1:])
    if not normalize:
        return _resize(cam.clamp_min(0.0), shape).clamp_min(0.0).cpu().numpy().astype(np.float32)
    cam = _minmax(cam.clamp_min(0.0))
    return _minmax(_resize(cam, shape).clamp_min(0.0)).cpu().numpy().astype(np.float32)


def gradcam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: w_tk = mean over (t,) i, j of g_tk. grads (T, K, *s) -> (T, K)."""
    return grads.flatten(2).mean(dim=2)


def gradcampp_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 as pytorch-grad-cam): (T, K, *s) -> (T, K)."""
    g = grads.flatten(2)
    g2 = g**2
    g3 = g2 * g
    sum_a = acts.flatten(1).sum(dim=1)[None, :, None]
    alpha = g2 / (2 * g2 + sum_a * g3 + EPS_PLUSPLUS)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return (g.clamp_min(0.0) * alpha).sum(dim=2)


WEIGHTS = {"gradcam": gradcam_weights, "gradcampp": gradcampp_weights}


def _logits(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ItemError(f"model output is not a (N, classes) tensor: {getattr(out, 'shape', type(out).__name__)}")
    return out


@dataclass(frozen=True)
class GradCamQuery(WhiteBoxQuery):
    """One forward and one backward per target on the worker; result: (layer label, maps (T, *shape))."""

    layer: str = ""
    kind: str = "gradcam"
    normalize: bool = True
    needs_grad: ClassVar[bool] = True

    def run(self, ctx: ItemContext, module: torch.nn.Module) -> tuple[tuple[str, np.ndarray], int]:
        layer = resolve_layer(module, self.layer, model_input(ctx.x))
        with torch.inference_mode(False), torch.enable_grad():
            x = model_input(ctx.x.clone()).requires_grad_(True)  # so every layer's output has a grad path
            with capture(layer, grad=True) as box:
                try:
                    out = module(x)
                except Exception as e:  # noqa: BLE001 - the model's own failure, one line
                    raise ItemError(f"{self.kind}: forward pass failed: {str(e).splitlines()[0]}") from None
            logits = _logits(out)
            act = box.get("act")
            if act is None:
                raise ItemError(f"{self.kind}: layer {layer.label!r} did not run in this forward pass")
            if not act.requires_grad or not logits.requires_grad:
                raise ItemError(
                    f"{self.kind}: no gradient path from the logits to layer {layer.label!r} "
                    "(the model detaches or runs under no_grad)"
                )
            grads = []
            for i, t in enumerate(self.targets):
                (g,) = torch.autograd.grad(logits[0, t], act, retain_graph=i + 1 < len(self.targets), allow_unused=True)
                if g is None:
                    raise ItemError(f"{self.kind}: the logit of class {t} does not depend on layer "
                                    f"{layer.label!r} (no gradient path)")
                grads.append(folded(module, g)[0])
        acts = folded(module, act)[0].detach().float()
        weights = WEIGHTS[self.kind](acts, torch.stack(grads).float())
        return (layer.label, cam_maps(weights, acts, tuple(ctx.x.shape[1:]), self.normalize)), 1


def _gradient_cam(req: Request, layer: str, kind: str, normalize: bool):
    ((label, maps),) = yield [GradCamQuery(req.item, req.targets, layer=str(layer), kind=kind,
                                           normalize=bool(normalize))]
    return Maps(maps, {"layer": label})


@register("gradcam", signed=False, check=check_layer)
def gradcam(req: Request, layer: str = "", normalize: bool = True):
    """Grad-CAM: ReLU(Σ_k mean_ij(∂y_c/∂A^k_ij) · A^k), min-max normalised, resized (as pytorch-grad-cam).

    ``layer``: dotted module path (``@k`` for the k-th call); empty = the last module output with
    spatial dimensions, recorded in the result's parameters. Gradients of the raw logit y_c.
    ``normalize=False`` leaves out the min-max steps (tile mode: one scale for every tile of an image)."""
    return (yield from _gradient_cam(req, layer, "gradcam", normalize))


@register("gradcampp", signed=False, check=check_layer)
def gradcampp(req: Request, layer: str = "", normalize: bool = True):
    """Grad-CAM++: w_k = Σ_ij ReLU(g^k_ij)·α^k_ij with α = g² / (2g² + Σ_ab A^k_ab·g³ + 1e-6) (as pytorch-grad-cam).

    ``layer`` and ``normalize`` as for gradcam."""
    return (yield from _gradient_cam(req, layer, "gradcampp", normalize))
