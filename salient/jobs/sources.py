"""Sources: where a job's items come from, read lazily in a fixed order.

A source yields :class:`Entry` objects (an id, a path, metadata) from ``entries()`` as a generator,
never a full list, and turns one entry into an engine :class:`~salient.engine.Item` with
``load(entry, model)`` (raising :class:`~salient.errors.ItemError` with a one-line reason for a bad
item). Positions in ``entries()`` order are the rows of the store, so the order must be the same on
every run of an unchanged source.

Kinds (the key of the spec's ``source`` mapping):
- ``images``: a glob (``photos/**/*.jpg``; ``**`` spans directories) or a directory (all image
  files below it). Walked with ``os.scandir`` one directory at a time, entries sorted by name within
  each directory, depth first; dot files are skipped. Item id = the path relative to the glob's
  fixed prefix directory, with ``/`` separators.
- ``manifest``: a CSV or Parquet file read in batches, one row per item: ``path`` (required;
  relative paths are relative to the manifest's directory, or ``root``), and optional ``id``,
  ``label`` (carried as ``true_label``), ``mask`` (a binary mask image whose size must equal the
  image's) and ``box`` (x0, y0, x1, y1 in image pixels, as "x0,y0,x1,y1" or a list).

A source never yields the job's own output: a walk skips the output folder (``out``, set by
:func:`make_source`), or, where the walk starts at it or inside it (``**`` with ``out: .``), the
folders salient writes there (:data:`OUTPUT_DIRS`). Without that, a glob spanning
the output would make its store files items, and every rerun would find a changed source.

Extension point (video, huge images): subclass :class:`Source`, give it a pydantic ``Spec`` with
its kind as a required key, implement ``entries`` and ``load`` (a video source returns an Item with
``x`` of shape (C, T, H, W): the store writes its (T, H, W) maps along ("item", "t", "y", "x"), or
under ``items/<id>/`` when sizes differ), and decorate it with ``@register_source("kind")``.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ItemError, SalientError
from ..images import IMAGE_SUFFIXES, load_image
from ..item import Item
from ..models import Model
from ..object_mask import object_mask
from ..store.schema import ZARR_NAME

SOURCE_KINDS: dict[str, type[Source]] = {}
ARRAY_SUFFIXES = (".npy",)
OUTPUT_DIRS = (ZARR_NAME, "results", "overlays", "clusters", "context", "audit")  # what salient writes into OUT


@dataclass(frozen=True)
class Entry:
    """One item of a source before it is read: a stable id, what to read, and carried metadata."""

    id: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)


class Source:
    """Base class: ``entries()`` lazily, in a stable order; ``load(entry, model)`` -> Item."""

    kind: ClassVar[str] = ""
    Spec: ClassVar[type[BaseModel]]
    out: Path | None = None  # the job's output folder: never read as items (see skipped)

    def entries(self) -> Iterator[Entry]:
        raise NotImplementedError

    def skipped(self, root: Path) -> list[Path]:
        """The folders a walk from ``root`` must not enter: the output folder, or, when ``root`` is in
        it (or is it), the folders salient writes there."""
        if self.out is None:
            return []
        out, start = Path(os.path.realpath(self.out)), Path(os.path.realpath(root))
        return [out / n for n in OUTPUT_DIRS] if out == start or out in start.parents else [out]

    def count(self) -> int | None:
        """The number of entries if it can be had without reading items (may take a walk), else None."""
        return None

    def check(self) -> None:
        """Fail with a SalientError before any work if the source cannot be read at all."""

    def load(self, entry: Entry, model: Model) -> Item:
        """The item, its meta carrying ``object_mask`` (bool, the model's input size; from the entry's
        mask or box, :func:`~salient.object_mask.object_mask`) when it has one."""
        image = read_image(entry.path)
        meta = dict(entry.meta)
        mask = object_mask(meta.get("mask") or None, meta.get("box"), image.size, tuple(model.input_size))
        if mask is not None:
            meta["object_mask"] = mask
        return Item(entry.id, model.preprocess(image), None, meta)


def register_source(kind: str) -> Callable[[type[Source]], type[Source]]:
    def deco(cls: type[Source]) -> type[Source]:
        cls.kind = kind
        SOURCE_KINDS[kind] = cls
        return cls

    return deco


def make_source(spec: dict[str, Any], base_dir: str | Path = ".", out: str | Path | None = None) -> Source:
    """A Source from a validated ``source`` mapping; paths relative to ``base_dir``; ``out``: the
    job's output folder, which the source never reads."""
    kind = next((k for k in SOURCE_KINDS if k in spec), None)
    if kind is None:
        raise SalientError(f"source: expected one of the keys {', '.join(SOURCE_KINDS)}")
    cls = SOURCE_KINDS[kind]
    source = cls(cls.Spec.model_validate(spec), Path(base_dir))  # type: ignore[call-arg]
    source.out = None if out is None else Path(out)
    return source


