"""Scaling efficiency and where the limit is, by a stated rule.

Efficiency at n workers: ``rate(n) / (n / n0 · rate(n0))`` with n0 the smallest worker count run (1 by
default: ``rate(n) / (n · rate(1))``), for every case, the raw rows included (raw efficiency below 1 means
the workers share something: cores, a GPU, memory bandwidth).

The limit of a row (:func:`limit_of`), from its idle share i, ratio to raw r and driver share d:
- raw rows: ``device``;
- i < 0.15 (the workers are busy): ``device`` if r >= 0.85 (the forwards run at the raw rate), else ``worker``
  (work in the worker besides the raw forward: building masked inputs, reductions, a slower module path);
- i >= 0.15 (the workers wait): ``driver`` if d >= 0.8 (the driver's one thread is saturated: scheduler and
  method code; ``method_share`` says how much is the method's own), else ``transport`` on Ray (calls, object
  store, network) and ``supply`` on the local executor (the method's rounds bring too few queries at once
  to keep every worker busy, e.g. BOREx's sequential steps).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

IDLE_BUSY, RATIO_DEVICE, DRIVER_SATURATED, RAW_SHARED = 0.15, 0.85, 0.8, 0.9
RULE = (f"idle < {IDLE_BUSY:g}: device if ratio >= {RATIO_DEVICE:g} else worker; idle >= {IDLE_BUSY:g}: driver if "
        f"driver share >= {DRIVER_SATURATED:g}, else transport (ray) / supply (local)")


def limit_of(row: dict[str, Any], executor: str) -> str:
    """The limit of one row (module docstring)."""
    if row["case"] == "raw":
        return "device"
    if row["idle_share"] < IDLE_BUSY:
        return "device" if row["ratio"] >= RATIO_DEVICE else "worker"
    if row["driver_share"] >= DRIVER_SATURATED:
        return "driver"
    return "transport" if executor == "ray" else "supply"


def add_efficiency(rows: list[dict[str, Any]]) -> None:
    """Set ``efficiency`` on every row (module docstring), per (input, size, case) over the worker counts."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["input"], r["size"], r["case"])].append(r)
    for group in groups.values():
        base = min(group, key=lambda r: r["workers"])
        for r in group:
            scale = r["workers"] / base["workers"] * base["rate"]
            r["efficiency"] = r["rate"] / scale if scale > 0 else 0.0


def limit_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker count: {workers, limit (the most common among the engine rows), line (which cases have which
    limit, and the raw rate's own efficiency when the workers share a device)}."""
    out = []
    for n in sorted({r["workers"] for r in rows}):
        at = [r for r in rows if r["workers"] == n]
        by: dict[str, list[str]] = defaultdict(list)
        for r in at:
            if r["case"] != "raw":
                by[r["limit"]].append(r["case"] if r["input"] == "photo" and len({x["size"] for x in at}) == 1
                                      else f"{r['case']}@{r['input']}{r['size']}")
        top = max(by, key=lambda k: len(by[k])) if by else "device"
        parts = [f"{k} ({', '.join(v)})" for k, v in sorted(by.items(), key=lambda kv: -len(kv[1]))]
        shared = [r for r in at if r["case"] == "raw" and r["efficiency"] < RAW_SHARED]
        if shared:
            parts.append(f"raw forwards scale at {min(r['efficiency'] for r in shared):.2f}: the workers share a "
                         "device (cores, GPU, memory bandwidth)")
        out.append({"workers": n, "limit": top, "line": f"limit at {n} worker{'s' * (n != 1)}: " + "; ".join(parts)})
    return out
