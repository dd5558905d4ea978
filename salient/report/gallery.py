"""The report's gallery: a bounded choice of (item, method) entries, never every item, paginated.

Choice (:func:`choose`): per method and per metric column with values, the best ``n`` and the
worst ``n`` rows by that metric (in the registered metric's direction; higher is better without
one); then per ``true_label`` (at most ``max_labels`` labels, those with most rows first) a seeded
sample of ``per_label`` items; the first ``n`` items the audit flagged; without metrics or labels, a
seeded sample of ``n`` items per method; the first ``n`` error rows. Entries repeat nowhere (the
first reason wins). At most ``(2·n·metrics + 3·n)·methods + per_label·max_labels`` entries whatever
the store's size, so a 100,000-row store's report is as small as a 1,000-row one's.

Each entry writes PNGs for its own rows only: one overlay per target (``assets/items/``) and a
DiDA-View panel (the photo, when readable, and each overlay, titled), as 256-colour PNGs. A row
whose map is missing says so in its card; the rest render. A video map (T, H, W) shows its mean over
t and links an animated PNG of its frames (:func:`_animation`). Pages of ``page_size`` cards:
``gallery-001.html``, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .page import ReportContext, esc, fmt, page
from .panel import strip
from .render import photo_of, render_row
from .store_view import MapMissing, as_int

GALLERY_N = 6
PER_LABEL = 2
MAX_LABELS = 100
PAGE_SIZE = 48
THUMB_SIDE = 192
MAX_FRAMES = 32
FRAME_MS = 200


@dataclass
class Entry:
    position: int
    method: str
    why: str


def save_small_png(path: Path, rgb: np.ndarray) -> Path:
    """A display PNG, quantised to 256 colours (fast octree): about a third of the RGB file's size;
    the viewer renders the full colours from the store."""
    from PIL import Image as PILImage

    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.ascontiguousarray(rgb)).quantize(256, method=PILImage.Quantize.FASTOCTREE).save(path)
    return path


def lower_is_better(column: str) -> bool:
    """The registered metric's direction (``higher_is_better`` False); unknown columns: higher is better."""
    from ..methods.metric import metric_for_column

    m = metric_for_column(column)
    return m is not None and m.higher_is_better is False


def choose(ctx: ReportContext) -> list[Entry]:
    """The gallery's entries (see the module docstring)."""
    v, df = ctx.view, ctx.view.df
    n = int(ctx.options.get("gallery_n", GALLERY_N))
    per_label = int(ctx.options.get("per_label", PER_LABEL))
    max_labels = int(ctx.options.get("max_labels", MAX_LABELS))
    rng = np.random.default_rng(0)
    seen: set[tuple[int, str]] = set()
    out: list[Entry] = []

    def add(pos: Any, method: str, why: str) -> None:
        key = (int(pos), str(method))
        if key not in seen:
            seen.add(key)
            out.append(Entry(*key, why))

    ok = df[df["status"] == "ok"]
    top = ok[ok["rank"].fillna(0) == 0]
    for m in v.methods:
        g = top[top["method"] == m]
        for c in v.metric_columns:
            s = g[g[c].notna()].sort_values(c, kind="stable")
            best, worst = (s.head(n), s.tail(n)[::-1]) if lower_is_better(c) else (s.tail(n)[::-1], s.head(n))
            for i, p in enumerate(best["position"]):
                add(p, m, f"best {c} #{i + 1}")
            for i, p in enumerate(worst["position"]):
                add(p, m, f"worst {c} #{i + 1}")
    labelled = top[top["true_label"].notna()] if "true_label" in top else top.iloc[:0]
    if len(labelled):
        counts = labelled["true_label"].value_counts(sort=True)
        for lab in counts.index[:max_labels]:
            g = labelled[labelled["true_label"] == lab].drop_duplicates("position")
            pick = g.iloc[np.sort(rng.choice(len(g), size=min(per_label, len(g)), replace=False))]
            for p, m in zip(pick["position"], pick["method"], strict=True):
                add(p, m, f"true label {lab}")
    if "flagged" in top:  # items salient audit flagged
        g = top[top["flagged"]].drop_duplicates("position").head(n)
        for p, m in zip(g["position"], g["method"], strict=True):
            add(p, m, "flagged by the audit")
    if not v.metric_columns and not len(labelled):
        for m in v.methods:
            g = top[top["method"] == m].drop_duplicates("position")
            pick = g.iloc[np.sort(rng.choice(len(g), size=min(n, len(g)), replace=False))] if len(g) else g
            for p in pick["position"]:
                add(p, m, "sample")
    errors = df[df["status"] != "ok"].drop_duplicates(["position", "method"]).head(n)
    for p, m in zip(errors["position"], errors["method"], strict=True):
        add(p, m, "error")
    return out


