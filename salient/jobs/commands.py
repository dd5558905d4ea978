"""The job subcommands of ``salient``: ``run JOB.yaml``, ``show OUT``, ``repair OUT``, ``demo``.

``salient.cli`` calls :func:`add_subcommands` with its subparsers; each subcommand sets ``func``
(``args -> exit code``). Bad input raises SalientError (the CLI prints one line, exit code 2);
``run --strict`` returns 1 when any item failed.
"""

from __future__ import annotations

import argparse
import sys


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a job spec (YAML) into a store; rerun the same command to resume",
                       description="Explain every item of a job's source with its methods into OUT (Zarr maps + "
                                   "Parquet table). Rerunning the same command after a crash resumes it.")
    p.add_argument("job", metavar="JOB.yaml", help="the job spec")
    p.add_argument("--restart", action="store_true", help="discard OUT's results and start over (also needed "
                                                          "when the spec changed)")
    p.add_argument("--strict", action="store_true", help="exit with code 1 if any item failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("show", help="summarise a store: per method, items ok/error and mean AUCs",
                       description="Per method: items ok and in error, mean insertion and deletion AUC.")
    p.add_argument("out", metavar="OUT", help="a folder written by salient run, demo or explain")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("repair", help="mend a damaged store, keeping every intact map; then rerun the job",
                       description="Move unreadable results parts aside into OUT/damaged/, rebuild a damaged "
                                   "or lost zarr.json from the copy every results part carries, and count the "
                                   "maps that are missing or damaged: the next `salient run` of the job redoes "
                                   "only what was lost.")
    p.add_argument("out", metavar="OUT", help="a folder written by salient run, demo or explain")
    p.set_defaults(func=cmd_repair)

    add_demo_parser(sub, "demo", "explain the sample photos with the real model (RISE, DiDA, Grad-CAM++, BOREx)",
                    "The sample photos, the embedded EfficientNet-Lite0, four methods, their insertion/deletion "
                    "AUCs, the store, PNG overlays and DiDA-View panels, and a summary table. A few minutes on a "
                    "laptop CPU.", cmd_demo)
    add_audit_commands(sub)
    add_inspect_commands(sub)
    add_dataset_commands(sub)

    p = sub.add_parser("report", help="write a static HTML report of a store to OUT/report/index.html",
                       description="The job, per method a table and metric distributions, paired comparisons, "
                                   "clusters and a bounded gallery, as HTML + PNG under OUT/report/ (no server).")
    p.add_argument("out", metavar="OUT", help="a folder written by salient run, demo or explain")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("view", help="browse a store in a local web viewer (DiDA View)",
                       description="A local web viewer of OUT: an item browser and a DiDA-View page per item.")
    p.add_argument("out", metavar="OUT", help="a folder written by salient run, demo or explain")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(func=cmd_view)


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_job

    summary = run_job(args.job, restart=args.restart, progress=False if args.quiet else None,
                      echo=lambda s: print(s, file=sys.stderr))
    for line in summary.lines():
        print(line)
    return 1 if args.strict and summary.n_errors else 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..report.table import show_table

    for line in show_table(args.out):
        print(line)
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from ..store.repair import repair

    for line in repair(args.out):
        print(f"salient repair: {line}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, restart=args.restart)
    return 0


def add_audit_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="does the model look at the object or its context? (a job with audit: ...)",
                       description="Per class and overall: accuracy under each context variant, BG-gap, score "
                                   "drops under context change vs perturbation, and the flagged items (written to "
                                   "OUT/audit/ with overlays).")
    p.add_argument("out", metavar="OUT", help="a folder written by salient run with an audit: section")
    p.add_argument("--top", type=int, default=10, metavar="N", help="flagged items to print and draw (default 10)")
    p.add_argument("--flag-context-share", type=float, default=None, metavar="X",
                   help="flag items whose context share exceeds X (default: the job's audit.flag_context_share)")
    p.set_defaults(func=cmd_audit)

    add_demo_parser(sub, "demo-audit", "composites of the sample photos with exact masks, audited with the real "
                    "model", "Objects cut from the bundled photos with known masks, pasted on other photos' "
                    "backgrounds; the real EfficientNet-Lite0, Grad-CAM++, RISE and context variants; prints what "
                    "the audit finds. About two minutes on a laptop CPU.", cmd_demo_audit)


