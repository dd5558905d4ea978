"""Run a job: a validated spec -> every (item, method) explained, scored and stored; resumable.

Order of work: the source is read once, lazily; for each item every method of the job is a task
(interleaved: the image is decoded and held by the executor once for all its methods), and the
engine's scheduler runs many items at once. Results arrive in completion order; the store places
them by the item's position in the source, so the store does not depend on that order.

Resume: the store records the spec hash (:meth:`JobSpec.spec_hash`: model, source, targets,
methods with their checked parameters, metrics, seed, a fixed batch size) and the batch size the
first run used (so forward passes have the same shape again and maps are bitwise equal). A rerun
with the same spec reads the table, checks that each recorded position still holds the same item
id, skips the (item, method) pairs whose rows are all ``ok`` and whose maps check out (every shard
file holding one is read once and its checksums verified, :func:`salient.store.check_maps`; a map
missing or damaged is redone), and redoes the rest. A different spec is refused unless ``restart``
discards the store first. A refused run changes nothing: damaged metadata (one line naming the
file: ``salient repair OUT``), another spec, an unreadable table or a changed source (the listing
of the positions the store holds is compared first: one pass over the source's names) are all
found before the store is opened for writing.

Errors: an item that cannot be read, has a bad mask or box, or yields NaN scores becomes an
``error`` row with a one-line reason and the job goes on; ``strict`` makes a job with any error
rows fail (exit code 1).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, Task
from ..engine.engine import check_executor, scored_task
from ..engine.tasks import parse_target, raising
from ..errors import SalientError
from ..methods import get_method
from ..models import Model, load_model
from ..paths import check_out_dir
from ..store import ZARR_NAME, Store, check_maps, check_metadata, item_status, read_results
from ..store.check import MapCheck
from .progress import Progress
from .sources import Entry, Source, count_in_background, entry_meta, make_source, prefetch
from .spec import JobSpec, load_spec

LOADERS = 2  # threads decoding items ahead of the engine


@dataclass(frozen=True)
class MethodPlan:
    """One method of a job, checked: its parameters with defaults, and its parsed target."""

    name: str
    params: dict[str, Any]
    target_spec: str | int
    target: int | tuple[str, int]
    signed: bool

    @property
    def k(self) -> int:
        """Maps per item."""
        return self.target[1] if isinstance(self.target, tuple) else 1


@dataclass
class Plan:
    spec: JobSpec
    model: Model
    methods: list[MethodPlan]
    source: Source
    out: Path


@dataclass
class JobSummary:
    """What a run did and what the store holds at its end."""

    out: Path
    items: int = 0  # items in the source
    skipped: int = 0  # items an earlier run had completed
    lost: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> {missing, damaged}: maps redone
    done_now: int = 0  # items explained (or failed) in this run
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> {ok, error} over the store
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # first few (item id, method, reason)
    context: dict[str, int] = field(default_factory=dict)  # the audit's context rows: {ok, error}
    n_forward: int = 0
    seconds: float = 0.0
    complete: bool = False

    @property
    def n_errors(self) -> int:
        return sum(c.get("error", 0) for c in self.counts.values())

    def lines(self) -> list[str]:
        rate = self.n_forward / self.seconds if self.seconds > 0 else 0.0
        out = [f"salient run: {self.items} items ({self.done_now} explained now, {self.skipped} done before), "
               f"{self.n_forward} forward passes in {self.seconds:.1f} s ({rate:.1f}/s) -> {self.out}"]
        for m, c in self.counts.items():
            out.append(f"  {m}: {c.get('ok', 0)} ok, {c.get('error', 0)} error")
        if self.context:
            out.append(f"  context variants: {self.context.get('ok', 0)} ok, {self.context.get('error', 0)} error "
                       f"(salient audit {self.out})")
        for m, c in self.lost.items():
            out.append(f"  {m}: " + ", ".join(f"{n} {s}" for s, n in c.items() if n)
                       + " map(s) found before this run, their items redone")
        for item, m, reason in self.errors:
            out.append(f"  error: {item} [{m}]: {reason}")
        if self.items == 0:
            out.append("  no items: the source matched nothing")
        if self.n_errors > len(self.errors):
            out.append(f"  ... {self.n_errors - len(self.errors)} more error rows (salient show {self.out})")
        return out


def one_line(e: BaseException, limit: int = 400) -> str:
    """A one-line reason: the message of a SalientError, else 'Type: message'."""
    msg = " ".join(str(e).split())
    if not isinstance(e, SalientError):
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return (msg or "error")[:limit]


def _field_error(field_name: str, e: SalientError) -> SalientError:
    return SalientError(f"{field_name}: {e}")


def plan_job(spec: JobSpec) -> Plan:
    """Everything checked before any work: the model loads, each method's target resolves, the
    source can be read, the output folder can be made, the executor's workers fit."""
    check_out_dir(spec.path(spec.out), "out")
    try:
        options = spec.model.options()
        if "weights" in options:
            options["weights"] = str(spec.path(options["weights"]))
        name = spec.model.name
        if Path(name).suffix and (Path(spec.base_dir) / name).is_file():
            name = str(Path(spec.base_dir) / name)
        if spec.source_kind == "videos" and spec.source.get("clip") is not None:  # the clip length is the model's
            options.setdefault("frames", spec.source["clip"])
        model = load_model(name, **options)
    except SalientError as e:
        raise _field_error("model", e) from None
    if model.output != "classes" and spec.metrics.kinds:
        raise SalientError(f"metrics: {spec.metrics.kinds[0]} judges class scores; {model.name} outputs a "
                           f"{model.output}, not classes")
    methods = []
    for i, m in enumerate(spec.methods):
        tspec = m.targets if m.targets is not None else spec.targets
        try:
            target = parse_target(tspec, model)
        except SalientError as e:
            raise _field_error(f"methods.{i}.targets" if m.targets is not None else "targets", e) from None
        try:
            get_method(m.name).check_model(m.params, model)
        except SalientError as e:
            raise _field_error(f"methods.{i}", e) from None
        methods.append(MethodPlan(m.name, m.params, tspec, target, get_method(m.name).signed))
    source = make_source(spec.source, spec.base_dir, out=spec.path(spec.out))  # never reads its own output
    source.check()
    if model.frames and not getattr(source, "clips", False):  # every source kind so far yields still images
        raise SalientError(f"model: {model.name} is a video net (clips of {model.frames} frames); source."
                           f"{spec.source_kind} yields still images: use an image model")
    if getattr(source, "clips", False):
        from .video import check_clip

        try:
            check_clip(model, source.clip)
        except SalientError as e:
            raise _field_error("model", e) from None
    try:
        check_executor(spec.executor.kind, model, **spec.executor.options())
    except SalientError as e:
        raise _field_error("executor", e) from None
    return Plan(spec, model, methods, source, spec.path(spec.out))