def _card(ctx: ReportContext, e: Entry) -> str:
    """One entry's card; writes its overlays and panel."""
    v = ctx.view
    rows = v.item_rows(e.position, e.method)
    first = rows.iloc[0]
    head = (f"<b>{esc(first['item_id'])}</b><br>{esc(e.method)} · {esc(e.why)}"
            + (f"<br>true label: {esc(first['true_label'])}" if isinstance(first.get("true_label"), str) else ""))
    ok = rows[rows["status"] == "ok"]
    if not len(ok):
        return f'<div class="card">{head}<p class="err">{esc(first["error"] or first["status"])}</p></div>'
    folder = ctx.assets / "items"
    folder.mkdir(exist_ok=True)
    photo = photo_of(ok.iloc[0], THUMB_SIDE, v)
    tiles, links, notes, written = ([(photo, str(first["item_id"]))] if photo is not None else []), [], [], []
    for _, r in ok.iterrows():
        try:
            img = render_row(v, r, max_side=THUMB_SIDE, photo=photo if photo is not None else False).rgb
            stem = f"{e.position}_{e.method}_{as_int(r['rank'])}"
            anim = _animation(v, r, photo, folder / f"{stem}_frames.png")
            plot = _score_over_time(v, r, folder / f"{stem}_score.png")
        except MapMissing as err:
            notes.append(str(err))
            continue
        title = f"{r['label'] or r['target']} ({as_int(r['target'])})  {fmt(r['base_score'])}"
        path = save_small_png(folder / f"{stem}.png", img)
        written.append(path)
        tiles.append((img, title))
        metrics = " ".join(f"{c}={fmt(r[c])}" for c in v.metric_columns if r[c] == r[c])
        links.append(f'<a href="{esc(ctx.rel(path))}">{esc(title)}</a> {esc(metrics)}'
                     + (f' <a href="{esc(ctx.rel(anim))}">frames</a>' if anim else "")
                     + (f' <a href="{esc(ctx.rel(plot))}">score over time</a>' if plot else ""))
    body = head + "".join(f'<p class="err">{esc(n)}</p>' for n in notes)
    if written:
        panel_path = save_small_png(folder / f"{e.position}_{e.method}_panel.png", strip(tiles, tile_height=128))
        body = (f'<a href="{esc(ctx.rel(panel_path))}"><img src="{esc(ctx.rel(written[0]))}" alt="overlay"></a>'
                + body + f'<br><a href="{esc(ctx.rel(panel_path))}">panel</a>')
    return f'<div class="card">{body}<br>{"<br>".join(links)}</div>'


def _animation(view: Any, row: Any, photo: np.ndarray | None, path: Path) -> Path | None:
    """A video map's overlay frame by frame as an animated PNG (at most MAX_FRAMES frames, evenly
    spaced; ``FRAME_MS`` each), or None for an image map. Plays from the file system in any browser."""
    from PIL import Image as PILImage

    t = view.frames(row)
    if t <= 1:
        return None
    keep = np.unique(np.linspace(0, t - 1, min(t, MAX_FRAMES)).round().astype(int))
    frames = [PILImage.fromarray(render_row(view, row, t=int(k), max_side=THUMB_SIDE,
                                            photo=photo if photo is not None else False).rgb) for k in keep]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0)
    return path


def _score_over_time(view: Any, row: Any, path: Path) -> Path | None:
    """A long video's target score per clip over time (``items/<key>/score``, clips x classes, with the
    clips' centre times in its attrs: :mod:`salient.jobs.video_job`) as a PNG, or None for other rows."""
    from ..store import item_key

    if as_int(row.get("clips"), 0) < 1:
        return None
    try:
        arr = view.root[f"items/{item_key(str(row['item_id']))}/score"]
        times = np.asarray(arr.attrs["times"], dtype=np.float64)
        scores = np.asarray(arr[:, as_int(row["target"])], dtype=np.float64)
    except Exception:  # noqa: BLE001 - absent or damaged: the card goes without it
        return None
    from .video_outputs import score_plot

    return score_plot(path, times, scores, str(row["label"]))


def gallery_section(ctx: ReportContext) -> str | None:
    """The gallery: the first page inline, every page as ``gallery-NNN.html`` with links between."""
    entries = choose(ctx)
    if not entries:
        return None
    size = int(ctx.options.get("page_size", PAGE_SIZE))
    pages = [entries[i:i + size] for i in range(0, len(entries), size)]
    names = [f"gallery-{k + 1:03d}.html" for k in range(len(pages))]
    nav = "<nav>pages: " + "".join(f'<a href="{n}">{k + 1}</a>' for k, n in enumerate(names)) + "</nav>"
    first = ""
    for k, (entries_k, name) in enumerate(zip(pages, names, strict=True)):
        cards = '<div class="grid">' + "".join(_card(ctx, e) for e in entries_k) + "</div>"
        links = ('<a href="index.html">report</a> ' + (f'<a href="{names[k - 1]}">previous</a> ' if k else "")
                 + (f'<a href="{names[k + 1]}">next</a>' if k + 1 < len(names) else ""))
        (ctx.dest / name).write_text(page(f"gallery page {k + 1}", f"<h1>Gallery, page {k + 1} of {len(pages)}</h1>"
                                          f"<nav>{links}</nav>{nav}{cards}"))
        if k == 0:
            first = cards
    return (f"<h2 id=gallery>Gallery</h2><p>{len(entries)} entries (best/worst per method and metric, a sample "
            f"per true label, never every item) in {len(pages)} page(s) of {size}.</p>{nav}{first}")
