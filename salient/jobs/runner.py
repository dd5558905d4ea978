"""Run a job: a validated spec -> every (item, method) explained, scored and stored; resumable.

Order of work: the source is read once, lazily; for each item every method of the job is a task
(interleaved: the image is decoded and held by the executor once for all its methods), and the
engine's scheduler runs many items at once. Results arrive in completion order; the store places
them by the item's position in the source, so the store does not depend on that order.

Resume: the store records the spec hash (:meth:`JobSpec.spec_hash`: model, source, targets,
methods with their checked parameters, metrics, seed, a fixed batch size) and the batch size the
first run used (so forward passes have the same shape again and maps are bitwise equal). A rerun
with the same spec reads the table, checks that each recorded position still holds the same item
id, skips the (item, method) pairs whose rows are all ``ok``, re-reads the shards it will rewrite
(a damaged one is deleted and its items redone), and redoes the rest. A different spec is refused
unless ``restart`` discards the store first.

Errors: an item that cannot be read, has a bad mask or box, or yields NaN scores becomes an
``error`` row with a one-line reason and the job goes on; ``strict`` makes a job with any error
rows fail (exit code 1).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, Task
from ..engine.engine import scored_task
from ..engine.tasks import parse_target
from ..errors import SalientError
from ..methods import get_method
from ..models import Model, load_model
from ..store import ZARR_NAME, Store, item_status, read_results
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
    done_now: int = 0  # items explained (or failed) in this run
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> {ok, error} over the store
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # first few (item id, method, reason)
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
    source can be read."""
    try:
        options = spec.model.options()
        if "weights" in options:
            options["weights"] = str(spec.path(options["weights"]))
        name = spec.model.name
        if Path(name).suffix and (Path(spec.base_dir) / name).is_file():
            name = str(Path(spec.base_dir) / name)
        model = load_model(name, **options)
    except SalientError as e:
        raise _field_error("model", e) from None
    methods = []
    for i, m in enumerate(spec.methods):
        tspec = m.targets if m.targets is not None else spec.targets
        try:
            target = parse_target(tspec, model)
        except SalientError as e:
            raise _field_error(f"methods.{i}.targets" if m.targets is not None else "targets", e) from None
        methods.append(MethodPlan(m.name, m.params, tspec, target, get_method(m.name).signed))
    source = make_source(spec.source, spec.base_dir)
    source.check()
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
        from ..store.files import _Lock

        lock = _Lock(out / ".lock")
        try:
            shutil.rmtree(zdir, ignore_errors=True)
            shutil.rmtree(rdir, ignore_errors=True)
        finally:
            lock.release()
        return {}
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

    @property
    def n(self) -> int:
        return len(self.ids)

    def is_done(self, method: str, pos: int) -> bool:
        d = self.done.get(method)
        return d is not None and pos < len(d) and bool(d[pos])


def read_previous(out: Path, methods: list[str]) -> _Previous:
    df = read_results(out, columns=["position", "item_id", "method", "status"])
    if not len(df):
        return _Previous(np.zeros(0, np.uint64), {}, str)
    pos = df["position"].to_numpy(np.int64)
    n = int(pos.max()) + 1
    ids = np.zeros(n, np.uint64)
    first = df.drop_duplicates("position")
    ids[first["position"].to_numpy(np.int64)] = _id_hash(first["item_id"])
    ok = item_status(df)
    done = {}
    for m in methods:
        d = np.zeros(n, bool)
        if m in ok.index.get_level_values(0):
            per = ok.loc[m]
            d[per.index.to_numpy(np.int64)[per.to_numpy(bool)]] = True
        done[m] = d
    return _Previous(ids, done, lambda p: _item_at(out, p))


def _item_at(out: Path, position: int) -> str:
    df = read_results(out, columns=["position", "item_id"])
    return str(df.loc[df["position"] == position, "item_id"].iloc[0])