def _changed_fields(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def prepare_out(plan: Plan, restart: bool) -> dict[str, Any]:
    """Refuse to mix results of another spec (unless ``restart``, which deletes the store first).
    Returns the root attrs of the store being resumed ({} for a new store)."""
    import zarr

    out = plan.out
    zdir, rdir = out / ZARR_NAME, out / "results"
    exists = (zdir / "zarr.json").is_file() or any(rdir.glob("part-*.parquet"))
    if out.exists() and not out.is_dir():
        raise SalientError(f"out: {out} exists and is not a directory")
    if not exists:
        return {}
    if restart:
        from ..store.claims import discard

        discard(out)
        return {}
    check_metadata(out)  # damaged metadata: one line naming the file, not "not written by this job"
    try:
        attrs = dict(zarr.open_group(zdir, mode="r").attrs)
    except Exception:  # noqa: BLE001 - no readable root: not a store of a job
        attrs = {}
    new = plan.spec.results_dict()
    if attrs.get("spec_hash") != plan.spec.spec_hash():
        old = attrs.get("job")
        what = (f"a different job spec (changed: {', '.join(_changed_fields(old, new)) or 'spec'})"
                if isinstance(old, dict) else "results not written by this job")
        raise SalientError(f"out: {out} holds {what}; rerun with --restart to discard them, or choose another out")
    return attrs


def _id_hash(ids: Any) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") | 1
                     for i in ids], dtype=np.uint64)


@dataclass
class _Previous:
    """What earlier runs left: item id hashes by position, and per method which positions are done."""

    ids: np.ndarray
    done: dict[str, np.ndarray]
    id_of: Callable[[int], str]
    lost: MapCheck = field(default_factory=MapCheck)  # ok rows whose maps are missing or damaged

    @property
    def n(self) -> int:
        return len(self.ids)

    def is_done(self, method: str, pos: int) -> bool:
        d = self.done.get(method)
        return d is not None and pos < len(d) and bool(d[pos])


