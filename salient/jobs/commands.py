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

    p = sub.add_parser("demo", help="explain the sample photos with the real model (RISE, DiDA, Grad-CAM++, BOREx)",
                       description="The sample photos, the embedded EfficientNet-Lite0, four methods, their "
                                   "insertion/deletion AUCs, the store, PNG overlays and DiDA-View panels, and a "
                                   "summary table. A few minutes on a laptop CPU.")
    p.add_argument("--out", default="demo", metavar="DIR",
                   help="output folder (default ./demo): new, empty, or an earlier demo's (others are refused)")
    p.add_argument("--restart", action="store_true", help="discard an earlier demo in DIR")
    p.set_defaults(func=cmd_demo)


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
