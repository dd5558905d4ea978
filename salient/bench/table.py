"""The terminal table of a bench run, and of ``--compare``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

HEAD = (f"{'workers':>7} {'input':<11} {'case':<10} {'fwd/s':>9} {'min-max':>15} {'/worker':>8} {'raw/s':>9} "
        f"{'ratio':>5} {'eff':>5} {'method':>6} {'idle':>5} {'units/s':>7} {'warm s':>6}  limit")


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def row_line(r: dict[str, Any]) -> str:
    raw = r["case"] == "raw"
    span = f"{r['rate_min']:.1f}-{r['rate_max']:.1f}"
    method = "" if raw else _pct(r["method_share"])
    idle = "" if raw else _pct(r["idle_share"])
    units = "" if raw else f"{r['dispatch_per_s']:.1f}"
    where = f"{r['input']} {r['size']}"
    return (f"{r['workers']:>7} {where:<11} {r['case']:<10} {r['rate']:9.1f} {span:>15} {r['rate_per_worker']:8.1f} "
            f"{r['raw_rate']:9.1f} {r['ratio']:5.2f} {r['efficiency']:5.2f} {method:>6} {idle:>5} {units:>7} "
            f"{r['warmup_s']:6.2f}  {r['limit']}")


def format_table(rows: Sequence[dict[str, Any]] | pd.DataFrame) -> str:
    """One line per row, under :data:`HEAD` (rates: median of the rounds; method/idle in %)."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    return "\n".join([HEAD, *(row_line(r) for r in rows)])
