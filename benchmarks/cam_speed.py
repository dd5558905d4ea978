"""Grad-CAM, Grad-CAM++ and Score-CAM speed on the real model, ours against pytorch-grad-cam.

Same photo, class (the top-1) and layer for both; each row also gives the largest difference between
the two maps, so a fast wrong map cannot pass unnoticed. Grad-CAM and Grad-CAM++ should cost about one
forward and one backward pass: they are printed next to a raw forward of one image ("explain" also
includes the unmasked-scores pass every method starts with, which the worker pads to a full batch).
pytorch-grad-cam's Score-CAM costs one forward pass per channel of the layer (1280 for
EfficientNet-Lite0's head); ours one per distinct channel (the head activation's dead ReLU6 channels
share one), its passes/s comparable with the raw forward rate at the engine's batch size.

    python benchmarks/cam_speed.py                      # the full run (Score-CAM: 1280 channels)
    python benchmarks/cam_speed.py --scorecam-layer _blocks.4 --repeats 2   # a quick check (40 passes)

``cam_section(model, image, ...)`` returns the rows, for a larger benchmark script to include.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import numpy as np
import torch

import salient
from salient.methods.cam import GradCamQuery


def _seconds(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def raw_forward_rate(module: torch.nn.Module, x: torch.Tensor, batch: int, seconds: float = 2.0) -> float:
    """Images/s of module(batch copies of x) under inference_mode, channels_last."""
    xb = x[None].repeat(batch, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        module(xb)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2 * batch:
            module(xb)
            n += batch
    return n / (time.perf_counter() - t0)


# Our layer -> (pytorch-grad-cam's target layer, its reshape_transform) for the same activations:
# EfficientNet-Lite's head activation is its ReLU6 module's second call, which pytorch-grad-cam cannot
# hook (the module also runs after the stem), so it hooks _bn1 and applies the ReLU6 itself.
PGC_LAYERS = {"_swish@1": ("_bn1", torch.nn.functional.relu6)}


def cam_section(model: salient.Model, image: Any, grad_layer: str = "_bn1", score_layer: str = "_swish@1",
                repeats: int = 3, batch_size: int | None = None) -> list[dict[str, Any]]:
    """Rows (what, seconds, forward passes, passes/s, max |ours - pytorch-grad-cam|) for one photo."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref_module = copy.deepcopy(model.module)  # an independent copy in its own layout for pytorch-grad-cam
    rows: list[dict[str, Any]] = []
    with salient.Engine(model, batch_size=batch_size) as eng:
        b = eng.executor.batch_size
        x = model.preprocess(image)
        worker_module = eng.executor.worker.module
        rate1 = raw_forward_rate(worker_module, x, 1)
        rate_b = raw_forward_rate(worker_module, x, b)
        rows.append({"what": "raw forward, batch 1", "seconds": 1 / rate1, "passes": 1, "rate": rate1})
        rows.append({"what": f"raw forward, batch {b}", "seconds": b / rate_b, "passes": b, "rate": rate_b})
        target = eng.explain(image, "gradcam", layer=grad_layer).target  # also warms up
        for method, ref_cls, layer in (("gradcam", GradCAM, grad_layer), ("gradcampp", GradCAMPlusPlus, grad_layer),
                                       ("scorecam", ScoreCAM, score_layer)):
            n = 1 if method == "scorecam" else repeats
            sec, ours = _seconds(lambda m=method, la=layer: eng.explain(image, m, target=target, layer=la), n)
            ref_layer, transform = PGC_LAYERS.get(layer, (layer, None))
            with ref_cls(ref_module, [ref_module.get_submodule(ref_layer)], reshape_transform=transform) as cam:
                ref_sec, ref = _seconds(lambda c=cam: c(x[None], [ClassifierOutputTarget(target)])[0], n)
                channels = cam.activations_and_grads.activations[0].shape[1]
            diff = float(np.abs(ours.map - ref).max())
            passes = ours.n_forward - 1  # without the unmasked scores every method starts with
            rows.append({"what": f"{method} ours, explain ({layer})", "seconds": sec, "passes": passes,
                         "rate": passes / sec, "diff": diff})
            if method != "scorecam":  # the white-box query alone: one forward and one backward pass
                item = eng.item(image)
                eng.executor.hold(item)
                query = GradCamQuery(item.id, (target,), layer=layer, kind=method)
                q_sec, _ = _seconds(lambda q=query: eng.executor.evaluate([q]), repeats)
                eng.executor.release(item.id)
                rows.append({"what": f"{method} ours, query on the worker", "seconds": q_sec, "passes": 1,
                             "rate": 1 / q_sec})
            ref_passes = 1 + channels if method == "scorecam" else passes  # one pass per channel
            rows.append({"what": f"{method} pytorch-grad-cam", "seconds": ref_sec, "passes": ref_passes,
                         "rate": ref_passes / ref_sec, "speedup": ref_sec / sec})
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'what':<36} {'seconds':>9} {'passes':>7} {'passes/s':>9} {'ours faster':>11} {'max diff':>9}")
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        diff = f"{r['diff']:.1e}" if "diff" in r else ""
        print(f"{r['what']:<36} {r['seconds']:>9.3f} {r['passes']:>7d} {r['rate']:>9.1f} {speed:>11} {diff:>9}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--image", default="chelsea", help="a sample photo name or an image path")
    ap.add_argument("--grad-layer", default="_bn1")
    ap.add_argument("--scorecam-layer", default="_swish@1",
                    help="_swish@1 (the default layer, the head's ReLU6) or _bn1: 1280 channels; _blocks.4: 40 (quick)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="default: autotuned")
    args = ap.parse_args(argv)
    samples = {im.name: im for im in salient.data.sample_images()}
    image = samples.get(args.image) or salient.load_image(args.image)
    model = salient.load_model(args.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {model.name}, image {args.image}")
    print_rows(cam_section(model, image, args.grad_layer, args.scorecam_layer, args.repeats, args.batch_size))


if __name__ == "__main__":
    main()