def add_demo_parser(sub: argparse._SubParsersAction, name: str, help: str, description: str, func) -> None:
    """A demo command: ``--out DIR`` (default ./NAME; new, empty or an earlier NAME's) and ``--restart``."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--out", default=name, metavar="DIR",
                   help=f"output folder (default ./{name}): new, empty, or an earlier {name}'s (others are refused)")
    p.add_argument("--restart", action="store_true", help=f"discard an earlier {name} in DIR")
    p.set_defaults(func=func)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit.findings import audit_findings, write_findings
    from ..errors import SalientError

    if args.top < 0:
        raise SalientError(f"--top must be >= 0, got {args.top}")
    findings = audit_findings(args.out, args.flag_context_share)
    where = write_findings(args.out, findings, overlays=args.top)
    for line in findings.lines(args.top):
        print(line)
    print(f"salient audit: tables and overlays in {where}")
    return 0


def cmd_demo_audit(args: argparse.Namespace) -> int:
    from .demo_audit import run_demo_audit

    run_demo_audit(args.out, restart=args.restart)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..errors import SalientError
    from ..report.html import write_report

    index, missing = write_report(args.out)
    print(index)
    if missing:  # what is there is reported; the store itself is not whole
        more = f" (and {len(missing) - 1} more, listed in the report)" if len(missing) > 1 else ""
        raise SalientError(f"report {args.out}: written to {index}, but the store is incomplete: {missing[0]}{more}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from ..report.viewer import serve

    serve(args.out, port=args.port, host=args.host)
    return 0


def add_dataset_commands(sub: argparse._SubParsersAction) -> None:
    """``compare OUT A B --metric M [--by COL]`` and ``cluster OUT --method M --k auto|N [--by COL] [--seed S]``."""
    p = sub.add_parser("compare", help="paired comparison of two methods on a metric (one-sided Wilcoxon)",
                       description="Over the items and targets both methods scored (status ok, finite values): "
                                   "n, wins/ties/losses of A, median difference A - B, and the one-sided Wilcoxon "
                                   "signed-rank test in the metric's better direction (greater for insertion_auc, "
                                   "object_share, ...; less for deletion_auc).")
    p.add_argument("out", metavar="OUT", help="a folder written by salient run")
    p.add_argument("a", metavar="A", help="the first method (the one tested to be better)")
    p.add_argument("b", metavar="B", help="the second method")
    p.add_argument("--metric", required=True, help="a metric column (insertion_auc) or metric name (insertion)")
    p.add_argument("--by", default=None, metavar="COL", help="also per value of this column (label, true_label)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("cluster", help="k-means of a method's attention maps: representative maps per cluster",
                       description="Downsample every map of the method (area average), normalise, k-means; writes "
                                   "OUT/clusters/<method>.parquet (cluster per row), .png (centroid grid) and the "
                                   "centroids to saliency.zarr/clusters/<method>.")
    p.add_argument("out", metavar="OUT", help="a folder written by salient run")
    p.add_argument("--method", required=True, help="the method whose maps are clustered")
    p.add_argument("--k", default="auto", help="number of clusters, or auto (silhouette over k = 2..10)")
    p.add_argument("--by", default="label", metavar="COL", help="column of the class make-up (default label)")
    p.add_argument("--seed", type=int, default=0, help="k-means random state (default 0)")
    p.add_argument("--size", type=int, default=32, metavar="PX", help="downsampled side (default 32)")
    p.set_defaults(func=cmd_cluster)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..metrics.paired import compare
    from ..store import read_results

    table = compare(read_results(args.out), args.a, args.b, args.metric, by=args.by)
    print(f"{args.a} vs {args.b}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from ..metrics.clusters import cluster_maps

    result = cluster_maps(args.out, args.method, k=args.k, by=args.by, seed=args.seed, size=(args.size, args.size))
    for line in result.lines():
        print(line)
    print(f"salient cluster: {', '.join(str(p) for p in result.paths)} and saliency.zarr/clusters/{args.method}")
    return 0


def add_inspect_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="visual inspection: autoencoder anomaly maps, candidates, Siamese re-check",
                       description="Anomaly maps of an autoencoder (method recon), candidate regions above a "
                                   "threshold calibrated on normal references, re-checked by a Siamese embedding "
                                   "net against the same place on K references; the store, "
                                   "OUT/inspect/{candidates,images}.parquet, overlays, and metrics with --masks.")
    p.add_argument("items", nargs="+", metavar="IMAGE", help="the images to inspect (a quoted glob is expanded)")
    p.add_argument("--ae", required=True, metavar="SPEC", help="the autoencoder: a TorchScript file or "
                   "package.module:callable, options after '?' (input_size=64&mean=0,0,0&std=1,1,1)")
    p.add_argument("--normals", nargs="+", required=True, metavar="IMAGE", help="normal references (same size)")
    p.add_argument("--siamese", metavar="SPEC", help="the embedding net of the re-check (none: keep every candidate)")
    p.add_argument("--masks", nargs="+", metavar="IMAGE", help="ground-truth defect masks, matched to the items by "
                   "file name (an item without one is normal): prints pixel AUROC, AUPRO, image AUROC")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--k", type=int, default=5, help="references each candidate is compared with (default 5)")
    p.add_argument("--margin", type=float, default=0.25, help="crop margin, a fraction of the box side (0.25)")
    p.add_argument("--sigma", type=float, default=4.0, help="Gaussian smoothing of the map in px (4)")
    p.add_argument("--kind", choices=("abs", "ssim"), default="abs", help="|I - recon| or 1 - SSIM (abs)")
    p.add_argument("--rule", choices=("percentile", "sigma"), default="percentile",
                   help="candidate threshold: the q-th percentile of the normal maps, or mean + k sigma")
    p.add_argument("--q", type=float, default=99.5, help="that percentile (99.5)")
    p.add_argument("--min-area", type=int, default=16, help="smallest candidate in px (16)")
    p.add_argument("--workers", type=int, default=None, help="local workers (default: one per core)")
    p.set_defaults(func=cmd_inspect)

    add_demo_parser(sub, "demo-inspect", "visual inspection on real textures with planted defects",
                    "Patches of scikit-image's brick, grass and gravel photos, a small autoencoder and Siamese net "
                    "trained on normal patches (seeded, cached in DIR/models), planted scratches, spots and holes; "
                    "prints pixel AUROC, AUPRO and the false candidates the re-check removed. About a minute.",
                    cmd_demo_inspect)


def _paths(values: list[str]) -> list[str]:
    import glob

    out: list[str] = []
    for v in values:
        out += sorted(glob.glob(v, recursive=True)) if any(c in v for c in "*?[") else [v]
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import SalientError
    from ..inspect.pipeline import InspectSettings, inspect_items, write_inspection
    from ..inspect.recheck import RecheckSettings
    from ..models import load_model

    items, normals = _paths(args.items), _paths(args.normals)
    for p in items + normals + _paths(args.masks or []):
        if not Path(p).is_file():
            raise SalientError(f"{p}: no such file")
    masks = None
    if args.masks:
        by_name = {Path(m).name: m for m in _paths(args.masks)}
        masks = [by_name.get(Path(p).name) for p in items]
    ae = load_model(args.ae, output="reconstruction")
    emb = load_model(args.siamese, output="embedding", score="logit") if args.siamese else None
    settings = InspectSettings(sigma=args.sigma, kind=args.kind, rule=args.rule, q=args.q, min_area=args.min_area,
                               recheck=RecheckSettings(k=args.k, margin=args.margin))
    opts = {"workers": args.workers} if args.workers else {}
    result = inspect_items(ae, items, normals, emb, settings, masks=masks, **opts)
    where = write_inspection(Path(args.out), result, items, ae, settings)
    kept = int(result.candidates["kept"].sum()) if len(result.candidates) else 0
    print(f"salient inspect: {len(items)} items, threshold {result.threshold:.4g}, {len(result.candidates)} "
          f"candidates, {kept} kept after the re-check -> {where}")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    return 0


def cmd_demo_inspect(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from ..inspect.demo import TEXTURES, run_demo_inspect

    if args.restart and Path(args.out).is_dir() and (Path(args.out) / "models").is_dir():
        for t in TEXTURES:
            shutil.rmtree(Path(args.out) / t, ignore_errors=True)
    run_demo_inspect(args.out)
    return 0
