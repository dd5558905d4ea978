"""Long videos (issue 15): speed and memory of explaining video clip by clip; prints one table.

- raw: torchvision's r3d_18 (seeded weights) on clips of 16 x 112 x 112, clips/s of full batches at
  batch 1, 2, 4 and 8 (one stream per worker, one intra-op thread each: the engine's layout);
- engine: masked forward passes/s of RISE-3D (``--masks``) and occlusion-3D through
  ``salient.Engine(...).explain`` on one clip, against the raw rate at the engine's batch (4), in
  ``--rounds`` rounds that alternate an engine job and a raw run of the same length in a seeded random
  order (round 1: the job first), rates pooled (the goal: >= 0.9 of raw);
- decode: a synthetic H.264 video (``--frames`` frames of 320 x 240) explained clip by clip with
  occlusion-3D: the decoder thread's CPU seconds (decode + resize + normalise) as a share of the wall
  time (the goal: < 10%);
- memory: synthetic videos of 1,000, 10,000 and 50,000 frames of 32 x 32, each explained in its own
  subprocess by a tiny seeded 3-D conv net with one occlusion window per clip (2 forward passes a
  clip); the peak RSS (VmHWM) of each (the goal: flat).

Run on a quiet machine; timings taken while other jobs run are not results.

    python benchmarks/video.py                # ~10 min on 2 cores
    python benchmarks/video.py --quick        # a smoke run
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import salient
from salient.item import Item

R3D = "torchvision:r3d_18?seed=0"
ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, value: str, ratio: str = "", note: str = "") -> None:
    ROWS.append((what, value, ratio, note))
    print(f"  {what:<34} {value:>16} {ratio:>8}  {note}", flush=True)


def raw_rate(module: torch.nn.Module, shape: tuple[int, ...], b: int, streams: int,
             seconds: float) -> tuple[int, float]:
    """Clips and seconds of ``streams`` threads (one intra-op thread each) running batches of ``b``."""
    counts = [0] * streams
    barrier = threading.Barrier(streams + 1)
    stop = [time.perf_counter() + 3600]

    def stream(k: int) -> None:
        torch.set_num_threads(1)
        x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(k))
        with torch.inference_mode():
            module(x)
            barrier.wait()
            while time.perf_counter() < stop[0]:
                module(x)
                counts[k] += b

    pool = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    stop[0] = t0 + seconds
    for t in pool:
        t.join()
    return sum(counts), time.perf_counter() - t0


def part_raw_and_engine(args: argparse.Namespace) -> None:
    model = salient.load_model(R3D)
    shape = model.input_shape
    workers = 2
    module = model.module.eval()
    best = (0.0, 0)
    for b in (1, 2, 4, 8):
        n, s = raw_rate(module, shape, b, workers, 4.0 if args.quick else 10.0)
        row(f"raw r3d_18 batch {b}", f"{n / s:.2f} clips/s")
        best = max(best, (n / s, b))
    row("raw best", f"{best[0]:.2f} clips/s", note=f"batch {best[1]}")
    clip = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    jobs = [("rise", {"n_masks": args.masks, "chunk": 64}),
            ("occlusion", {"window": (4, 28, 28), "stride": (4, 28, 28)})]  # 64 windows
    rng = random.Random(0)
    with salient.Engine(model, workers=workers, batch_size=4) as eng:
        eng.explain(Item("warm", clip), "occlusion", target=0, window=(16, 112, 112), stride=(16, 112, 112))
        for method, params in jobs:
            runs, raws, seconds = [], [], 0.0
            for r in range(args.rounds):
                raw_first = r > 0 and rng.random() < 0.5
                if raw_first:
                    raws.append(raw_rate(module, shape, 4, workers, seconds))
                t0 = time.perf_counter()
                s = eng.explain(Item(f"c{r}", clip), method, target=0, **params)
                seconds = time.perf_counter() - t0
                runs.append((s.n_forward, seconds))
                if not raw_first:
                    raws.append(raw_rate(module, shape, 4, workers, seconds))
            n_e, t_e = map(sum, zip(*runs, strict=True))
            n_r, t_r = map(sum, zip(*raws, strict=True))
            each = " ".join(f"{(a / b) / (c / d):.2f}" for (a, b), (c, d) in zip(runs, raws, strict=True))
            row(f"engine {method}-3D", f"{n_e / t_e:.2f} fwd/s", f"{(n_e / t_e) / (n_r / t_r):.2f}",
                f"{runs[0][0]} passes; rounds {each}; raw at batch 4 {n_r / t_r:.2f}/s")


def write_synthetic(path: Path, n: int, size: tuple[int, int], codec: str = "libx264") -> None:
    """A video of ``n`` frames (a moving gradient, so frames differ), written frame by frame."""
    import av

    h, w = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        yy, xx = np.mgrid[0:h, 0:w]
        for k in range(n):
            px = np.stack([(xx + k) % 256, (yy + 2 * k) % 256, (xx + yy + 3 * k) % 256], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(px, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def part_decode(args: argparse.Namespace, tmp: Path) -> None:
    from salient.jobs.video import explain_clips

    path = tmp / "decode.mp4"
    write_synthetic(path, args.frames, (240, 320))
    model = salient.load_model(R3D)
    with salient.Engine(model, workers=2, batch_size=4) as eng:
        t0 = time.perf_counter()
        run, _ = explain_clips(eng, path, "occlusion", 0, sink=lambda rows: None,
                               params={"window": (16, 56, 56), "stride": (16, 56, 56)})
        wall = time.perf_counter() - t0
    share = run.timing["decode"] / wall
    row("decode share (occlusion-3D)", f"{100 * share:.2f} %", note=f"{args.frames} frames 320x240 h264, "
        f"{run.n_clips} clips, {run.n_forward} passes in {wall:.1f} s; decode {run.timing['decode']:.2f} s CPU, "
        f"stitch {run.timing['stitch']:.3f} s, goal < 10 %")


MEMORY_CHILD = """
import sys, torch
from torch import nn
import salient
from salient.jobs.video import explain_clips

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))

model = salient.load_model(Tiny(), frames=16, input_size=32)
with salient.Engine(model, workers=1, batch_size=4) as eng:
    run, _ = explain_clips(eng, sys.argv[1], "occlusion", 0, sink=lambda rows: None,
                           params={"window": (16, 32, 32), "stride": (16, 32, 32)})
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(run.n_clips, int(line.split()[1]) // 1024)
"""


def part_memory(args: argparse.Namespace, tmp: Path) -> None:
    for n in (1000, 10000) if args.quick else (1000, 10000, 50000):
        path = tmp / f"m{n}.mkv"
        write_synthetic(path, n, (32, 32), codec="ffv1")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], capture_output=True, text=True,
                             check=True)
        clips, mb = out.stdout.split()[-2:]
        row(f"peak RSS, {n:,} frames", f"{mb} MB", note=f"{clips} clips in {time.perf_counter() - t0:.0f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--masks", type=int, default=64, help="RISE-3D masks (default 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=512, help="frames of the decode-share video")
    ap.add_argument("--parts", default="engine,decode,memory")
    args = ap.parse_args(argv)
    if args.quick:
        args.masks, args.rounds, args.frames = 16, 1, 128
    print(f"salient video benchmark ({'quick' if args.quick else 'full'}), torch {torch.__version__}")
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as d:
        if "engine" in parts:
            part_raw_and_engine(args)
        if "decode" in parts:
            part_decode(args, Path(d))
        if "memory" in parts:
            part_memory(args, Path(d))


if __name__ == "__main__":
    main()
