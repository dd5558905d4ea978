"""``salient audit OUT``: what the context table (and the localisation columns) say about a dataset.

For each variant v and each class (the items' true label; "all" for every item):
- accuracy(v) = mean of ``hit``: the variant's top-1 equals the item's true class when its label
  names a model class, else equals the model's top-1 on the original item (agreement: the audit
  still works when the dataset's labels are not the model's classes; ``basis`` says which);
- flip rate(v) = share of items whose top-1 differs from the original's;
- score drop(v) = mean of base_score − ref_score: the loss of the original top-1 class's score;
- per class and overall: BG-gap = accuracy(mixed_same) − accuracy(mixed_rand) (Xiao et al.), and the
  mean score drop under context change (only_fg, mean_bg, mixed_*) next to that under context
  perturbation (the ``perturb:*`` variants).
Flagged items: the prediction flips under mixed_rand or only_fg, or a map's context share (results
column ``context_share``, any method) exceeds the threshold (the job's ``audit.flag_context_share``,
0.5 by default). Severity = the number of these reasons + the mean relative score drop under the
context changes (in [0, 1]; it orders items with the same reasons); sorted by severity, descending.

Writes ``OUT/audit/accuracy.parquet`` (class, variant, group, n, accuracy, flip_rate, score_drop),
``OUT/audit/classes.parquet`` (class, n, bg_gap, change_drop, perturbation_drop),
``OUT/audit/flagged.parquet`` and overlays of the first flagged items' maps in ``OUT/audit/flagged/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SalientError
from .record import CONTEXT_DIR, read_context
from .variants import VARIANT_KINDS

AUDIT_DIR = "audit"
FLAG_VARIANTS = ("mixed_rand", "only_fg")


@dataclass
class Findings:
    accuracy: Any  # DataFrame: class, variant, group, n, accuracy, flip_rate, score_drop
    classes: Any  # DataFrame: class, n, bg_gap, change_drop, perturbation_drop
    flagged: Any  # DataFrame: position, item_id, true_label, severity, reasons, context_share
    basis: str  # "true label", "agreement with the original prediction", or both
    threshold: float

    def lines(self, top: int = 10) -> list[str]:
        from ..report.table import format_table

        out = [f"accuracy per context variant (basis: {self.basis}); BG-gap = acc(mixed_same) - acc(mixed_rand)"]
        acc = self.accuracy
        if not len(acc):
            return [*out, "  (no context rows)"]
        variants = sorted(dict.fromkeys(acc["variant"]), key=variant_order)
        wide = acc.pivot(index="class", columns="variant", values="accuracy")
        rows = []
        for cls, c in self.classes.set_index("class").iterrows():
            rows.append((cls, int(c["n"]), *(_fmt(wide.loc[cls].get(v)) for v in variants), _fmt(c["bg_gap"]),
                         _fmt(c["change_drop"]), _fmt(c["perturbation_drop"])))
        out += format_table(("class", "n", *variants, "bg_gap", "drop:change", "drop:perturb"), rows)
        out.append(f"flagged items: {len(self.flagged)} (flip under {' or '.join(FLAG_VARIANTS)}, or context share "
                   f"> {self.threshold:g})")
        for _, r in self.flagged.head(top).iterrows():
            out.append(f"  {r['severity']:.2f}  {r['item_id']} [{r['true_label']}]: {r['reasons']}")
        if len(self.flagged) > top:
            out.append(f"  ... {len(self.flagged) - top} more in {AUDIT_DIR}/flagged.parquet")
        return out


def variant_order(name: str) -> tuple[int, str]:
    """Sort key: original, the context changes, the removals, then the perturbations by name."""
    return (VARIANT_KINDS.index(name) if name in VARIANT_KINDS else len(VARIANT_KINDS), name)


def _fmt(v: Any) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _hits(ok):
    return ok["correct"].where(ok["correct"].notna(), ok["kept"]).astype(bool)


def _per_variant(ok, key: str) -> Any:
    g = ok.assign(hit=_hits(ok), flip=~ok["kept"].astype(bool), drop=ok["base_score"] - ok["ref_score"])
    t = g.groupby([key, "variant"], sort=False).agg(group=("group", "first"), n=("hit", "size"),
                                                   accuracy=("hit", "mean"), flip_rate=("flip", "mean"),
                                                   score_drop=("drop", "mean")).reset_index()
    return t.rename(columns={key: "class"})


def _class_table(acc) -> Any:
    import pandas as pd

    rows = []
    for cls, g in acc.groupby("class", sort=False):
        a = g.set_index("variant")
        gap = (a.loc["mixed_same", "accuracy"] - a.loc["mixed_rand", "accuracy"]
               if {"mixed_same", "mixed_rand"} <= set(a.index) else np.nan)

        def drop(kind: str, a=a) -> float:
            sel = a[a["group"] == kind]
            return float(np.average(sel["score_drop"], weights=sel["n"])) if len(sel) else np.nan

        n = int(a.loc["original", "n"]) if "original" in a.index else int(a["n"].max())
        rows.append({"class": cls, "n": n, "bg_gap": gap, "change_drop": drop("change"),
                     "perturbation_drop": drop("perturbation")})
    return pd.DataFrame(rows, columns=["class", "n", "bg_gap", "change_drop", "perturbation_drop"])


def _flagged(ok, results, threshold: float) -> Any:
    """The flagged items (see the module docstring), vectorised over positions."""
    import pandas as pd

    cols = ["position", "item_id", "true_label", "severity", "reasons", "context_share"]
    first = ok.drop_duplicates("position").set_index("position")
    pos = first.index
    reasons = pd.Series("", index=pos, dtype=object)
    n_reasons = pd.Series(0, index=pos, dtype=np.int64)
    for v in FLAG_VARIANTS:
        rows = ok[ok["variant"] == v].set_index("position")
        flip = rows[~rows["kept"].astype(bool)]
        text = "flips under " + v + " (" + flip["ref_label"].astype(str) + " -> " + flip["pred_label"].astype(str) + ")"
        reasons.loc[flip.index] = np.where(reasons.loc[flip.index] == "", text, reasons.loc[flip.index] + "; " + text)
        n_reasons.loc[flip.index] += 1
    share = pd.Series(np.nan, index=pos)
    if results is not None and len(results) and "context_share" in results:
        got = results[results["status"] == "ok"].groupby("position")["context_share"].max()
        share = got.reindex(pos)
    high = share > threshold
    text = "context share " + share[high].map("{:.2f}".format).astype(str) + f" > {threshold:g}"
    reasons.loc[high[high].index] = np.where(reasons[high] == "", text, reasons[high] + "; " + text)
    n_reasons += high.astype(np.int64)
    ch = ok[ok["group"] == "change"]
    base = ch["base_score"].to_numpy(np.float64)
    rel = pd.Series(np.clip((base - ch["ref_score"].to_numpy(np.float64)) / np.maximum(base, 1e-12), 0, 1),
                    index=ch["position"].to_numpy())
    drop = rel.groupby(level=0).mean().reindex(pos).fillna(0.0)
    df = pd.DataFrame({"position": pos, "item_id": first["item_id"].to_numpy(),
                       "true_label": first["true_label"].to_numpy(), "severity": (n_reasons + drop).to_numpy(),
                       "reasons": reasons.to_numpy(),
                       "context_share": share.to_numpy()})
    df = df[n_reasons.to_numpy() > 0]
    return df[cols].sort_values(["severity", "position"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _threshold(out: Path) -> float:
    import zarr

    from ..store import ZARR_NAME

    try:
        spec = dict(zarr.open_group(out / ZARR_NAME, mode="r").attrs).get("spec") or {}
        return float((spec.get("audit") or {}).get("flag_context_share", 0.5))
    except Exception:  # noqa: BLE001 - no readable root: the default
        return 0.5


def audit_findings(out: str | Path, threshold: float | None = None) -> Findings:
    """The audit of the store in ``out`` (see the module docstring); reads the tables only."""
    import pandas as pd

    from ..store import read_results

    out = Path(out)
    if not any((out / CONTEXT_DIR).glob("part-*.parquet")):
        raise SalientError(f"{out}: no context table ({CONTEXT_DIR}/part-*.parquet): run a job with "
                           "audit: {context: [...]} first")
    ctx = read_context(out)
    ok = ctx[ctx["status"] == "ok"]
    thr = _threshold(out) if threshold is None else float(threshold)
    if not len(ok):
        empty = pd.DataFrame()
        return Findings(empty, empty, empty, "none (no variant was scored)", thr)
    labelled = ok.assign(**{"class": ok["true_label"].fillna("(no label)").astype(str)})
    acc = pd.concat([_per_variant(labelled, "class"), _per_variant(ok.assign(all="all"), "all")],
                    ignore_index=True)
    has_true = ok["correct"].notna()
    basis = ("true label" if has_true.all() else "agreement with the original prediction" if not has_true.any()
             else "true label where it names a model class, else agreement with the original prediction")
    results = read_results(out) if any((out / "results").glob("part-*.parquet")) else None
    return Findings(acc, _class_table(acc), _flagged(ok, results, thr), basis, thr)


def write_findings(out: str | Path, findings: Findings, overlays: int = 10) -> Path:
    """The tables of ``findings`` in ``OUT/audit/``, and overlays of the first ``overlays`` flagged items."""
    import pyarrow as pa

    from ..store.files import _write_table_atomic

    out = Path(out)
    d = out / AUDIT_DIR
    d.mkdir(parents=True, exist_ok=True)
    for name, df in (("accuracy", findings.accuracy), ("classes", findings.classes), ("flagged", findings.flagged)):
        _write_table_atomic(pa.Table.from_pandas(df, preserve_index=False), d / f"{name}.parquet")
    if overlays and len(findings.flagged):
        _flagged_overlays(out, findings.flagged.head(overlays), d / "flagged")
    return d


def _flagged_overlays(out: Path, flagged, folder: Path) -> None:
    from ..errors import ItemError
    from ..images import load_image
    from ..methods import get_method
    from ..report.overlay import save_overlay
    from ..store import read_map, read_results

    df = read_results(out)
    rows = df[df["position"].isin(flagged["position"]) & (df["status"] == "ok") & (df["rank"].fillna(0) == 0)]
    for _, r in rows.iterrows():
        try:
            img = load_image(str(r["source"]))
            m = read_map(out, r)
        except (SalientError, ItemError, OSError):
            continue  # a moved photo or a lost map: the table still lists the item
        save_overlay(folder / f"{int(r['position']):06d}_{r['method']}.png", img, m,
                     diverging=get_method(str(r["method"])).diverging)
