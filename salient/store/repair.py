"""``salient repair OUT``: mend the metadata of a damaged store, keeping every intact map, so that
the next ``salient run`` of the same job redoes only what was lost.

Under the store's lock, in this order (each step says what it did, one line each):
1. A results part that does not read in full moves to ``OUT/damaged/results/``: its rows are
   lost (their items are redone; their maps, if intact, are rewritten the same).
2. A ``zarr.json`` that is missing or damaged (:func:`~salient.store.check.damaged_metadata`) is
   rebuilt from the metadata copy every part carries (:func:`~salient.store.schema.read_backup`,
   the newest part that has one): the root's attrs (its ``complete`` flag set to false), a
   ``maps/<method>`` array's metadata (grown to the length of the other arrays), the ``maps`` and
   ``items`` groups. The damaged file is kept in ``OUT/damaged/``. An array no part describes
   moves to ``OUT/damaged/`` whole (its items are redone); so does an ``items/<key>/<method>``
   array whose metadata does not read.
3. The metadata is consolidated again and every ``ok`` row's map checked
   (:func:`~salient.store.check.check_maps`): those missing or damaged are counted; the next run
   redoes their items (shards are never edited here: the run rewrites them whole).
A store without damage is left as it is. A root that no part describes (parts written before the
copy existed) cannot be rebuilt: the error says so (``--restart`` starts over).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..errors import SalientError
from .check import _node_problem, check_maps, damaged_metadata
from .files import _Lock, _write_atomic
from .read import _parts, read_results
from .schema import ZARR_NAME, read_backup
from .write import consolidate

GROUP = {"zarr_format": 3, "node_type": "group", "attributes": {}}


def _aside(out: Path, path: Path, copy: bool = False) -> Path:
    """Move (or copy) ``path`` to the same place under ``OUT/damaged/`` (a free name)."""
    dest = out / "damaged" / path.relative_to(out)
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{path.name}.{n}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(path, dest)
    else:
        os.replace(path, dest)
    return dest


def _write_json(out: Path, path: Path, meta: dict[str, Any]) -> None:
    """Write a node's ``zarr.json`` atomically, keeping any old one in ``OUT/damaged/``."""
    if path.exists():
        _aside(out, path, copy=True)
    _write_atomic(path, path.parent / ".zarr.json.tmp", lambda t: t.write_text(json.dumps(meta, indent=2)),
                  durable=True)


def _run_of(part: Path) -> int:
    try:
        return int(part.name.split("-")[1].lstrip("r"))
    except (IndexError, ValueError):
        return 0


def _length(path: Path) -> int:
    try:
        return int(json.loads(path.read_bytes())["shape"][0])
    except Exception:  # noqa: BLE001 - a damaged array says nothing
        return 0


def repair(out: str | os.PathLike) -> list[str]:
    """Mend the store in ``out`` (see the module docstring); returns what was done, one line each."""
    out = Path(out)
    zdir = out / ZARR_NAME
    if not zdir.is_dir() and not _parts(out):
        raise SalientError(f"{out}: not a salient store (no {ZARR_NAME} or results/)")
    lock = _Lock(out / ".lock")
    try:
        lines = _repair_parts(out)
        parts = _parts(out)
        backup = next((b for b in map(read_backup, reversed(parts)) if b is not None), None)
        bad = {p: r for p, r in damaged_metadata(out) if p.name == "zarr.json" or p == zdir}
        if bad:
            lines += _repair_nodes(out, bad, backup, max(map(_run_of, parts), default=0))
        lines += _repair_items(out)
        if lines and (zdir / "zarr.json").is_file():
            consolidate(zdir)
        check = check_maps(out, read_results(out, columns=["position", "method", "status", "index", "rank",
                                                          "item_id"]))
        if check.n_lost:
            lines.append(f"{check.n_lost} maps missing or damaged ({check.summary()})")
        if not lines:
            return ["nothing to repair: every file reads and every map of an ok row is intact"]
        return [*lines, "the next `salient run` of the job redoes only what was lost"]
    finally:
        lock.release()


def _repair_parts(out: Path) -> list[str]:
    lines = []
    for p in _parts(out):
        try:
            pq.read_table(p)
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a torn file vary
            dest = _aside(out, p)
            lines.append(f"moved {p} to {dest} ({type(e).__name__}): its rows are lost, the next salient run "
                         "redoes their items")
    return lines


def _repair_nodes(out: Path, bad: dict[Path, str], backup: dict[str, Any] | None, last_run: int) -> list[str]:
    zdir, lines = out / ZARR_NAME, []
    root = zdir / "zarr.json"
    if root in bad or zdir in bad:
        if backup is None:
            raise SalientError(f"{root}: {bad.get(root, bad.get(zdir))}, and no results part holds a copy of the "
                               "store's metadata to rebuild it from; rerun with --restart to start over")
        attrs = {**backup["root"], "complete": False}
        attrs["runs"] = max(int(attrs.get("runs", 0)), last_run)  # the next run's parts sort after every part
        zdir.mkdir(parents=True, exist_ok=True)
        _write_json(out, root, {**GROUP, "attributes": attrs})
        lines.append(f"rebuilt {root} from the copy in the newest results part")
    for group in ("maps", "items"):
        if zdir / group / "zarr.json" in bad:
            _write_json(out, zdir / group / "zarr.json", GROUP)
            lines.append(f"rebuilt {zdir / group / 'zarr.json'}")
    arrays = (backup or {}).get("arrays", {})
    maps = zdir / "maps"
    length = max((_length(a / "zarr.json") for a in maps.iterdir() if a.is_dir()), default=0) if maps.is_dir() else 0
    for path in sorted(p for p in bad if p.parent.parent == maps):
        meta = arrays.get(f"maps/{path.parent.name}")
        if isinstance(meta, dict) and isinstance(meta.get("shape"), list):
            meta = {**meta, "shape": [max(int(meta["shape"][0]), length), *meta["shape"][1:]]}
            _write_json(out, path, meta)
            lines.append(f"rebuilt {path} from the copy in the newest results part")
        else:
            dest = _aside(out, path.parent)
            lines.append(f"moved {path.parent} to {dest}: no results part describes it; its items are redone")
    return lines


def _repair_items(out: Path) -> list[str]:
    """Odd-size map arrays and tile-mode mosaic groups (``items/<key>/<method>``) whose metadata does
    not read go aside."""
    items, lines = out / ZARR_NAME / "items", []
    if not items.is_dir():
        return lines
    for node in sorted(items.glob("*/*/zarr.json")):
        if _node_problem(node, "array") and _node_problem(node, "group"):
            dest = _aside(out, node.parent)
            lines.append(f"moved {node.parent} to {dest}: its metadata is damaged; its item is redone")
    return lines
