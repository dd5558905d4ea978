"""Visual inspection's speed (issue 19, "Speed"): prints one table.

The demo's models (``salient.inspect.demo``: trained once, cached in ``--models``) on ``--items``
brick patches with planted defects and 8 normal references: items/s of the whole inspection (recon maps,
candidates, the Siamese re-check), the forward passes/s of the autoencoder and of the embedding net
inside it (their passes over the wall time of their stage) against each model's raw forward rate in
the engine's layout (2 streams x 1 thread, batch 4, run right after for the stage's duration; goal >= 0.9),
and the share of the workers' wall time outside forward passes (thresholding, components, crops,
scheduling; goal < 15%). Small models make per-pass overheads weigh more: read the ratios with that.

    python benchmarks/inspection.py --items 96

(Not ``inspect.py``: a script of that name shadows the standard library's ``inspect`` for everything it imports.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> None:
    from throughput import raw_rate, time_forwards

    import salient
    from salient.engine.worker import pick_device
    from salient.inspect.demo import CROP, PATCH, trained_models, write_texture_set
    from salient.inspect.pipeline import InspectSettings, inspect_items
    from salient.report.table import format_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "salient-inspect-models"))
    args = ap.parse_args(argv)
    ae_path, emb_path = trained_models(Path(args.models), echo=print)
    ident = {"mean": "0,0,0", "std": "1,1,1"}
    ae = salient.load_model(str(ae_path), output="reconstruction", input_size=PATCH, **ident)
    emb = salient.load_model(str(emb_path), output="embedding", input_size=CROP, score="logit", **ident)
    files = write_texture_set(Path(tempfile.mkdtemp(prefix="salient-inspect-")), "brick", n_items=args.items)
    with salient.Engine(ae) as e_ae, salient.Engine(emb) as e_emb:
        fwd = {"ae": time_forwards(e_ae.executor), "emb": time_forwards(e_emb.executor)}
        stage = {"ae": [0.0, 0], "emb": [0.0, 0]}
        for name, eng in (("ae", e_ae), ("emb", e_emb)):  # the wall time and passes of each stage
            inner = eng.run

            def run(tasks, on_progress=None, inner=inner, name=name, eng=eng):
                t0, n0 = time.perf_counter(), eng.n_forward
                yield from inner(tasks, on_progress)
                stage[name][0] += time.perf_counter() - t0
                stage[name][1] += eng.n_forward - n0

            eng.run = run
        t0 = time.perf_counter()
        res = inspect_items(ae, files["parts"], files["normals"], emb, InspectSettings(), engines=(e_ae, e_emb))
        wall = time.perf_counter() - t0
        workers = e_ae.executor.n_workers
    from salient.images import load_image
    from salient.inspect.pipeline import _gt_mask
    from salient.metrics.anomaly import pixel_auroc

    gts = [_gt_mask(m, load_image(p), res.maps[0].shape) for m, p in zip(files["masks"], files["parts"], strict=True)]
    auroc = pixel_auroc(res.maps, gts)  # not timed: the metrics are not the inspection
    rows = [("inspection", f"{args.items} items", f"{wall:.1f} s", f"{args.items / wall:.1f} items/s",
             f"{len(res.candidates)} candidates, pixel AUROC {auroc:.3f}")]
    busy = 0.0
    for name, model in (("ae", ae), ("emb", emb)):
        seconds, passes = stage[name]
        n_r, t_r = raw_rate(model, 4, pick_device(), max(seconds, 2.0), streams=2, threads=1)
        rate = passes / seconds if seconds else 0.0
        rows.append((f"{name} forward", f"{passes} passes", f"{seconds:.1f} s", f"{rate:.1f}/s",
                     f"ratio to raw {rate / (n_r / t_r):.2f} (raw {n_r / t_r:.1f}/s; goal >= 0.9)"))
        busy += fwd[name][0]
    rows.append(("outside forwards", "", "", f"{100 * (1 - busy / (wall * workers)):.0f}%",
                 f"of {workers} workers' wall time (goal < 15%)"))
    for line in format_table(("what", "n", "time", "rate", "note"), rows, indent=""):
        print(line)


if __name__ == "__main__":
    main()
