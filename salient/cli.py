"""The ``salient`` command.

``salient explain IMAGE... --method M [--model SPEC] [--target T] [--set key=value]... [--out DIR]``
explains each image, writes one PNG overlay per map (and a DiDA-View panel for topK, K > 1) under
``OUT/overlays/``, the maps and result rows into the store (``OUT/saliency.zarr`` + ``OUT/results/``),
and prints one line per map.

OUT accumulates: explaining into it again with the same model and the same method settings (parameters,
target, seed) replaces the maps of the images it already holds (at their rows) and appends the others;
another method adds its own array. Another model, or a method it holds made with other settings, is
refused before any work (one line: choose another ``--out``, or ``--restart`` to discard the earlier
explain output); so is a job's output folder, even with ``--restart`` (it belongs to the job).

Exit codes: 0 success; 2 bad input (a one-line ``salient: error: ...`` on stderr, no traceback);
1 an unexpected error (one line too; ``SALIENT_TRACEBACK=1`` shows the traceback); 130 interrupted.
Every input of ``explain`` (model spec, method, parameters, target, each image: readable, decodable,
finite scores) is checked before OUT is created, so a bad input leaves nothing half-written. An item
that fails later, mid-run, becomes an ``error`` row in the store and the exit code is 2 (1 if the
failure was unexpected).

Other subcommands (``run``, ``show``, ``demo``) come from ``salient.jobs.commands.add_subcommands``
when that module exists; like ``explain`` they set ``func`` (``args -> exit code``) on their parser.
``bench`` comes from :func:`salient.bench.command.add_bench_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .engine import EXECUTORS, Engine, Task
from .engine.tasks import explain_task, parse_target
from .engine.worker import PRECISIONS
from .errors import SalientError, short_repr
from .images import Image, load_image
from .kernels import BACKENDS
from .methods import METHODS, Method, get_method
from .methods.drive import first_round
from .methods.metric import METRICS, metric_columns
from .models import Model, load_model
from .paths import check_out_dir
from .report import save_overlay, save_panel
from .saliency import Saliency

DEFAULT_MODEL = "efficientnet-lite0"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``prog: error: message``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def one_line(msg: Any) -> str:
    return " ".join(str(msg).split()) or "(no message)"


def about(path: str, e: Exception) -> str:
    """The one-line message of ``e``, prefixed with ``path`` unless it already names it."""
    msg = one_line(e)
    return msg if path in msg else f"{path}: {msg}"


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= ``low``, else the one-line error "expected <what>"."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}")
    return v


# -- parser
def build_parser() -> Parser:
    parser = Parser(prog="salient", description="Saliency maps for image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_explain(sub)
    try:
        commands = importlib.import_module(f"{__package__}.jobs.commands")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.jobs.commands":
            raise
    else:
        commands.add_subcommands(sub)
    from .bench.command import add_bench_parser

    add_bench_parser(sub)
    return parser


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain images with one method; write PNGs and the store",
                       description="Explain each IMAGE with METHOD; write PNG overlays, OUT/saliency.zarr and "
                                   "OUT/results/, and print one line per map.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, TIFF, WebP, BMP), or videos (MP4, WebM, MKV, AVI, MOV): each "
                        "explained clip by clip into one map along t")
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="the explainer")
    p.add_argument("--model", metavar="SPEC",
                   help="efficientnet-lite0 (default; for videos frames:efficientnet-lite0), "
                        "torchvision:ARCH?weights=FILE, frames:IMAGE-MODEL (an image model over each frame), a "
                        "TorchScript file, or package.module:callable; options follow '?' as key=value joined by '&'")
    p.add_argument("--target", default="top1", help="top1 (default), topK (one map per class), a class id or a label")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter (repeatable); dotted keys such as prior.n_masks pass through")
    p.add_argument("--prior", help="same as --set prior=NAME")
    p.add_argument("--layer", help="same as --set layer=PATH")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed, an integer >= 0 (default 0)")
    p.add_argument("--out", default="out", metavar="DIR",
                   help="output folder (default ./out); explaining into it again with the same model and settings "
                        "replaces the maps of images it holds and adds the others; other settings are refused")
    p.add_argument("--restart", action="store_true",
                   help="discard what OUT holds from earlier explain runs (maps, table, overlays) first")
    p.add_argument("--metrics", action="store_true", help="also compute every metric (insertion, deletion AUC)")
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (e.g. auto); default: start a local Ray")
    p.add_argument("--workers", type=_positive_int,
                   help="number of workers (default: one per core; local: at most 2 per core, more: use ray)")
    p.add_argument("--gpus-per-worker", type=_positive_float, help="GPUs per worker (Ray; 0.5: two workers per GPU)")
    p.add_argument("--accelerator", metavar="TYPE",
                   help="Ray: run GPU workers on this accelerator type only (H100, A100, ...)")
    p.add_argument("--batch-size", type=_positive_int, help="forward batch size (default: autotuned)")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32 (default), bf16 or fp16: autocast of the masked "
                   "forwards (on a GPU; bf16 maps correlate >= 0.99 with fp32 ones)")
    p.add_argument("--kernels", choices=BACKENDS, help="mask kernels: auto (default: CuPy on a GPU when installed), "
                   "torch or cupy")
    p.add_argument("--cuda-graphs", action="store_true", help="replay a captured forward for each batch shape (CUDA)")
    p.add_argument("--whole", action="store_true",
                   help="explain each image at its native size (models that accept any input size: fully "
                        "convolutional with global pooling); maps go to OUT/saliency.zarr/items/<key>/<method>")
    p.add_argument("--level", type=_nonneg_int, help="the pyramid level of a slide to read (0: full resolution)")
    p.add_argument("--tiles", action="store_true",
                   help="tile mode for huge images (tiled TIFF, OME-TIFF, Zarr, .svs/.ndpi/.mrxs): explain tiles of "
                        "the model's input size and blend them into OUT/saliency.zarr/items/<key>/<method> (OME-Zarr)")
    p.add_argument("--tile", type=_positive_int, help="tile side in pixels (default: the model's input size)")
    p.add_argument("--tile-overlap", type=float, default=0.0, metavar="O", help="tile overlap in [0, 1) (default 0)")
    p.add_argument("--skip-background", action="store_true",
                   help="tile mode: skip near-uniform or mostly white/black tiles (marked in the tile-score map)")
    p.add_argument("--clip", type=_positive_int,
                   help="videos: frames per clip (default the model's; sets the frames option of the model)")
    p.add_argument("--clip-stride", type=_positive_int, help="videos: frames between clip starts (default: the clip)")
    p.add_argument("--fps", type=float, help="videos: sample frames at this rate (default: every frame)")
    p.add_argument("--frame-step", type=_positive_int, help="videos: keep every K-th frame (instead of --fps)")
    p.add_argument("--top-clips", type=_positive_int,
                   help="videos: explain only the K clips with the highest target score (the others: NaN)")
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="per-worker memory for the batches of inputs at another size than the model's, e.g. 8GB "
                        "(default 8GiB): whole mode lowers such a batch to fit it")
    p.set_defaults(func=cmd_explain)


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> {k: v}; keys kept verbatim (dotted keys included), later pairs win."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise SalientError(f"--set expects KEY=VALUE, got {short_repr(pair)}")
        out[key.strip()] = value.strip()
    return out


def method_params(args: argparse.Namespace) -> dict[str, str]:
    params = parse_sets(args.set)
    for key in ("prior", "layer"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    return params


# -- validation before any output
def check_paths(images: Sequence[str]) -> list[str]:
    """Cheap checks (exists, a file, not empty, readable) before the model loads; duplicates dropped."""
    seen: dict[str, None] = {}
    for raw in images:
        p = Path(raw)
        if not p.exists():
            raise SalientError(f"{raw}: no such file")
        if not p.is_file():
            raise SalientError(f"{raw}: not a regular file")
        if not os.access(p, os.R_OK):
            raise SalientError(f"{raw}: permission denied")
        if p.stat().st_size == 0:
            raise SalientError(f"{raw}: empty file (0 bytes)")
        seen.setdefault(str(p), None)
    return list(seen)


def check_out(out: Path) -> None:
    check_out_dir(out, "--out")


def preflight(eng: Engine, paths: Sequence[str], method: Method, params: dict, target: Any, seed: int,
              whole: bool = False, level: int | None = None) -> None:
    """Decode every image and run its first round (:func:`~salient.methods.drive.first_round`: the unmasked
    scores checked, the targets resolved, the method started); raise the first problem. ``whole``, ``level``:
    items at native size (:meth:`Engine.item`)."""
    checked = method.check_params(params)
    problems: list[str] = []

    def tasks() -> Iterator[Task]:
        for i, path in enumerate(paths):
            try:
                item = eng.item(path, index=i, whole=whole, level=level)
            except SalientError as e:
                problems.append(str(e))
                continue
            yield Task(path, item, first_round(explain_task(item, eng.model, method.name, target, seed, checked)))

    for task, out in eng.run(tasks()):
        if isinstance(out, SalientError):
            problems.append(about(task.key, out))
        elif isinstance(out, Exception):
            raise out
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SalientError(problems[0] + more)


# -- output
def _slug(s: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-")[:n] or "x"


def png_stems(paths: Sequence[str]) -> dict[str, str]:
    """A file-name stem per path: the image's stem, suffixed -2, -3 ... where stems collide."""
    out: dict[str, str] = {}
    used: dict[str, int] = {}
    for p in paths:
        stem = _slug(Path(p).stem, 80)
        used[stem] = used.get(stem, 0) + 1
        out[p] = stem if used[stem] == 1 else f"{stem}-{used[stem]}"
    return out


