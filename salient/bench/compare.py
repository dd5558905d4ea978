"""``salient bench --compare A B ...``: result folders side by side, each figure's ratio to the first folder's.

Folders of different suite versions are refused (their cases and parameters differ: the numbers do not
compare), naming both versions. Rows are matched on (input, size, workers, case); a row one folder lacks
shows ``-``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from ..errors import SalientError
from .machine import one_line
from .schema import KEY, read_results


def load_all(folders: Sequence[str | os.PathLike]) -> list[tuple[str, dict, pd.DataFrame]]:
    """(name, description, rows) per folder; different suite versions refused."""
    if len(folders) < 2:
        raise SalientError("--compare needs two or more result folders")
    got = [(str(f), *read_results(f)) for f in folders]
    first = got[0]
    for name, meta, _ in got[1:]:
        if meta.get("suite_version") != first[1].get("suite_version"):
            raise SalientError(f"--compare: {first[0]} has suite version {first[1].get('suite_version')} and {name} "
                               f"has suite version {meta.get('suite_version')}; results of different suite versions "
                               "do not compare (rerun both with one salient)")
    return got


def compare_table(folders: Sequence[str | os.PathLike], column: str = "rate") -> str:
    """The comparison as text: a header per folder (machine, settings), then per row key each folder's ``column``
    and, for the second folder on, its ratio to the first's."""
    got = load_all(folders)
    lines = []
    for i, (name, meta, _) in enumerate(got):
        s = meta.get("settings", {})
        lines.append(f"[{i}] {name}: {s.get('model')}, {s.get('executor')}, {s.get('precision')}, "
                     f"kernels {s.get('kernels')}, suite {meta.get('suite_version')}; "
                     f"{one_line(meta.get('machine', {}))}")
    keyed = [df.set_index(list(KEY))[column] for _, _, df in got]
    index = list(dict.fromkeys(k for s in keyed for k in s.index))
    head = f"{'workers':>7} {'input':<11} {'case':<10}" + "".join(
        f" {f'[{i}] {column}':>12}" + (f" {f'[{i}]/[0]':>8}" if i else "") for i in range(len(got)))
    lines.append(head)
    for inp, size, workers, case in sorted(index, key=lambda k: (k[2], k[0] != "photo", k[0], k[1], k[3] != "raw")):
        where = f"{inp} {size}"
        cells = f"{workers:>7} {where:<11} {case:<10}"
        base = keyed[0].get((inp, size, workers, case))
        for i, s in enumerate(keyed):
            v = s.get((inp, size, workers, case))
            cells += f" {v:12.1f}" if v is not None else f" {'-':>12}"
            if i:
                ok = v is not None and base is not None and base > 0
                cells += f" {v / base:8.2f}" if ok else f" {'-':>8}"
        lines.append(cells)
    return "\n".join(lines)