def read_previous(out: Path, methods: list[str]) -> _Previous:
    """What earlier runs left; an item counts as done only if its rows are ok and their maps check
    out (:func:`~salient.store.check_maps`)."""
    df = read_results(out, columns=["position", "item_id", "method", "status", "index", "rank"])
    if not len(df):
        return _Previous(np.zeros(0, np.uint64), {}, str)
    pos = df["position"].to_numpy(np.int64)
    n = int(pos.max()) + 1
    ids = np.zeros(n, np.uint64)
    first = df.drop_duplicates("position")
    ids[first["position"].to_numpy(np.int64)] = _id_hash(first["item_id"])
    ok = item_status(df)
    lost = check_maps(out, df[df["method"].isin(methods)])
    done = {}
    for m in methods:
        d = np.zeros(n, bool)
        if m in ok.index.get_level_values(0):
            per = ok.loc[m]
            d[per.index.to_numpy(np.int64)[per.to_numpy(bool)]] = True
        d[list(lost.lost.get(m, {}))] = False
        done[m] = d
    return _Previous(ids, done, lambda p: _item_at(out, p), lost)


def _item_at(out: Path, position: int) -> str:
    df = read_results(out, columns=["position", "item_id"])
    return str(df.loc[df["position"] == position, "item_id"].iloc[0])


def check_source(plan: Plan, prev: _Previous) -> None:
    """Refuse, before anything is written, a source whose items at the positions the store holds
    are not the same (one pass over the source's listing up to ``prev.n``)."""
    if prev.n:
        for pos, entry in enumerate(plan.source.entries()):
            if pos >= prev.n:
                break
            _same_item(prev, pos, entry)


def _same_item(prev: _Previous, pos: int, entry: Entry) -> None:
    if pos < prev.n and prev.ids[pos] and prev.ids[pos] != _id_hash([entry.id])[0]:
        raise SalientError(
            f"source: the item at position {pos} is now {entry.id!r}, but the store holds "
            f"{prev.id_of(pos)!r} there (the source changed since the first run); use --restart")


def run_plan(plan: Plan, restart: bool = False, progress: bool | None = None,
             echo: Callable[[str], None] | None = None) -> JobSummary:
    """Run (or resume) a planned job; see the module docstring."""
    spec = plan.spec
    t0 = time.perf_counter()
    attrs = prepare_out(plan, restart)
    names = [m.name for m in plan.methods]
    summary = JobSummary(plan.out)
    st = spec.store
    prev = read_previous(plan.out, names) if attrs else _Previous(np.zeros(0, np.uint64), {}, str)
    check_source(plan, prev)
    summary.lost = {m: prev.lost.counts(m) for m in names if prev.lost.lost.get(m)}
    if summary.lost and echo:
        echo(f"salient run: maps missing or damaged ({prev.lost.summary()}); their items are redone")
    with Store(plan.out, plan.model.name, spec.model_dump(mode="json", exclude={"base_dir"}),
               flush_rows=st.flush_rows, shard_items=st.shard_items, checkpoint_seconds=st.checkpoint_seconds,
               compressor=st.compressor, attrs={"spec_hash": spec.spec_hash(), "job": spec.results_dict(),
                                                 "complete": False}) as store:
        for m in plan.methods:
            store.describe(m.name, method=m.name, parameters=m.params, target=m.target_spec, seed=spec.seed,
                           signed=m.signed, label=plan.model.label(m.target) if isinstance(m.target, int) else "")
        opts = spec.executor.options()
        if "batch_size" not in opts and attrs.get("batch_size"):
            opts["batch_size"] = int(attrs["batch_size"])
        with Engine(plan.model, executor=spec.executor.kind, max_live=spec.executor.max_live, **opts) as engine:
            store.set_attrs(batch_size=int(engine.executor.batch_size))
            bar = Progress(enabled=progress)
            if bar.enabled:  # the total is only for the bar
                count_in_background(plan.source, bar.set_total)
            audit = _context_pass(plan, store)
            try:
                _drive(plan, engine, store, prev, bar, summary, audit)
            finally:
                bar.close()
                if audit is not None:
                    audit.close()
            summary.n_forward = engine.n_forward
        summary.complete = True
        store.set_attrs(complete=True, items=summary.items)
    summary.seconds = time.perf_counter() - t0
    _count(plan.out, summary)
    return summary


