"""The PNG of a bench run: forward passes/s per case and worker count (bars with their min-max spread, a black
mark at the paired raw rate), and the scaling efficiency per case (raw dashed) against the worker count."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def plot_results(df: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Write the figure (matplotlib, Agg) to ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = len(set(zip(df["input"], df["size"], strict=True))) == 1  # a single input: label by method alone
    df = df.assign(label=[c if one else f"{c}\n{i} {s}" for c, i, s in zip(df["case"], df["input"], df["size"],
                                                                          strict=True)])
    engine = df[df["case"] != "raw"]
    labels = list(dict.fromkeys(engine["label"]))
    counts = [int(n) for n in sorted(df["workers"].unique())]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(1, len(counts))
    for j, n in enumerate(counts):
        at = engine[engine["workers"] == n].set_index("label").reindex(labels)
        xs = [i + (j - (len(counts) - 1) / 2) * width for i in range(len(labels))]
        err = [(at["rate"] - at["rate_min"]).fillna(0), (at["rate_max"] - at["rate"]).fillna(0)]
        ax.bar(xs, at["rate"].fillna(0), width, yerr=err, capsize=2, label=f"{n} worker{'s' * (n != 1)}")
        ax.plot(xs, at["raw_rate"], ls="none", marker="_", ms=14, mew=2, color="black")  # its paired raw rate
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    positive = df["rate"][df["rate"] > 0]
    if len(positive) and positive.max() / positive.min() > 50:  # cases far apart (e.g. a huge image): log scale
        ax.set_yscale("log")
    ax.set_ylabel("forward passes / s (median of rounds; black: raw)")
    ax.legend(fontsize=8)
    for label in [*dict.fromkeys(df[df["case"] == "raw"]["label"]), *labels]:
        sub = df[df["label"] == label].sort_values("workers")
        ax2.plot(sub["workers"], sub["efficiency"], marker="o", ls="--" if label.startswith("raw") else "-",
                 label=label.replace("\n", " "))
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_xlabel("workers")
    ax2.set_ylabel("scaling efficiency rate(n) / (n rate(1))")
    ax2.set_xticks(counts)
    ax2.set_ylim(0, max(1.1, float(df["efficiency"].max()) * 1.05))
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
