"""The dataset audit's cost (issue 17, "Speed"): prints one table.

- ``cost``: the demo-audit composites (12 photos, each listed ``--copies`` times under its own id) with
  the real EfficientNet-Lite0 on one engine: per round, the explanation (Grad-CAM++) of every item and
  its context pass (ten variants and the original, built on the driver as in a job) in random order:
  each one's cost per item, and the context pass's forward passes/s against the raw forward rate of
  the engine's layout (2 streams x 1 thread, batch 4, the fused module the workers run) run after it
  for the same duration (goal >= 0.9).
- ``aggregate``: ``salient audit`` (:func:`salient.audit.findings.audit_findings`) on a synthetic store
  of ``--rows`` items x 7 variants (context table) and ``--rows`` results rows: seconds and peak
  traced memory (goal: under 10 s). The paired comparison and the clustering are timed by
  ``benchmarks/audit_aggregates.py``.

    python benchmarks/audit.py            # both (a few minutes)
    python benchmarks/audit.py --only aggregate --rows 100000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def cost(copies: int, rounds: int) -> list[tuple]:
    """One engine; per round, in a seeded random order: the explanation tasks (Grad-CAM++) of every item,
    its context tasks (the ten variants and the original, built on the driver as in a job), and a raw
    run as long as the context tasks took."""
    import random

    import torch
    from PIL import Image as PILImage
    from throughput import raw_rate

    import salient
    from salient.audit.context import ContextPass
    from salient.engine.engine import scored_task
    from salient.engine.fuse import fuse_for_cpu
    from salient.engine.worker import pick_device
    from salient.jobs.demo_audit import CONTEXT, OBJECTS, composite, items
    from salient.jobs.sources import make_source

    folder = Path(tempfile.mkdtemp(prefix="salient-audit-bench-"))
    lines = ["id,path,label,mask"]
    for stem, obj, bg in items():
        img, mask = composite(obj, bg)
        PILImage.fromarray(img).save(folder / f"{stem}.png")
        PILImage.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{stem}_mask.png")
        lines += [f"{stem}#{c},{stem}.png,{OBJECTS[obj][2]},{stem}_mask.png" for c in range(copies)]
    (folder / "bench.csv").write_text("\n".join(lines) + "\n")
    model = salient.load_model("efficientnet-lite0")
    source = make_source({"manifest": "bench.csv"}, folder)
    entries = list(source.entries())
    loaded = [source.load(e, model) for e in entries]
    rng = random.Random(0)
    fused = fuse_for_cpu(model.module, torch.randn(4, *model.input_shape).contiguous(memory_format=torch.channels_last))
    spent = {"explain": [0, 0.0], "context": [0, 0.0], "raw": [0, 0.0]}
    with salient.Engine(model) as eng:
        eng.explain(loaded[0], "gradcampp")  # warm-up
        for r in range(rounds):
            for part in rng.sample(["explain", "context"], 2):
                if part == "explain":
                    tasks = [salient.engine.Task(i, it, scored_task(it, model, "gradcampp", ("top", 1), 0, {}, (), {}))
                             for i, it in enumerate(loaded)]
                else:
                    ctx = ContextPass(CONTEXT, source, model, folder / f"out{r}", 1, 0, resume=False)
                    tasks = [t for pos, (e, it) in enumerate(zip(entries, loaded, strict=True))
                             for t in ctx.tasks(pos, e, it)]
                n0, t0 = eng.n_forward, time.perf_counter()
                for _ in eng.run(iter(tasks)):
                    pass
                spent[part][0] += eng.n_forward - n0
                spent[part][1] += time.perf_counter() - t0
            n, t = raw_rate(model, 4, pick_device(), spent["context"][1] / (r + 1), streams=2, threads=1,
                            module=fused)
            spent["raw"][0] += n
            spent["raw"][1] += t
    per = rounds * len(loaded)
    (n_e, t_e), (n_c, t_c), (n_r, t_r) = spent["explain"], spent["context"], spent["raw"]
    return [
        ("cost", "explain (gradcampp)", f"{1000 * t_e / per:.0f} ms/item", f"{n_e / t_e:.1f} fwd/s", ""),
        ("cost", f"context: {len(CONTEXT)} variants + original", f"{1000 * t_c / per:.0f} ms/item",
         f"{n_c / t_c:.1f} fwd/s",
         f"ratio to raw {(n_c / t_c) / (n_r / t_r):.2f} (raw {n_r / t_r:.1f}/s; goal >= 0.9)"),
        ("cost", "items x rounds", str(len(loaded)), str(rounds), f"{n_c} variant passes in all"),
    ]


def synthetic_store(folder: Path, n: int) -> Path:
    """``n`` items x 7 variants in the context table and n results rows with a context share."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from salient.audit.record import CONTEXT_SCHEMA
    from salient.audit.variants import parse_variant
    from salient.store.schema import result_schema

    rng = np.random.default_rng(0)
    variants = ["original", "only_fg", "no_fg", "mixed_same", "mixed_rand", "perturb:blur:3", "perturb:jpeg:2"]
    labels = np.array([f"class{i:03d}" for i in range(100)])
    pos = np.repeat(np.arange(n), len(variants))
    var = np.tile(variants, n)
    true = rng.integers(0, 100, n)
    ref = np.where(rng.random(n) < 0.8, true, rng.integers(0, 100, n))
    pred = np.where(rng.random(len(pos)) < 0.85, np.repeat(ref, len(variants)), rng.integers(0, 100, len(pos)))
    pred[var == "original"] = ref
    base = rng.uniform(0.3, 1.0, n)
    cols = {
        "position": pos, "item_id": np.char.add("item", pos.astype(str)), "true_label": labels[np.repeat(true, 7)],
        "variant": var, "group": [parse_variant(v).group for v in var], "partner": [None] * len(pos),
        "status": ["ok"] * len(pos), "error": [None] * len(pos), "pred": pred, "pred_label": labels[pred],
        "pred_score": rng.uniform(0, 1, len(pos)), "ref_class": np.repeat(ref, 7),
        "ref_label": labels[np.repeat(ref, 7)],
        "ref_score": np.repeat(base, 7) * rng.uniform(0.2, 1.0, len(pos)), "base_score": np.repeat(base, 7),
        "true_class": np.repeat(true, 7), "kept": pred == np.repeat(ref, 7), "correct": pred == np.repeat(true, 7),
    }
    (folder / "context").mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=CONTEXT_SCHEMA), folder / "context" / "part-r0001-000001.parquet")
    schema = result_schema()
    res = {f.name: pa.nulls(n, f.type) for f in schema}
    res.update({"item_id": pa.array(np.char.add("item", np.arange(n).astype(str))), "index": pa.array(np.arange(n)),
                "method": pa.array(["gradcampp"] * n), "target": pa.array(ref), "status": pa.array(["ok"] * n),
                "position": pa.array(np.arange(n)), "rank": pa.array(np.zeros(n, np.int64))})
    if "context_share" in schema.names:
        res["context_share"] = pa.array(rng.uniform(0, 1, n))
    (folder / "results").mkdir()
    pq.write_table(pa.table(res, schema=schema), folder / "results" / "part-r0001-000001-bench.parquet")
    return folder


def aggregate(n: int) -> list[tuple]:
    from salient.audit.findings import audit_findings

    folder = synthetic_store(Path(tempfile.mkdtemp(prefix="salient-audit-agg-")), n)
    tracemalloc.start()
    t0 = time.perf_counter()
    f = audit_findings(folder, threshold=0.9)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return [("aggregate", f"salient audit, {n} items x 7 variants", f"{seconds:.1f} s", f"{peak / 2**20:.0f} MB peak",
             f"{len(f.flagged)} flagged; goal < 10 s")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="cost,aggregate")
    ap.add_argument("--copies", type=int, default=2, help="times each composite is listed (cost)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    rows = []
    if "cost" in args.only:
        rows += cost(args.copies, args.rounds)
    if "aggregate" in args.only:
        rows += aggregate(args.rows)
    from salient.report.table import format_table

    for line in format_table(("section", "what", "cost", "rate", "note"), rows, indent=""):
        print(line)


if __name__ == "__main__":
    main()