def _context_pass(plan: Plan, store: Store) -> Any:
    """The job's context pass (:mod:`salient.audit.context`), None without ``audit.context``."""
    if plan.spec.audit is None or not plan.spec.audit.context:
        return None
    from ..audit.context import ContextPass

    return ContextPass(plan.spec.audit.context, plan.source, plan.model, plan.out, store.run, plan.spec.seed)


def _drive(plan: Plan, engine: Engine, store: Store, prev: _Previous, bar: Progress, summary: JobSummary,
           audit: Any = None) -> None:
    if getattr(plan.source, "tiled", False):  # slides: each slide's tiles over the engine (tile mode)
        from .slide_job import drive_slides

        return drive_slides(plan, engine, store, prev, bar, summary, one_line)
    if getattr(plan.source, "clips", False):  # videos: each video's clips over the engine, one map along t
        from .slide_job import drive_slides
        from .video_job import explain_video_into_store

        return drive_slides(plan, engine, store, prev, bar, summary, one_line, explain_video_into_store)
    spec, model = plan.spec, plan.model
    metrics = tuple(spec.metrics.kinds)
    metric_opts = {"step": spec.metrics.step, "substrate": spec.metrics.substrate, "tolerance": spec.metrics.tolerance}
    remaining: dict[int, list] = {}  # position -> [tasks left, any error]

    def todo() -> Iterator[tuple[int, Entry, list[MethodPlan]]]:
        for pos, entry in enumerate(plan.source.entries()):
            summary.items = pos + 1
            _same_item(prev, pos, entry)  # checked before the run too (check_source): changed since
            left = [m for m in plan.methods if not prev.is_done(m.name, pos)]
            for m in plan.methods:
                if m not in left:
                    store.skip(pos, m.name)
            if not left and (audit is None or audit.done(pos)):
                summary.skipped += 1
                bar.item_done()
                continue
            yield pos, entry, left

    def tasks() -> Iterator[Task]:
        for (pos, entry, left), item in prefetch(todo(), lambda t: plan.source.load(t[1], model), workers=LOADERS):
            context = [] if audit is None or audit.done(pos) else audit.tasks(pos, entry, item)
            remaining[pos] = [len(left) + len(context), False]
            yield from context
            for m in left:
                key = (pos, entry, m)
                if isinstance(item, BaseException):
                    yield Task(key, None, raising(item))
                else:
                    yield Task(key, item, scored_task(item, model, m.name, m.target, spec.seed, m.params, metrics,
                                                      metric_opts))

    for task, out in engine.run(tasks(), on_progress=bar.on_forward):
        if audit is not None and not isinstance(task.key, tuple):  # a context variant (salient.audit)
            audit.on_result(task.key, out)
            _one_done(task.key.position, remaining, summary, bar)
            continue
        pos, entry, m = task.key
        meta = entry_meta(entry)
        if isinstance(out, BaseException):
            store.add_error(entry.id, entry.path, m.name, one_line(out), position=pos, extra=meta,
                            n_forward=task.n_forward)
            remaining[pos][1] = True
        else:
            for s in out:
                s.n_forward = task.n_forward
            store.add(entry.id, entry.path, out, position=pos, extra=meta)
        _one_done(pos, remaining, summary, bar)


def _one_done(pos: int, remaining: dict[int, list], summary: JobSummary, bar: Progress) -> None:
    remaining[pos][0] -= 1
    if remaining[pos][0] == 0:
        summary.done_now += 1
        bar.item_done(error=remaining.pop(pos)[1])


def _count(out: Path, summary: JobSummary, max_errors: int = 5) -> None:
    df = read_results(out, columns=["item_id", "method", "status", "error", "position"])
    ok = item_status(df)
    for m in dict.fromkeys(df["method"]):
        per = ok.loc[m]
        summary.counts[str(m)] = {"ok": int(per.sum()), "error": int((~per).sum())}
    errs = df[df["status"] == "error"].head(max_errors)
    summary.errors = list(zip(errs["item_id"], errs["method"], errs["error"], strict=True))
    if (out / "context").is_dir():
        from ..audit.record import read_context

        status = read_context(out)["status"]
        summary.context = {"ok": int((status == "ok").sum()), "error": int((status != "ok").sum())}


def run_job(job: str | Path | JobSpec, restart: bool = False, progress: bool | None = None,
            echo: Callable[[str], None] | None = print) -> JobSummary:
    """Validate the job (before any work), then run or resume it. ``progress``: None shows a bar only
    on a terminal."""
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    plan = plan_job(spec)
    return run_plan(plan, restart=restart, progress=progress, echo=echo)
