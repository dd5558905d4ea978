"""Paired comparison of two methods over a store's results table: one-sided Wilcoxon signed-rank.

Pairs are the rows of methods A and B with the same (position, target) (the same item, the same
class), both ``ok`` and both with a finite value of the metric column; d = value_A − value_B.
The test's direction comes from the registered metric (``Metric.higher_is_better``, one place):
``alternative='greater'`` (H1: A > B) where higher is better (insertion_auc, object_share,
pointing_game, ...), ``'less'`` where lower is better (deletion_auc, context_share), two-sided for
a column without a direction. A **win** is a pair where A is better than B in that direction
(d > 0, or d < 0 where lower is better; d > 0 for a two-sided column), a tie d = 0. ``statistic``
and ``p`` are ``scipy.stats.wilcoxon(d, alternative=...)`` with its defaults (zero differences
dropped, ``zero_method='wilcox'``; exact distribution for small n without ties, else the normal
approximation); NaN when every difference is 0. ``median_diff`` is the median of d (not flipped).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SalientError
from ..methods.metric import METRICS, metric_for_column

OVERALL = "(all)"  # the group of the row over every pair
COLUMNS = ("group", "n", "wins", "ties", "losses", "median_diff", "statistic", "p", "alternative")
KEYS = ["position", "target"]


def metric_column(df: Any, metric: str) -> str:
    """The table column of ``metric``: a column name (``insertion_auc``) or a registered metric's name
    (``insertion``). SalientError if the table has no such column."""
    if metric not in df.columns and metric in METRICS:
        metric = METRICS[metric].column
    if metric not in df.columns:
        raise SalientError(f"no metric column {metric!r} in the results table")
    return metric


def alternative(column: str) -> str:
    """The Wilcoxon alternative for A − B on ``column``: 'greater', 'less' or 'two-sided'."""
    m = metric_for_column(column)
    better = None if m is None else m.higher_is_better
    return {True: "greater", False: "less", None: "two-sided"}[better]


def pairs(df: Any, a: str, b: str, column: str, by: str | None = None) -> Any:
    """The paired rows: a DataFrame with position, target, ``a``, ``b`` (the two values) and, with
    ``by``, the group (``by`` of A's row). Bad input (a method absent, A = B, ``by`` not a column) is a
    one-line SalientError."""
    import pandas as pd

    if a == b:
        raise SalientError(f"compare needs two different methods, got {a!r} twice")
    methods = sorted(df["method"].dropna().unique())
    for m in (a, b):
        if m not in methods:
            raise SalientError(f"method {m!r} is not in the store; it has {', '.join(methods) or 'no methods'}")
    if by is not None and by not in df.columns:
        raise SalientError(f"--by {by!r}: no such column in the results table")
    ok = df[(df["status"] == "ok") & np.isfinite(pd.to_numeric(df[column], errors="coerce").astype(np.float64))]
    extra = [by] if by is not None else []
    left = ok.loc[ok["method"] == a, [*KEYS, column, *extra]].rename(columns={column: a})
    right = ok.loc[ok["method"] == b, [*KEYS, column]].rename(columns={column: b})
    left, right = left.drop_duplicates(KEYS), right.drop_duplicates(KEYS)
    return left.merge(right, on=KEYS, how="inner", validate="one_to_one")


def wilcoxon_row(d: np.ndarray, alt: str, higher_is_better: bool | None) -> dict[str, Any]:
    """n, wins, ties, losses, median_diff, statistic, p, alternative for the differences ``d``."""
    from scipy.stats import wilcoxon

    sign = -1.0 if higher_is_better is False else 1.0
    better = sign * d
    stat = p = float("nan")
    if np.any(d != 0):
        r = wilcoxon(d, alternative=alt)
        stat, p = float(r.statistic), float(r.pvalue)
    return {"n": int(d.size), "wins": int((better > 0).sum()), "ties": int((d == 0).sum()),
            "losses": int((better < 0).sum()), "median_diff": float(np.median(d)) if d.size else float("nan"),
            "statistic": stat, "p": p, "alternative": alt}


def compare(df: Any, a: str, b: str, metric: str, by: str | None = None) -> Any:
    """Wilcoxon signed-rank of methods ``a`` vs ``b`` on ``metric`` (a column such as
    ``insertion_auc``, or a registered metric's name) over the results table ``df``
    (:func:`salient.store.read_results`): a DataFrame with :data:`COLUMNS`, one row over all pairs
    (group ``"(all)"``) and, with ``by`` (e.g. ``label``, ``true_label``), one row per group value,
    sorted. See the module docstring for pairs, direction, wins and p. Bad input (a method or the
    metric absent, no pair at all) is a one-line SalientError."""
    import pandas as pd

    column = metric_column(df, metric)
    got = pairs(df, a, b, column, by)
    if got.empty and not df.loc[df["method"].isin([a, b]), column].notna().any():
        raise SalientError(f"the store has no {column} values for {a!r} or {b!r} (was it in the job's metrics?)")
    if got.empty:
        raise SalientError(f"no pairs: methods {a!r} and {b!r} have no (item, target) in common with status ok "
                           f"and a finite {column}")
    alt = alternative(column)
    m = metric_for_column(column)
    direction = None if m is None else m.higher_is_better
    d = (got[a] - got[b]).to_numpy(np.float64)
    rows = [{"group": OVERALL, **wilcoxon_row(d, alt, direction)}]
    if by is not None:
        keys = got[by].astype("string").fillna("<none>")
        for g in sorted(keys.unique()):
            rows.append({"group": g, **wilcoxon_row(d[(keys == g).to_numpy()], alt, direction)})
    return pd.DataFrame(rows, columns=list(COLUMNS))
