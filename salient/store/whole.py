"""Whole-mode maps into the store: maps at an image's native size (:mod:`salient.engine.whole`), always in
``items/<key>/<method>``, never in the stacked ``maps/<method>`` array.

- One target: an OME-Zarr 0.5 multiscale group (:mod:`.mosaic`: levels from full resolution down by 2
  until the longer side is under 1,024, chunks of 512 x 512, sharded by chunk rows), written band by
  band from the map through :meth:`Store.mosaic <salient.store.write.Store.mosaic>`, and its ``ok`` row
  (``index`` -1) through ``Store.add_mosaic``; ``read_map`` reads its level 0.
- Several targets (``topK``): a mosaic holds one map, so they go to the per-item array (K, H, W) of
  ``Store.add(..., per_item=True)``, one map per rank, chunked spatially.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..saliency import Saliency
from .claims import _json_safe


def _attrs(s: Saliency, item_id: str) -> dict[str, Any]:
    return _json_safe({"method": s.method, "parameters": s.params, "seed": s.seed, "signed": s.signed,
                       "diverging": s.diverging, "item_id": item_id, "target": s.target, "label": s.label})


def add_whole(store: Any, item_id: str, source: str, results: list[Saliency], position: int | None = None,
              extra: dict[str, Any] | None = None) -> None:
    """Store the whole-mode maps of one item (one Saliency per target, any methods) and their ok rows
    (see the module docstring); ``position`` as for ``Store.add``."""
    pos = store._position(position)  # one position for every method of the item
    groups: dict[str, list[Saliency]] = {}
    for s in results:
        groups.setdefault(s.method, []).append(s)
    for method, group in groups.items():
        if len(group) > 1 or np.ndim(group[0].map) != 2:
            store.add(item_id, source, group, pos, extra, per_item=True)
            continue
        s = group[0]
        m = np.asarray(s.map, dtype=np.float32)
        writer = store.mosaic(item_id, method, m.shape, attrs=_attrs(s, item_id), resume=False)
        while writer.done < writer.n_bands:
            y0, y1 = writer.band_rows(writer.done)
            writer.write_band(m[y0:y1])
        writer.close()
        store.add_mosaic(item_id, source, s, pos, extra)