# -- reading items
def read_image(path: str):
    """An image file, or a ``.npy`` array (H, W) / (H, W, C), as a salient Image."""
    if path.lower().endswith(ARRAY_SUFFIXES):
        p = Path(path)
        if not p.is_file():
            raise ItemError(f"{path}: no such file")
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ItemError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
        return load_image(arr, name=p.stem)
    return load_image(path)


def parse_box(value: Any) -> list[float] | None:
    """"x0,y0,x1,y1" (commas or spaces) or a sequence of four numbers -> list, None if empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    items = re.split(r"[,\s]+", str(value).strip("()[] ")) if isinstance(value, str) else list(value)
    try:
        box = [float(v) for v in items if v != ""]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4:
        raise ItemError(f"box {value!r}: expected four numbers x0,y0,x1,y1")
    return box


# -- globs
def _segment_regex(seg: str) -> str:
    out, i = [], 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = seg.find("]", i + 2 if seg[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : j]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern:
    """A relative glob (``*``, ``?``, ``[...]`` within a name; ``**`` for any number of directories)
    as a regex over ``/``-separated relative paths."""
    segs = pattern.split("/")
    out = []
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            out.append("(?:[^/]+/)*[^/]*" if last else "(?:[^/]+/)*")
        else:
            out.append(_segment_regex(seg) + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


def split_glob(pattern: str) -> tuple[Path, str | None]:
    """(fixed directory prefix, relative pattern); the pattern is None for a plain path."""
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return Path(*parts[:i]) if i else Path("."), "/".join(parts[i:])
    return Path(pattern), None


def walk_sorted(root: Path, regex: re.Pattern, max_depth: int | None, suffixes: tuple[str, ...] | None = None,
                skip: Iterable[Path] = ()) -> Iterator[str]:
    """Relative paths of files under ``root`` matching ``regex``: depth first, sorted by name in each
    directory, one directory listed at a time. Directory symlinks are followed once (no loops). The
    directories ``skip`` (those that exist when the walk starts) are not entered, whatever the path
    they are reached by."""
    seen: set[tuple[int, int]] = set()
    for d in skip:
        try:
            st = d.stat()
        except OSError:
            continue
        seen.add((st.st_dev, st.st_ino))

    def listdir(d: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(d) as it:
                return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            return []

    def walk(d: Path, rel: str, depth: int) -> Iterator[str]:
        try:
            st = d.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        for e in listdir(d):
            r = f"{rel}{e.name}"
            try:
                is_dir = e.is_dir()
            except OSError:
                continue
            if is_dir:
                if max_depth is None or depth < max_depth:
                    yield from walk(Path(e.path), r + "/", depth + 1)
            elif regex.match(r) and (suffixes is None or e.name.lower().endswith(suffixes)):
                yield r

    yield from walk(root, "", 0)


class ImagesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: str = Field(min_length=1)


@register_source("images")
class ImageFolder(Source):
    """Image files matched by a glob, or every image file under a directory (see the module doc)."""

    Spec = ImagesSpec

    def __init__(self, spec: ImagesSpec, base_dir: Path = Path(".")):
        pattern = os.path.expanduser(spec.images)
        if not os.path.isabs(pattern):
            pattern = str(base_dir / pattern)
        self.pattern = pattern
        root, rel = split_glob(pattern)
        self.root, self.single, self.suffixes = root, None, None
        if rel is None and root.is_file():
            self.single = root
        elif rel is None:
            rel, self.suffixes = "**", IMAGE_SUFFIXES + ARRAY_SUFFIXES
        self.rel = rel
        self.regex = glob_regex(rel) if rel else None
        self.max_depth = None if rel is None or "**" in rel.split("/") else rel.count("/")

    def check(self) -> None:
        if self.single is None and not self.root.is_dir():
            raise SalientError(f"source.images: {self.root} is not a directory (from {self.pattern!r})")

    def entries(self) -> Iterator[Entry]:
        if self.single is not None:
            yield Entry(self.single.name, str(self.single))
            return
        for rel in walk_sorted(self.root, self.regex, self.max_depth, self.suffixes, self.skipped(self.root)):
            yield Entry(rel, str(self.root / rel))

    def count(self) -> int | None:
        return sum(1 for _ in self.entries())


class ManifestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest: str = Field(min_length=1)
    root: str | None = None
    path_column: str = "path"


MANIFEST_COLUMNS = {"id": "id", "label": "true_label", "mask": "mask", "box": "box"}


@register_source("manifest")
class Manifest(Source):
    """Rows of a CSV or Parquet manifest, read in batches (see the module doc)."""

    Spec = ManifestSpec
    batch_rows = 4096

    def __init__(self, spec: ManifestSpec, base_dir: Path = Path(".")):
        p = Path(os.path.expanduser(spec.manifest))
        self.file = p if p.is_absolute() else base_dir / p
        root = Path(os.path.expanduser(spec.root)) if spec.root else self.file.parent
        self.root = root if root.is_absolute() else base_dir / root
        self.path_column = spec.path_column
        self.parquet = self.file.suffix.lower() in (".parquet", ".pq")
        self.columns: list[str] = []

    def check(self) -> None:
        if not self.file.is_file():
            raise SalientError(f"source.manifest: {self.file}: no such file")
        try:
            names = self._schema_names()
        except Exception as e:  # noqa: BLE001 - unreadable manifest: the user's file
            raise SalientError(f"source.manifest: {self.file}: cannot read ({str(e).splitlines()[0]})") from None
        if self.path_column not in names:
            raise SalientError(f"source.manifest: {self.file} has no {self.path_column!r} column "
                               f"(columns: {', '.join(names)})")
        self.columns = [self.path_column] + [c for c in MANIFEST_COLUMNS if c in names and c != self.path_column]

    def _schema_names(self) -> list[str]:
        if self.parquet:
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(self.file).schema_arrow.names)
        import csv

        with open(self.file, newline="") as f:
            return [h.strip() for h in next(csv.reader(f), [])]

    def _batches(self) -> Iterator[dict[str, list]]:
        import pyarrow as pa

        if not self.columns:
            self.check()
        if self.parquet:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(self.file).iter_batches(batch_size=self.batch_rows, columns=self.columns):
                yield batch.to_pydict()
        else:
            from pyarrow import csv

            types = {c: pa.string() for c in self.columns}
            reader = csv.open_csv(self.file, convert_options=csv.ConvertOptions(
                column_types=types, include_columns=self.columns, strings_can_be_null=True))
            for batch in reader:
                yield batch.to_pydict()

    def _resolve(self, p: str) -> str:
        q = Path(os.path.expanduser(p))
        return str(q if q.is_absolute() else self.root / q)

    def entries(self) -> Iterator[Entry]:
        for cols in self._batches():
            n = len(cols[self.path_column])
            for i in range(n):
                path = cols[self.path_column][i]
                meta: dict[str, Any] = {}
                label = cols.get("label", [None] * n)[i]
                if label is not None and label == label:
                    meta["true_label"] = str(label)
                mask = cols.get("mask", [None] * n)[i]
                if mask:
                    meta["mask"] = self._resolve(str(mask))
                box = cols.get("box", [None] * n)[i]
                if box is not None and box != "":
                    meta["box_raw"] = box
                ident = cols.get("id", [None] * n)[i]
                path = "" if path is None else str(path)
                yield Entry(str(ident) if ident not in (None, "") else path, self._resolve(path) if path else "",
                            meta)

    def load(self, entry: Entry, model: Model) -> Item:
        if not entry.path:
            raise ItemError(f"manifest {self.file.name}: empty {self.path_column!r}")
        meta = dict(entry.meta)
        if "box_raw" in meta:
            meta["box"] = parse_box(meta.pop("box_raw"))
        return super().load(Entry(entry.id, entry.path, meta), model)

    def count(self) -> int | None:
        if self.parquet:
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.file).metadata.num_rows
        import pyarrow as pa
        from pyarrow import csv

        if not self.columns:
            self.check()
        reader = csv.open_csv(self.file, convert_options=csv.ConvertOptions(
            column_types={self.path_column: pa.string()}, include_columns=[self.path_column]))
        return sum(b.num_rows for b in reader)


def entry_meta(entry: Entry) -> dict[str, Any]:
    """The metadata a result row carries (true_label, mask, box), box parsed when it is valid."""
    meta = {k: v for k, v in entry.meta.items() if k in ("true_label", "mask", "box")}
    if "box_raw" in entry.meta:
        try:
            meta["box"] = parse_box(entry.meta["box_raw"])
        except ItemError:
            pass
    return meta


def prefetch(items: Iterable[Any], fn: Callable[[Any], Any], workers: int = 2, depth: int = 8
             ) -> Iterator[tuple[Any, Any]]:
    """Yield (item, fn(item) or the exception it raised) in input order, computing up to ``depth``
    ahead on ``workers`` threads (decoding releases the GIL). ``workers <= 0`` runs inline."""

    def call(x: Any) -> Any:
        try:
            return fn(x)
        except Exception as e:  # noqa: BLE001 - returned as a value, per item
            return e

    if workers <= 0:
        for x in items:
            yield x, call(x)
        return
    queue: deque[tuple[Any, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="salient-load")
    try:
        for x in items:
            queue.append((x, pool.submit(call, x)))
            if len(queue) >= depth:
                y, fut = queue.popleft()
                yield y, fut.result()
        while queue:
            y, fut = queue.popleft()
            yield y, fut.result()
    finally:
        for _, fut in queue:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def count_in_background(source: Source, done: Callable[[int], None]) -> threading.Thread | None:
    """Count the source's entries on a daemon thread and report the total through ``done``."""

    def run() -> None:
        try:
            n = source.count()
        except Exception:  # noqa: BLE001 - a count is only for the progress bar
            return
        if n is not None:
            done(n)

    t = threading.Thread(target=run, name="salient-count", daemon=True)
    t.start()
    return t
