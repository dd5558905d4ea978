"""The context pass of a job: every item's context variants scored by the engine, written to the
context table (:mod:`.record`).

For each item the job's ``audit.context`` variants (and ``original``) become items of their own
(id ``<item>#ctx:<variant>``, built by :func:`.variants.make_variant` from the item's input, its
object mask at the input size and, for mixing, another item's background) and one score query
each. They run in the same engine run as the methods' queries, so their forward passes fill the
same batches. They are built on the driver (the loader's side), not on the worker, because a mixed
variant needs a second item and the mask, which workers do not hold; each costs one input's pixels
in flight. When every variant of an item has its scores, the item's rows are written.

The pass holds the source's entries (id, path, label, mask; a few hundred bytes each) to choose
mixing partners (:mod:`.partners`) and reads a partner's image when it needs its background (the
last 32 partners are kept).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import Task
from ..engine.tasks import base_scores, raising
from ..errors import ItemError, SalientError
from ..item import Item
from ..methods.bo import one_thread
from ..models import Model
from .partners import Partners
from .record import ContextWriter, done_positions
from .variants import Variant, make_variant, parse_variant

PARTNER_CACHE = 32


@dataclass(frozen=True)
class ContextKey:
    """The key of a context task: the item's position and the variant's name."""

    position: int
    variant: str


def variant_seed(seed: int, position: int, variant: str) -> int:
    """The seed of one variant's random draws (e.g. Gaussian noise): from the job seed, the item's
    position and the variant's name only."""
    return int(np.random.SeedSequence([int(seed), int(position), zlib.crc32(variant.encode())]).generate_state(1)[0])


class ContextPass:
    """The context variants of a job's items: ``tasks`` for an item, ``on_result`` for each finished
    task, ``close`` at the end. ``done(position)``: the item's rows are already in the table."""

    def __init__(self, variants: list[str], source: Any, model: Model, out: Any, run: int, seed: int = 0,
                 resume: bool = True):
        self.variants: list[Variant] = [parse_variant("original")] + [
            parse_variant(v) for v in variants if v != "original"]
        self.model, self.source, self.seed = model, source, int(seed)
        self.entries = list(source.entries())
        self.partners = Partners([e.meta.get("true_label") for e in self.entries],
                                 [bool(e.meta.get("mask") or e.meta.get("box") or e.meta.get("box_raw"))
                                  for e in self.entries], seed)
        self.writer = ContextWriter(out, run)
        self._done = done_positions(out, [v.name for v in self.variants]) if resume else set()
        self._pending: dict[int, dict[str, Any]] = {}
        self._cache: OrderedDict[int, Item | BaseException] = OrderedDict()

    def done(self, position: int) -> bool:
        return position in self._done

    def _partner(self, position: int) -> Item:
        if position not in self._cache:
            try:
                self._cache[position] = self.source.load(self.entries[position], self.model)
            except Exception as e:  # noqa: BLE001 - the partner's failure is this variant's
                self._cache[position] = e
            while len(self._cache) > PARTNER_CACHE:
                self._cache.popitem(last=False)
        got = self._cache[position]
        if isinstance(got, BaseException):
            raise ItemError(f"the other item {self.entries[position].id!r} cannot be read ({got})")
        return got

    def tasks(self, position: int, entry: Any, item: Item | BaseException) -> list[Task]:
        """One task per variant of the item at ``position`` (a failing variant: a task that raises)."""
        self._pending[position] = {"entry": entry, "left": len(self.variants), "scores": {}, "errors": {},
                                   "partners": {}}
        out = []
        for v in self.variants:
            key = ContextKey(position, v.name)
            if isinstance(item, BaseException):
                out.append(Task(key, None, raising(item)))
                continue
            if v.kind == "original":  # the item itself (already held for the methods' queries)
                out.append(Task(key, item, base_scores(item)))
                continue
            try:
                partner = None
                if v.needs_partner:
                    pos, why = self.partners.choose(v.kind, position)
                    if pos is None:
                        raise ItemError(why)
                    p = self._partner(pos)
                    partner = (p.x, p.meta.get("object_mask"))
                    self._pending[position]["partners"][v.name] = p.id
                with one_thread():  # the driver's own thread: the workers' cores are not its to take
                    x = make_variant(v, item.x, item.meta.get("object_mask"), self.model.mean, self.model.std,
                                     variant_seed(self.seed, position, v.name), partner)
            except ItemError as e:
                out.append(Task(key, None, raising(e)))
                continue
            vitem = Item(f"{item.id}#ctx:{v.name}", x, None, {})
            out.append(Task(key, vitem, base_scores(vitem)))
        return out

    def on_result(self, key: ContextKey, result: Any) -> bool:
        """Record one variant's scores (K,) or exception; True when its item is complete (rows written)."""
        p = self._pending[key.position]
        if isinstance(result, BaseException):
            p["errors"][key.variant] = " ".join(str(result).split())[:300] or type(result).__name__
        else:
            p["scores"][key.variant] = np.asarray(result, dtype=np.float64)
        p["left"] -= 1
        if p["left"]:
            return False
        self.writer.add_item(self._rows(key.position, self._pending.pop(key.position)))
        return True

    def _true_class(self, label: str | None) -> int:
        if label is None:
            return -1
        try:
            return self.model.resolve_target(label)
        except SalientError:
            return -1

    def _rows(self, position: int, p: dict[str, Any]) -> list[dict[str, Any]]:
        entry = p["entry"]
        label = entry.meta.get("true_label")
        true_class = self._true_class(label)
        orig = p["scores"].get("original")
        ref = int(np.argmax(orig)) if orig is not None else -1
        rows = []
        for v in self.variants:
            row = {"position": position, "item_id": entry.id, "true_label": label, "variant": v.name, "group": v.group,
                   "partner": p["partners"].get(v.name), "true_class": true_class}
            scores = p["scores"].get(v.name)
            err = p["errors"].get(v.name) or (None if orig is not None else
                                               f"the original item failed: {p['errors'].get('original')}")
            if scores is None or err:
                rows.append({**row, "status": "error", "error": err or "no scores"})
                continue
            pred = int(np.argmax(scores))
            rows.append({**row, "status": "ok", "error": None, "pred": pred, "pred_label": self.model.label(pred),
                         "pred_score": float(scores[pred]), "ref_class": ref, "ref_label": self.model.label(ref),
                         "ref_score": float(scores[ref]), "base_score": float(orig[ref]), "kept": pred == ref,
                         "correct": (pred == true_class) if true_class >= 0 else None})
        return rows

    def close(self) -> None:
        self.writer.flush()

