"""Which other item lends its background to a mixed variant, chosen deterministically by seed.

Candidates are the items with a label and an object mask (or box). For the item at position i with
label L (classes sorted by name):
- ``mixed_same``: a uniform draw among the other candidates labelled L;
- ``mixed_rand``: a uniform draw of another class, then of a candidate of that class (ImageNet-9's
  "random class");
- ``mixed_next``: a uniform draw among the candidates of the class after L (cyclically).
Each draw uses its own generator ``numpy.random.default_rng([seed, i, k])`` (k the variant's index in
``MIXED``), so a choice depends only on the seed, the position and the labels of the candidates,
never on the order in which items are processed. No candidate: None (the variant's row says why).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .variants import MIXED


class Partners:
    """The candidates of a dataset, by label: ``choose(variant, position)`` -> a position or None."""

    def __init__(self, labels: Iterable[str | None], has_mask: Iterable[bool], seed: int = 0):
        self.labels = list(labels)
        masks = list(has_mask)
        self.seed = int(seed)
        by: dict[str, list[int]] = {}
        for pos, (lab, ok) in enumerate(zip(self.labels, masks, strict=True)):
            if lab is not None and ok:
                by.setdefault(lab, []).append(pos)
        self.classes = sorted(by)
        self.by = {k: np.asarray(v, dtype=np.int64) for k, v in by.items()}

    def choose(self, variant: str, position: int) -> tuple[int | None, str]:
        """(the partner's position, or None with the reason)."""
        label = self.labels[position] if 0 <= position < len(self.labels) else None
        if label is None:
            return None, f"{variant} needs the item's label (the manifest's label column)"
        rng = np.random.default_rng([self.seed, int(position), MIXED.index(variant)])
        if variant == "mixed_same":
            pool = self.by.get(label, np.zeros(0, np.int64))
            pool = pool[pool != position]
            if not len(pool):
                return None, f"mixed_same: no other item labelled {label!r} with a mask"
            return int(pool[rng.integers(len(pool))]), ""
        others = [c for c in self.classes if c != label]
        if not others:
            return None, f"{variant}: no item of another class with a mask"
        if variant == "mixed_rand":
            cls = others[int(rng.integers(len(others)))]
        else:
            order = sorted({*self.classes, label})
            cls = order[(order.index(label) + 1) % len(order)]
            if cls == label or cls not in self.by:
                return None, f"mixed_next: no item of the class after {label!r} with a mask"
        pool = self.by[cls]
        return int(pool[rng.integers(len(pool))]), ""
