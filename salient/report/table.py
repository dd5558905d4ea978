"""``salient show OUT``: a store summarised as lines of text (its model and state, then per
method items ok and in error, maps, the mean of every metric column, forward passes per item, and
the first error rows). It only reads the store. A metric column shows when some row has a value of it;
the reasons of NaN metric values (``metric_note``, e.g. ``no object mask (object_share)``) are
counted below the table.

Nothing is taken on trust: damaged metadata is a one-line error naming the file (``salient repair
OUT``, :func:`~salient.store.check_metadata`), and every ``ok`` row's map is checked
(:func:`~salient.store.check_maps`: each shard file read once, its checksums verified; see its
cost there). An item whose map is missing or damaged is not counted ``ok``: the columns
``missing`` and ``damaged`` count them, and the store is not called complete.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SalientError
from ..methods.metric import NOTE_COLUMN, metric_columns


def show_table(out: str | Path) -> list[str]:
    """Lines describing a store: its model and state, then per method items ok/error and mean AUCs."""
    import zarr

    from ..store import ZARR_NAME, check_maps, check_metadata, item_status, read_results

    out = Path(out)
    if not (out / ZARR_NAME / "zarr.json").is_file() and not any((out / "results").glob("part-*.parquet")):
        raise SalientError(f"{out}: not a salient store (no {ZARR_NAME} or results/)")
    check_metadata(out)
    attrs = dict(zarr.open_group(out / ZARR_NAME, mode="r").attrs) if (out / ZARR_NAME).is_dir() else {}
    df = read_results(out)
    check = check_maps(out, df)
    state = {True: "complete", False: "incomplete (rerun the same command to resume)"}.get(attrs.get("complete"), "")
    if check.n_lost:
        state = f"{check.n_lost} maps missing or damaged (rerun the same command to redo their items)"
    head = f"{out}: model {attrs.get('model', '?')}, {df['position'].nunique() if len(df) else 0} items"
    lines = [head + (f", {state}" if state else "")]
    metrics = tuple(c for c in metric_columns() if df[c].notna().any())  # those the store has values of
    lost_cols = ("missing", "damaged") if check.n_lost else ()
    cols = ("method", "items", "ok", "error", *lost_cols, "maps", *metrics, "forward/item")
    rows = []
    status = item_status(df)
    for m, g in df.groupby("method", sort=True):
        lost = check.lost.get(str(m), {})
        per_item = status.loc[m]
        fine = per_item & ~per_item.index.isin(list(lost))
        ok = g[g["status"] == "ok"]
        nf = g.drop_duplicates("position")["n_forward"]
        counts = check.counts(str(m))
        rows.append((str(m), len(per_item), int(fine.sum()), int((~per_item).sum()),
                     *(counts[c] for c in lost_cols), int((~ok["position"].isin(list(lost))).sum()),
                     *(_mean(ok[c]) for c in metrics), f"{nf.mean():.0f}" if len(nf) else "-"))
    if not rows:
        return [*lines, "  (no results yet)"]
    lines += format_table(cols, rows)
    notes = df.loc[df["status"] == "ok", NOTE_COLUMN].dropna().value_counts()
    for note, n in notes.head(5).items():
        lines.append(f"  NaN in {n} ok row{'s' * (n != 1)}: {note}")
    errors = df[df["status"] == "error"]
    for _, r in errors.head(5).iterrows():
        lines.append(f"  error: {r['item_id']} [{r['method']}]: {r['error']}")
    if len(errors) > 5:
        lines.append(f"  ... {len(errors) - 5} more error rows")
    return lines


def format_table(cols, rows, indent: str = "  ") -> list[str]:
    """Aligned text lines: a header of ``cols``, then ``rows`` (the first column left-aligned)."""
    widths = [max(len(str(r[i])) for r in (cols, *rows)) for i in range(len(cols))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return [indent + fmt.format(*map(str, cols)), *(indent + fmt.format(*map(str, r)) for r in rows)]


def _mean(s) -> str:
    s = s.dropna()
    return f"{s.mean():.4f}" if len(s) else "-"