def verify_shards(store: Store, prev: _Previous, methods: list[str]) -> int:
    """Re-read the shards the run will rewrite (those holding done and not-done positions); a shard
    that fails to read is deleted and its positions redone. Returns the number of damaged shards."""
    bad_total = 0
    for m in methods:
        d = prev.done.get(m)
        if d is None or not d.any():
            continue
        size = store.shard_size(m)
        n_shards = (len(d) + size - 1) // size
        padded = np.zeros(n_shards * size, bool)
        padded[: len(d)] = d
        per = padded.reshape(n_shards, size)
        mixed = np.flatnonzero(per.any(axis=1) & ~per.all(axis=1))
        for shard in store.verify(m, mixed.tolist()):
            d[shard * size : (shard + 1) * size] = False
            bad_total += 1
    return bad_total


def _fail(e: BaseException):
    raise e
    yield  # pragma: no cover - makes this a generator


def run_plan(plan: Plan, restart: bool = False, progress: bool | None = None,
             echo: Callable[[str], None] | None = None) -> JobSummary:
    """Run (or resume) a planned job; see the module docstring."""
    spec = plan.spec
    t0 = time.perf_counter()
    attrs = prepare_out(plan, restart)
    names = [m.name for m in plan.methods]
    summary = JobSummary(plan.out)
    st = spec.store
    with Store(plan.out, plan.model.name, spec.model_dump(mode="json", exclude={"base_dir"}),
               flush_rows=st.flush_rows, shard_items=st.shard_items, checkpoint_seconds=st.checkpoint_seconds,
               compressor=st.compressor, attrs={"spec_hash": spec.spec_hash(), "job": spec.results_dict(),
                                                 "complete": False}) as store:
        prev = read_previous(plan.out, names) if attrs else _Previous(np.zeros(0, np.uint64), {}, str)
        damaged = verify_shards(store, prev, names) if attrs else 0
        if damaged and echo:
            echo(f"salient run: {damaged} damaged shard(s) found; their items are redone")
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
            try:
                _drive(plan, engine, store, prev, bar, summary)
            finally:
                bar.close()
            summary.n_forward = engine.n_forward
        summary.complete = True
        store.set_attrs(complete=True, items=summary.items)
    summary.seconds = time.perf_counter() - t0
    _count(plan.out, summary)
    return summary


def _drive(plan: Plan, engine: Engine, store: Store, prev: _Previous, bar: Progress, summary: JobSummary) -> None:
    spec, model = plan.spec, plan.model
    metrics = tuple(spec.metrics.kinds)
    metric_opts = {"step": spec.metrics.step, "substrate": spec.metrics.substrate}
    remaining: dict[int, list] = {}  # position -> [tasks left, any error]

    def todo() -> Iterator[tuple[int, Entry, list[MethodPlan]]]:
        for pos, entry in enumerate(plan.source.entries()):
            summary.items = pos + 1
            if pos < prev.n and prev.ids[pos] and prev.ids[pos] != _id_hash([entry.id])[0]:
                raise SalientError(
                    f"source: the item at position {pos} is now {entry.id!r}, but the store holds "
                    f"{prev.id_of(pos)!r} there (the source changed since the first run); use --restart")
            left = [m for m in plan.methods if not prev.is_done(m.name, pos)]
            for m in plan.methods:
                if m not in left:
                    store.skip(pos, m.name)
            if not left:
                summary.skipped += 1
                bar.item_done()
                continue
            yield pos, entry, left

    def tasks() -> Iterator[Task]:
        for (pos, entry, left), item in prefetch(todo(), lambda t: plan.source.load(t[1], model), workers=LOADERS):
            remaining[pos] = [len(left), False]
            for m in left:
                key = (pos, entry, m)
                if isinstance(item, BaseException):
                    yield Task(key, None, _fail(item))
                else:
                    yield Task(key, item, scored_task(item, model, m.name, m.target, spec.seed, m.params, metrics,
                                                      metric_opts))

    for task, out in engine.run(tasks(), on_progress=bar.on_forward):
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


def run_job(job: str | Path | JobSpec, restart: bool = False, progress: bool | None = None,
            echo: Callable[[str], None] | None = print) -> JobSummary:
    """Validate the job (before any work), then run or resume it. ``progress``: None shows a bar only
    on a terminal."""
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    plan = plan_job(spec)
    return run_plan(plan, restart=restart, progress=progress, echo=echo)
