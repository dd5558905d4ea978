"""``salient bench``: the parser and the command (hooked into ``salient.cli`` by :func:`add_bench_parser`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine import EXECUTORS
from ..engine.worker import PRECISIONS
from ..errors import SalientError, short_repr
from ..kernels import BACKENDS
from .suite import METHODS, SUITE_VERSION, parse_counts, parse_methods

QUICK_SECONDS = 0.25  # --quick without a value: rounds of about this many seconds


def _quick(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {s!r}")
    return v


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark this machine or a Ray cluster on masked inference (forward passes/s, ratio to raw)",
        description=f"The standard suite (version {SUITE_VERSION}; see salient.bench): the model's raw forward rate "
                    "at the engine's batch per worker (the ceiling), then engine forward passes/s of "
                    f"{', '.join(METHODS)} on the bundled photos, each with its ratio to raw, per-worker and total "
                    "rates, the method's share of the time (BOREx: GP and search), the workers' idle share, the "
                    "scheduler's dispatch rate, scaling efficiency over --workers and where the limit is. Raw and "
                    "engine rounds alternate in random order with equal lengths; figures are medians with their "
                    "min-max spread; warm-up is excluded and reported. Writes OUT/results.parquet, "
                    "OUT/results.json and OUT/results.png. A lower --precision on CPU-only workers runs with "
                    "torch's CPU autocast and says so in one line (it is not refused).")
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (e.g. auto); default: start a local Ray")
    p.add_argument("--workers", metavar="N[,N...]",
                   help="worker counts to run the suite at, e.g. 1,2,4 (default: the executor's own count); a count "
                        "above what the machine or cluster holds is refused before any work")
    p.add_argument("--method", metavar="M[,M...]",
                   help=f"the suite's methods to run (default all: {','.join(METHODS)})")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), bf16 or fp16 autocast of the masked forwards; on CPU-only workers this is "
                        "torch's CPU autocast (a line says so; the fp32 fast paths are then off)")
    p.add_argument("--kernels", choices=BACKENDS, help="mask kernels: auto (default), torch or cupy")
    p.add_argument("--batch-size", type=int,
                   help="forward batch size (default: the engine's: 4 on CPU, autotuned on GPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: a GPU if there is one)")
    p.add_argument("--model", default="efficientnet-lite0", metavar="SPEC", help="the model (default: the embedded "
                   "efficientnet-lite0); any spec salient explain takes")
    p.add_argument("--size", metavar="S[,S...]", help="input sides to run the photos at (default: the model's); a "
                   "side other than the model's runs in whole mode (photos resized to S x S)")
    p.add_argument("--huge", action="store_true", help="add a synthetic huge image (1024 x 1024, whole mode)")
    p.add_argument("--video", action="store_true", help="add clips of a sample video through frames:MODEL")
    p.add_argument("--rounds", type=int, help="engine rounds per figure, each paired with a raw round (default 3; "
                   "2 with --quick)")
    p.add_argument("--quick", nargs="?", const=QUICK_SECONDS, type=_quick, metavar="SECONDS",
                   help=f"a smoke run: rounds of about SECONDS (default {QUICK_SECONDS:g}) instead of 1 s, 2 rounds")
    p.add_argument("--seed", type=int, default=0, help="seed of the methods and of the round order (default 0)")
    p.add_argument("--out", metavar="DIR", help="write results.parquet, results.json and results.png there")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="print two or more result folders side by side "
                   "(rates and ratios to the first); nothing is run")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    # imported here: pandas, pyarrow and matplotlib are not loaded by every salient command's parser
    from .compare import compare_table
    from .limits import RULE
    from .machine import one_line
    from .plot import plot_results
    from .schema import PLOT_NAME, frame, write_results
    from .table import format_table

    if args.compare:
        print(compare_table(args.compare))
        return 0
    from .runner import BenchConfig, run_bench

    if args.seed < 0:
        raise SalientError(f"--seed must be >= 0, got {args.seed}")
    if args.batch_size is not None and args.batch_size < 1:
        raise SalientError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.address and args.executor != "ray":
        raise SalientError("--address joins a Ray cluster: it needs --executor ray")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise SalientError(f"--out {short_repr(str(out), 80)}: not a folder")
    config = BenchConfig(
        model=args.model, executor=args.executor, address=args.address,
        workers=parse_counts(args.workers, "--workers") if args.workers else (None,),
        methods=parse_methods(args.method), sizes=parse_counts(args.size, "--size") if args.size else (),
        precision=args.precision, kernels=args.kernels, batch_size=args.batch_size, device=args.device,
        rounds=args.rounds if args.rounds is not None else (2 if args.quick else 3),
        round_seconds=args.quick or 1.0, huge=args.huge, video=args.video, seed=args.seed, quick=bool(args.quick))
    meta, rows = run_bench(config)
    s = meta["settings"]
    quick = ", QUICK (a smoke run, not results)" if s["quick"] else ""
    print(f"# salient bench, suite {meta['suite_version']}: {s['model']}, {s['executor']}, {s['precision']}, "
          f"{s['rounds']} rounds of >= {s['round_seconds']:g} s{quick}")
    print(f"# {one_line(meta['machine'])}")
    for e in meta["engines"].values():
        print(f"# engine: {e['model']}, {e['workers']} worker{'s' * (e['workers'] != 1)}, batch {e['batch_size']}, "
              f"threads {e['threads']}, {e['device']}, kernels {e['kernels']}, {e['precision']}")
    for note in meta["notes"]:
        print(f"# note: {note}")
    print(format_table(rows))
    for lim in meta["limits"]:
        print(f"# {lim['line']}")
    print(f"# limit rule: {RULE}")
    if out is not None:
        write_results(out, meta, rows)
        plot_results(frame(rows), out / PLOT_NAME, title=f"salient bench suite {meta['suite_version']}: "
                     f"{s['model'][:80]}, {s['executor']}, {s['precision']}\n{one_line(meta['machine'])[:160]}")
        print(f"salient bench: results in {out}/ (results.parquet, results.json, {PLOT_NAME})", file=sys.stderr)
    return 0