def map_line(source: str, s: Saliency, metrics: bool) -> str:
    parts = [source, s.method, f"{s.label} ({s.target})", f"score={s.base_score:.4g}"]
    if metrics:
        parts += [f"{k}={s.metrics[k]:.4f}" for k in metric_columns() if k in s.metrics]
    parts += [f"n_forward={s.n_forward}", f"{s.seconds:.2f}s"]
    return "  ".join(parts)


def write_pngs(folder: Path, stem: str, image: Image, results: list[Saliency]) -> None:
    for s in results:
        save_overlay(folder / f"{stem}_{s.method}_{s.target}-{_slug(s.label)}.png", image, s)
    if len(results) > 1:
        save_panel(folder / f"{stem}_{results[0].method}_panel.png", image, results)


def run_summary(before: Any, after: Any) -> Any:
    """The engine's summary of what happened between two ``Engine.summary()`` snapshots."""
    return replace(after, items=after.items - before.items, failed=after.failed - before.failed,
                   n_forward=after.n_forward - before.n_forward, seconds=after.seconds - before.seconds)


class _Progress:
    """A tqdm bar over items on stderr, only when stderr is a terminal; result lines go around it."""

    def __init__(self, total: int):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="item", file=sys.stderr, dynamic_ncols=True, leave=False)
        self.forward = 0

    def on_forward(self, n: int) -> None:
        self.forward += n
        if self.bar is not None:
            self.bar.set_postfix(forward=self.forward, refresh=False)

    def item_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def write(self, line: str, err: bool = False) -> None:
        f = sys.stderr if err else sys.stdout
        if self.bar is not None:
            self.bar.write(line, file=f)
        else:
            print(line, file=f, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- explain
@dataclass
class ExplainPlan:
    """Everything ``explain`` needs, validated before any output exists."""

    method: Method
    params: dict[str, Any]
    paths: list[str]
    out: Path
    model: Model
    target: Any
    metrics: tuple[str, ...]
    executor_opts: dict[str, Any]
    model_id: str = ""
    claims: dict[str, dict[str, Any]] | None = None  # method -> the settings its maps are made with
    videos: bool = False  # the paths are videos (explained clip by clip)


def model_id(model: Model) -> str:
    """The model's name with its options (``name?k=v&...``, sorted): the id the store compares."""
    opts = "&".join(f"{k}={v}" for k, v in sorted(model.options.items()))
    return f"{model.name}?{opts}" if opts else model.name


def check_store(out: Path, restart: bool, mid: str, claims: dict[str, dict[str, Any]]) -> None:
    """Refuse, before any work, an OUT whose store holds what these maps do not belong with (a
    job's results, another model, the method with other settings: :mod:`salient.store.claims`);
    ``restart`` discards an earlier explain's store, never a job's."""
    from .store.claims import check_claims, held

    attrs = held(out)
    check_claims(out, {} if restart and "spec_hash" not in attrs else attrs, mid, None, claims)


def video_paths(paths: Sequence[str], args: argparse.Namespace) -> bool:
    """Whether the inputs are videos (all of them; a mix with images is refused), checking the options that
    only videos take."""
    from .io.video import is_video_path

    kinds = {is_video_path(p) for p in paths}
    if len(kinds) > 1:
        raise SalientError("explain takes images or videos, not both: run them separately")
    videos = kinds == {True}
    given = [f"--{k.replace('_', '-')}" for k in ("clip", "clip_stride", "fps", "frame_step", "top_clips")
             if getattr(args, k, None) is not None]
    if given and not videos:
        raise SalientError(f"{given[0]} applies to videos; the inputs are images")
    if videos and (args.whole or getattr(args, "tiles", False)):
        raise SalientError("--whole and --tiles apply to images; videos are explained clip by clip")
    if getattr(args, "fps", None) is not None and args.frame_step is not None:
        raise SalientError("give --fps or --frame-step, not both")
    return videos


def plan_explain(args: argparse.Namespace) -> ExplainPlan:
    """The cheap checks first (method, parameters, files, OUT), then the model and the target."""
    method = get_method(args.method)
    params = method_params(args)
    checked = method.check_params(params)
    paths = check_paths(args.images)
    out = Path(args.out)
    check_out(out)
    if getattr(args, "level", None) is not None and not args.whole and not getattr(args, "tiles", False):
        raise SalientError("--level reads a pyramid level of a slide: it needs --whole or --tiles")
    videos = video_paths(paths, args)
    if args.model is None:
        args.model = f"frames:{DEFAULT_MODEL}" if videos else DEFAULT_MODEL
    model = load_model(args.model, **({"frames": args.clip} if videos and args.clip is not None else {}))
    if videos:
        from .jobs.video import check_clip

        check_clip(model, args.clip)
    method.check_model(checked, model, sized=not args.whole)  # whole mode: each image's own size, when it runs
    target = parse_target(args.target, model)
    label = model.label(target) if isinstance(target, int) else ""
    claims = {method.name: {"method": method.name, "parameters": checked, "target": args.target, "seed": args.seed,
                            "signed": method.signed, "label": label, "precision": args.precision or "fp32"}}
    check_store(out, args.restart, model_id(model), claims)
    opts = {k: getattr(args, k) for k in ("address", "workers", "gpus_per_worker", "accelerator", "batch_size",
                                          "memory_limit", "precision", "kernels") if getattr(args, k, None) is not None}
    if getattr(args, "cuda_graphs", False):
        opts["cuda_graphs"] = True
    metrics = tuple(k for k, m in METRICS.items() if "mask" not in m.options)  # explain has no object masks
    return ExplainPlan(method, params, paths, out, model, target, metrics if args.metrics else (), opts,
                       model_id(model), claims, videos)


def write_explanations(eng: Engine, plan: ExplainPlan, args: argparse.Namespace,
                       progress: _Progress) -> int:
    """Explain every path into the store and PNGs, printing a line per map; returns the exit status
    (0, or 2 / 1 when an item failed mid-run on its data / unexpectedly)."""
    from .store import Store, read_results  # zarr is imported only when something is written
    from .store.claims import discard
    from .store.whole import add_whole

    m = plan.method.name
    spec = {"command": "explain", "model": args.model}  # per method: the root's "methods"; items: the table
    stems = png_stems(plan.paths)
    images: dict[str, Image] = {}  # the originals of the items in flight, for their overlays

    def entries():
        for i, path in enumerate(plan.paths):
            try:
                item = eng.item(path, index=i, whole=args.whole, level=args.level)
            except Exception:  # noqa: BLE001 - explain_many reports it for this item
                yield path, path
                continue
            images[path] = item.image
            yield path, item

    status = 0
    if args.restart and plan.out.is_dir():
        discard(plan.out, also=(plan.out / "overlays").glob("*.png"))
    with Store(plan.out, plan.model_id, spec, methods=plan.claims) as store:
        prev = read_results(plan.out, columns=["item_id", "position"])
        known = dict(zip(prev["item_id"], prev["position"].astype(int), strict=True))  # replaced at their rows
        nxt = int(prev["position"].max()) + 1 if len(prev) else 0
        for path in plan.paths:  # new images take the next rows in the order given, not in completion order
            if path not in known:
                known[path], nxt = nxt, nxt + 1
        for path, res in eng.explain_many(entries(), m, args.target, args.seed, metrics=plan.metrics,
                                          on_progress=progress.on_forward, whole=args.whole, level=args.level,
                                          **plan.params):
            image = images.pop(path, None)
            progress.item_done()
            if isinstance(res, Exception):  # a failure only the run could show (bad data mid-run)
                status = (status or 2) if isinstance(res, SalientError) else 1
                store.add_error(path, path, m, one_line(res), position=known.get(path))
                progress.write(f"salient: error: {about(path, res)}", err=True)
                continue
            item_id = res[0].item_id if res else path
            if args.whole:  # items/<key>/<method>: an OME-Zarr multiscale group per map (salient.store.whole)
                add_whole(store, item_id, path, res, position=known.get(item_id, known.get(path)))
            else:
                store.add(item_id, path, res, position=known.get(item_id, known.get(path)))
            write_pngs(plan.out / "overlays", stems[path], image or load_image(path), res)
            for s in res:
                progress.write(map_line(path, s, bool(plan.metrics)))
    return status


def cmd_explain(args: argparse.Namespace) -> int:
    if args.tiles:
        from .jobs.slide_job import explain_tiles_command

        if args.whole:
            raise SalientError("--tiles and --whole exclude each other: choose one mode")
        return explain_tiles_command(plan_explain(args), args)
    plan = plan_explain(args)
    if plan.videos:  # clip by clip into one map along t each
        from .jobs.video_job import explain_videos_command

        return explain_videos_command(plan, args)
    with Engine(plan.model, executor=args.executor, **plan.executor_opts) as eng:
        preflight(eng, plan.paths, plan.method, plan.params, plan.target, args.seed, args.whole, args.level)
        before = eng.summary()
        progress = _Progress(len(plan.paths))
        try:
            status = write_explanations(eng, plan, args, progress)
        finally:
            progress.close()
        print(f"salient: {run_summary(before, eng.summary())} -> {plan.out}", file=sys.stderr)
    return status


# -- entry point
@contextlib.contextmanager
def held_warnings() -> Iterator[None]:
    """Warnings raised while a command runs are held, and shown only once it has succeeded: around a
    one-line error (exit 2, or 1) they would bury it, and they mostly restate it (torch warning about
    the input that the error names)."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, or a usage error already printed on one line
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        with held_warnings():
            return int(func(args) or 0)
    except SalientError as e:
        print(f"salient: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("salient: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        if os.environ.get("SALIENT_TRACEBACK"):
            traceback.print_exc()
        print(f"salient: internal error: {type(e).__name__}: {one_line(e)} (SALIENT_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
