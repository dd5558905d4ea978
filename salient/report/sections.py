"""The report's sections about the job and its numbers (each ``fn(ctx) -> HTML | None``, see
:mod:`salient.report.page`): the job, per method a table and metric distributions, paired
comparisons of methods, the clusters' images. The gallery is :mod:`salient.report.gallery`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .page import Raw, ReportContext, esc, fmt, table

ERRORS_SHOWN = 20


def job_section(ctx: ReportContext) -> str:
    """Model, spec, counts ok/error, errors, seconds and forward passes per second."""
    import yaml

    v, df = ctx.view, ctx.view.df
    a = v.attrs
    per_item = df.drop_duplicates(["position", "method"]) if len(df) else df
    n_fwd = int(per_item["n_forward"].fillna(0).sum()) if len(df) else 0
    secs = float(a["seconds"]) if isinstance(a.get("seconds"), int | float) else (
        float(per_item["seconds"].fillna(0).sum()) if len(df) else 0.0)
    how = "job" if "seconds" in a else "summed over items"
    rows = [("store", str(v.out)), ("model", a.get("model", "?")), ("salient", a.get("salient_version", "?")),
            ("started", a.get("started", "?")), ("complete", a.get("complete", "-")),
            ("items", int(df["position"].nunique()) if len(df) else 0), ("rows", len(df)),
            ("ok rows", int((df["status"] == "ok").sum())), ("error rows", int((df["status"] == "error").sum())),
            ("forward passes", n_fwd), (f"seconds ({how})", secs),
            ("forward passes/s", n_fwd / secs if secs > 0 else float("nan"))]
    out = ["<h2 id=job>The job</h2>"]
    if v.missing:
        out.append('<div class="missing"><b>Missing from this store:</b><ul>'
                   + "".join(f"<li>{esc(m)}</li>" for m in v.missing) + "</ul></div>")
    out.append(table(("", ""), rows))
    spec = a.get("job") or a.get("spec")
    if spec:
        out.append(f"<details><summary>spec</summary><pre>{esc(yaml.safe_dump(spec, sort_keys=False))}</pre>"
                   "</details>")
    errors = df[df["status"] == "error"]
    if len(errors):
        out.append(f"<h3>Errors ({len(errors)} rows)</h3>")
        out.append(table(("item", "method", "error"), ((r.item_id, r.method, r.error)
                                                        for r in errors.head(ERRORS_SHOWN).itertuples())))
        if len(errors) > ERRORS_SHOWN:
            out.append(f"<p>... {len(errors) - ERRORS_SHOWN} more error rows (salient show, or the viewer)</p>")
    return "\n".join(out)


def methods_section(ctx: ReportContext) -> str | None:
    """Per method: rows ok/error and the distribution (mean, quartiles) of every metric column
    that has values; one histogram per metric with a line per method."""
    v, df = ctx.view, ctx.view.df
    if not len(df):
        return None
    cols = v.metric_columns
    out = ["<h2 id=methods>Methods</h2>"]
    stats = ("n", "mean", "std", "min", "25%", "50%", "75%", "max")
    for m in v.methods:
        g = df[df["method"] == m]
        ok = g[g["status"] == "ok"]
        out.append(f"<h3>{esc(m)}</h3><p>{int(g['position'].nunique())} items, {len(ok)} ok rows, "
                   f"{int((g['status'] == 'error').sum())} error rows, median {fmt(float(ok['seconds'].median()))}"
                   " s per item</p>" if len(ok) else f"<h3>{esc(m)}</h3><p>no ok rows</p>")
        rows = []
        for c in cols:
            s = ok[c].dropna()
            if len(s):
                d = s.describe()
                rows.append((c, int(d["count"]), *(float(d[k]) for k in stats[1:])))
        if rows:
            out.append(table(("metric", *stats), rows))
    plots = [_histogram(ctx, c) for c in cols]
    if any(plots):
        out.append('<div class="plots">' + "".join(
            f'<img src="{esc(p)}" alt="{esc(c)} distribution">' for p, c in zip(plots, cols, strict=True) if p)
            + "</div>")
    return "\n".join(out)


def _histogram(ctx: ReportContext, column: str) -> str | None:
    """One PNG: the distribution of ``column`` per method (step histograms on common bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = ctx.view.df
    ok = df[(df["status"] == "ok") & df[column].notna()]
    if not len(ok):
        return None
    vals = ok[column].to_numpy(np.float64)
    bins = np.histogram_bin_edges(vals, bins=40) if np.ptp(vals) > 0 else 10
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    for m, g in ok.groupby("method", sort=True):
        ax.hist(g[column].to_numpy(np.float64), bins=bins, histtype="step", label=f"{m} (n={len(g)})")
    ax.set_xlabel(column)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.assets / f"hist_{column}.png"
    fig.savefig(path)
    plt.close(fig)
    return ctx.rel(path)


def paired(df: Any, a: str, b: str, metric: str) -> Any:
    """Paired comparison of methods ``a`` and ``b`` on ``metric`` (:func:`salient.metrics.paired.compare`:
    one-sided Wilcoxon signed-rank over the (position, target) both scored); an empty DataFrame when
    they share no such pair."""
    import pandas as pd

    from ..errors import SalientError
    from ..metrics.paired import compare

    try:
        return compare(df, a, b, metric)
    except SalientError:  # no pair in common
        return pd.DataFrame()


def paired_section(ctx: ReportContext) -> str | None:
    """Every pair of methods that share items, every metric both have: Wilcoxon signed-rank."""
    v, df = ctx.view, ctx.view.df
    rows = []
    for a, b in itertools.combinations(v.methods, 2):
        for c in v.metric_columns:
            r = paired(df, a, b, c)
            if len(r) and int(r["n"].iloc[0]) > 0:
                x = r.iloc[0]
                rows.append((f"{a} vs {b}", c, *(x.get(k) for k in ("n", "wins", "ties", "losses", "median_diff",
                                                                      "statistic", "p"))))
    if not rows:
        return None
    note = ("<p>Pairs: the same item and target, both ok. wins: pairs where the first method is better (higher, "
            "or lower where lower is better, e.g. deletion); p: one-sided Wilcoxon signed-rank in the metric's "
            "direction (two-sided for a metric without one).</p>")
    return "<h2 id=paired>Paired comparisons</h2>" + note + table(
        ("methods", "metric", "n", "wins", "ties", "losses", "median diff", "statistic", "p"), rows)


AUDIT_ROWS = 30


def audit_section(ctx: ReportContext) -> str | None:
    """The audit's findings when ``salient audit`` wrote them (``OUT/audit/*.parquet``: accuracy,
    classes, flagged; the first rows of each) and the flagged items' overlays (``OUT/audit/flagged/``)."""
    import pyarrow.parquet as pq

    d = ctx.view.out / "audit"
    tables = [(n, d / f"{n}.parquet") for n in ("accuracy", "classes", "flagged") if (d / f"{n}.parquet").is_file()]
    pngs = sorted((d / "flagged").glob("*.png"))[:AUDIT_ROWS] if (d / "flagged").is_dir() else []
    if not tables and not pngs:
        return None
    out = ["<h2 id=audit>Audit</h2>"]
    for name, path in tables:
        try:
            df = pq.read_table(path).to_pandas()
        except Exception as e:  # noqa: BLE001 - a damaged findings file: say so, show the rest
            out.append(f'<p class="err">{esc(path)}: cannot be read ({esc(type(e).__name__)})</p>')
            continue
        if name == "accuracy" and {"class", "variant", "accuracy"} <= set(df.columns):  # class x variant
            from ..audit.findings import variant_order

            order = sorted(dict.fromkeys(df["variant"]), key=variant_order)
            df = df.pivot(index="class", columns="variant", values="accuracy")[order]
            df = df.reindex([c for c in df.index if c != "all"] + (["all"] if "all" in df.index else [])).reset_index()
            df.columns.name = None
        more = f" (first {AUDIT_ROWS} of {len(df)})" if len(df) > AUDIT_ROWS else ""
        out.append(f"<h3>{esc(name)}{more}</h3>" + table(list(df.columns), df.head(AUDIT_ROWS).itertuples(index=False)))
    if pngs:
        out.append("<h3>flagged items</h3><div class=plots>" + "".join(
            f'<img src="{esc(ctx.rel(p))}" alt="{esc(p.stem)}">' for p in pngs) + "</div>")
    return "\n".join(out)


def inspect_section(ctx: ReportContext) -> str | None:
    """Visual inspection when ``salient inspect`` wrote it (``OUT/inspect/``): the thresholds and metrics
    (``metrics.json``), the candidates kept and rejected, and the items with the highest image scores."""
    import json

    import pyarrow.parquet as pq

    d = ctx.view.out / "inspect"
    if not (d / "metrics.json").is_file():
        return None
    out = ["<h2 id=inspect>Inspection</h2>"]
    try:
        metrics = json.loads((d / "metrics.json").read_text())
        out.append(table(("", ""), [(k, v) for k, v in metrics.items()]))
        if (d / "candidates.parquet").is_file():
            c = pq.read_table(d / "candidates.parquet").to_pandas()
            out.append(f"<p>{len(c)} candidates: {int(c['kept'].sum())} kept by the re-check, "
                       f"{int((~c['kept']).sum())} rejected.</p>")
        if (d / "images.parquet").is_file():
            im = pq.read_table(d / "images.parquet").to_pandas().sort_values("score", ascending=False)
            out.append("<h3>highest image scores</h3>" + table(
                ("item", "score", "candidates", "kept"),
                im.head(AUDIT_ROWS)[["item_id", "score", "candidates", "kept"]].itertuples(index=False)))
    except Exception as e:  # noqa: BLE001 - a damaged inspection file: say so, show the rest
        out.append(f'<p class="err">{esc(d)}: cannot be read ({esc(type(e).__name__)})</p>')
    return "\n".join(out)


def clusters_section(ctx: ReportContext) -> str | None:
    """The images under ``OUT/clusters/`` (the clusters' centroid grid and friends) when present."""
    pngs = sorted((ctx.view.out / "clusters").glob("*.png"))
    if not pngs:
        return None
    return "<h2 id=clusters>Clusters</h2><div class=plots>" + "".join(
        Raw(f'<figure><img src="{esc(ctx.rel(p))}" alt="{esc(p.stem)}"><figcaption>{esc(p.name)}</figcaption>'
            "</figure>") for p in pngs) + "</div>"
