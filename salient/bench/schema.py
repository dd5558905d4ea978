"""The results of ``salient bench``: ``OUT/results.parquet`` (one row per figure) and ``OUT/results.json``
(the same rows with the run's description), both carrying :data:`SCHEMA_VERSION` and the suite version.

Row columns (:data:`COLUMNS`): ``input`` (photo | huge | video), ``size`` (the input's side), ``workers``,
``case`` ("raw" or a method), ``rate`` (forward passes/s, all workers; the median of the rounds) with
``rate_min``/``rate_max``/``rate_q1``/``rate_q3``, ``rate_per_worker`` (rate / workers), ``raw_rate`` (the
median of the paired raw rounds), ``ratio`` (median of the rounds' engine / raw rates) with ``ratio_min`` /
``ratio_max``, ``efficiency`` (scaling: :func:`~salient.bench.limits.efficiency`), ``rounds``, ``items`` (items
per round), ``n_forward`` (passes per round, median), ``round_s`` (median round seconds), ``warmup_s`` (the
excluded warm-up), ``method_share`` (the driver's seconds in the method's own code, e.g. BOREx's GP and
search, over the round's wall time), ``driver_share`` (the driver thread's CPU seconds over wall time: the
scheduler plus the method), ``idle_share`` (1 − the workers' busy seconds / (workers · wall)),
``dispatch_per_s`` (units the scheduler dispatched per second), ``batch`` (the forward batch) and ``limit``
(:func:`~salient.bench.limits.limit_of`). Raw rows have ratio 1 and zero driver, method, idle and dispatch
figures (nothing but forwards runs).

``results.json``: ``schema_version``, ``suite_version``, ``created`` (UTC), ``command``, ``settings``,
``machine`` (:func:`~salient.bench.machine.describe`), ``engines`` (per worker count: the executor's batch,
threads, device, kernels, precision), ``limits`` (per worker count: the suite's limit and its reason) and ``rows``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SalientError

SCHEMA_VERSION = 1
JSON_NAME, PARQUET_NAME, PLOT_NAME = "results.json", "results.parquet", "results.png"

COLUMNS: dict[str, str] = {
    "input": "str", "size": "int", "workers": "int", "case": "str",
    "rate": "float", "rate_min": "float", "rate_max": "float", "rate_q1": "float", "rate_q3": "float",
    "rate_per_worker": "float", "raw_rate": "float", "ratio": "float", "ratio_min": "float", "ratio_max": "float",
    "efficiency": "float", "rounds": "int", "items": "int", "n_forward": "int", "round_s": "float",
    "warmup_s": "float", "method_share": "float", "driver_share": "float", "idle_share": "float",
    "dispatch_per_s": "float", "batch": "int", "limit": "str",
}
KEY = ("input", "size", "workers", "case")
_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame with exactly :data:`COLUMNS`, in order and type."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col, kind in COLUMNS.items():
        df[col] = df[col].astype({"str": str, "int": "int64", "float": "float64"}[kind])
    return df


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf as None, numpy scalars as Python numbers."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_results(out: str | os.PathLike, meta: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Write ``OUT/results.parquet`` and ``OUT/results.json`` (each atomically: a temp file, then a rename)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = frame(rows)
    versions = {"schema_version": SCHEMA_VERSION, "suite_version": meta["suite_version"]}
    schema = pa.schema([(c, _ARROW[k]) for c, k in COLUMNS.items()],
                       metadata={b"salient_bench": json.dumps(versions).encode()})
    tmp = out / f".{PARQUET_NAME}.tmp"
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), tmp)
    tmp.replace(out / PARQUET_NAME)
    doc = _clean({**meta, **versions, "rows": df.to_dict("records")})
    tmp = out / f".{JSON_NAME}.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(out / JSON_NAME)
    return out


def read_results(out: str | os.PathLike) -> tuple[dict[str, Any], pd.DataFrame]:
    """(the run's description from results.json without its rows, the rows from results.parquet); a folder
    without results, or of another schema version, is a one-line error."""
    out = Path(out)
    js, pqt = out / JSON_NAME, out / PARQUET_NAME
    if not js.is_file() or not pqt.is_file():
        raise SalientError(f"{out}: no salient bench results there ({JSON_NAME} and {PARQUET_NAME}); "
                           "write some with salient bench --out DIR")
    try:
        meta = json.loads(js.read_text())
        table = pq.read_table(pqt)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise SalientError(f"{out}: unreadable bench results ({type(e).__name__}: {str(e)[:120]})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise SalientError(f"{out}: bench results of schema version {meta.get('schema_version')!r}; this salient "
                           f"reads version {SCHEMA_VERSION}")
    meta.pop("rows", None)
    return meta, frame(table.to_pandas().to_dict("records"))
