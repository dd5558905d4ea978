"""Paired comparison (salient.metrics.paired): the pairs, scipy's Wilcoxon on them, one-sidedness per
metric, per-group rows, the CLI and every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from salient.cli import main
from salient.errors import SalientError
from salient.metrics.paired import COLUMNS, OVERALL, alternative, compare
from salient.saliency import Saliency
from salient.store import Store


def table(n: int = 60, seed: int = 0, gain: float = 0.05) -> pd.DataFrame:
    """Methods a (better: higher insertion, lower deletion by ``gain``), b, c; rows shuffled; plus
    rows that must not pair: an error row, a NaN value, a target only one method has."""
    rng = np.random.default_rng(seed)
    base_ins, base_del = rng.uniform(0.3, 0.7, n), rng.uniform(0.1, 0.4, n)
    labels = np.array(["cat", "dog", "owl"])[rng.integers(0, 3, n)]
    rows = []
    for m, shift in (("a", gain), ("b", 0.0), ("c", -gain)):
        noise = rng.normal(0, 0.02, n)
        for i in range(n):
            rows.append({"position": i, "target": i % 5, "method": m, "status": "ok", "label": labels[i],
                         "insertion_auc": base_ins[i] + shift + noise[i],
                         "deletion_auc": base_del[i] - shift + noise[i]})
    rows[3]["status"] = "error"  # a's item 3
    rows[n + 4]["insertion_auc"] = float("nan")  # b's item 4
    rows.append({"position": 0, "target": 99, "method": "a", "status": "ok", "label": "cat",
                 "insertion_auc": 0.9, "deletion_auc": 0.1})  # a target b has not
    rows[5]["insertion_auc"] = rows[n + 5]["insertion_auc"]  # one tie
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


def expected_pairs(df: pd.DataFrame, a: str, b: str, col: str) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & np.isfinite(df[col])]
    got = ok[ok["method"] == a].merge(ok[ok["method"] == b], on=["position", "target"], suffixes=("_a", "_b"))
    return got.sort_values(["position", "target"])


@pytest.mark.parametrize("col,alt", [("insertion_auc", "greater"), ("deletion_auc", "less")])
def test_equals_scipy_on_the_same_pairs(col, alt):
    df = table()
    got = compare(df, "a", "b", col)
    assert list(got.columns) == list(COLUMNS) and list(got["group"]) == [OVERALL]
    pairs = expected_pairs(df, "a", "b", col)
    d = (pairs[f"{col}_a"] - pairs[f"{col}_b"]).to_numpy()
    assert len(d) == (58 if col == "insertion_auc" else 59)  # the error row, the NaN leave; a lone target never pairs
    ref = wilcoxon(d, alternative=alt)
    row = got.iloc[0]
    assert row["alternative"] == alt == alternative(col)
    assert row["n"] == len(d) and row["statistic"] == ref.statistic and row["p"] == ref.pvalue
    assert row["median_diff"] == np.median(d)
    better = d > 0 if alt == "greater" else d < 0
    worse = d < 0 if alt == "greater" else d > 0
    assert (row["wins"], row["ties"], row["losses"]) == (better.sum(), (d == 0).sum(), worse.sum())
    assert row["ties"] == (1 if col == "insertion_auc" else 0)


def test_one_sided_in_the_better_direction():
    df = table()
    for col in ("insertion_auc", "deletion_auc", "insertion"):  # a metric name works as well as its column
        better, worse = compare(df, "a", "c", col).iloc[0], compare(df, "c", "a", col).iloc[0]
        assert better["p"] < 1e-6 and worse["p"] > 1 - 1e-6
        assert better["wins"] > 50 and worse["losses"] > 50


def test_per_group_rows_equal_scipy_on_the_group():
    df = table()
    got = compare(df, "a", "b", "insertion_auc", by="label").set_index("group")
    assert list(got.index) == [OVERALL, "cat", "dog", "owl"]
    pairs = expected_pairs(df, "a", "b", "insertion_auc")
    for g in ("cat", "dog", "owl"):
        sub = pairs[pairs["label_a"] == g]
        d = (sub["insertion_auc_a"] - sub["insertion_auc_b"]).to_numpy()
        assert got.loc[g, "n"] == len(d) and got.loc[g, "p"] == wilcoxon(d, alternative="greater").pvalue
    assert got.loc[["cat", "dog", "owl"], "n"].sum() == got.loc[OVERALL, "n"]


def test_all_ties_give_nan_p():
    df = table()
    b = df[df["method"] == "b"].assign(method="b2")
    got = compare(pd.concat([df, b]), "b", "b2", "insertion_auc").iloc[0]
    assert got["ties"] == got["n"] > 0 and np.isnan(got["p"]) and np.isnan(got["statistic"])


@pytest.mark.parametrize("args,message", [
    (("a", "zzz", "insertion_auc"), "method 'zzz' is not in the store; it has a, b, c"),
    (("a", "b", "object_share"), "no metric column 'object_share'"),
    (("a", "b", "nonsense"), "no metric column 'nonsense'"),
    (("a", "a", "insertion_auc"), "two different methods"),
])
def test_bad_input(args, message):
    with pytest.raises(SalientError, match=message):
        compare(table(), *args)


def test_no_pairs_and_bad_by():
    df = table()
    df.loc[df["method"] == "b", "position"] += 1000
    with pytest.raises(SalientError, match="no pairs: methods 'a' and 'b'"):
        compare(df, "a", "b", "insertion_auc")
    with pytest.raises(SalientError, match="--by 'colour': no such column"):
        compare(table(), "a", "b", "insertion_auc", by="colour")


def test_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    with Store(tmp_path / "out", "toy") as st:
        for i in range(12):
            res = []
            for m, gain in (("rise", 0.1), ("dida", 0.0)):
                s = Saliency(rng.random((8, 8)).astype(np.float32), False, m, target=i % 2, label=f"l{i % 2}")
                s.metrics["insertion_auc"] = 0.5 + gain + 0.01 * rng.normal()
                res.append(s)
            st.add(f"item{i}", f"item{i}.png", res, position=i)
    assert main(["compare", str(tmp_path / "out"), "rise", "dida", "--metric", "insertion_auc", "--by", "label"]) == 0
    out = capsys.readouterr().out
    assert "rise vs dida" in out and "greater" in out and "l0" in out and "l1" in out and "(all)" in out
    assert main(["compare", str(tmp_path / "out"), "rise", "borex", "--metric", "insertion_auc"]) == 2
    err = capsys.readouterr().err
    assert "method 'borex' is not in the store" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", str(tmp_path / "out"), "rise", "dida", "--metric", "deletion_auc"]) == 2
    assert "no deletion_auc values for 'rise' or 'dida'" in capsys.readouterr().err  # a column of nulls
