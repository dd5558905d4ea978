"""The static report (salient report OUT) and the store reader under it: what it shows, what it
refuses, what it does with partial stores, pyramids, video maps and 100,000 rows."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import report_toys as toys
from PIL import Image as PILImage

from salient import SalientError, cli
from salient.report.gallery import choose
from salient.report.html import SECTIONS, build_report, register_section, write_report
from salient.report.page import ReportContext
from salient.report.render import colour, render_row
from salient.report.store_view import MapMissing, open_store
from salient.store import ZARR_NAME, item_key


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("img", "script", "link") and (a.get("src") or a.get("href")):
            self.imgs.append(a.get("src") or a.get("href"))


def parse(page: Path) -> Links:
    p = Links()
    p.feed(page.read_text())
    return p


def resolve_all(index: Path) -> tuple[set[Path], int]:
    """Follow every relative link and image from ``index`` through the report's pages: every one must
    be a file; no URL with a scheme or an absolute path. Returns the pages and images seen."""
    pages, todo, images = set(), [index], set()
    while todo:
        page = todo.pop()
        if page in pages:
            continue
        pages.add(page)
        found = parse(page)
        for url in found.links + found.imgs:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc and not url.startswith("/"), f"{page.name}: external {url}"
            if not parts.path:
                continue  # an anchor
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_file(), f"{page.name}: broken link {url}"
            if target.suffix == ".html":
                todo.append(target)
            elif url in found.imgs:
                images.add(target)
    return pages, len(images)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {"image": toys.image_store(root), "video": toys.video_store(root), "huge": toys.pyramid_store(root),
            "root": root}


def test_report_sections_links_and_images_resolve(stores):
    out = stores["image"]
    (out / "clusters").mkdir(exist_ok=True)
    PILImage.new("RGB", (20, 10), "red").save(out / "clusters" / "centroids.png")
    index = build_report(out)
    assert index == out / "report" / "index.html"
    text = index.read_text()
    for section in ("id=job", "id=methods", "id=paired", "id=clusters", "id=gallery"):
        assert section in text
    assert "toy" in text and "not a readable image" in text  # model, errors
    assert "forward passes/s" in text and ">insertion_auc<" in text and ">deletion_auc<" in text
    pages, n_images = resolve_all(index)
    assert n_images >= 10 and len(pages) >= 2
    assert "../clusters/centroids.png" in text
    assert not re.search(r"(src|href)=\"(https?:)?//", "".join(p.read_text() for p in pages))


def test_report_counts_and_rate_are_the_tables(stores):
    text = build_report(stores["image"]).read_text()
    df = open_store(stores["image"]).df
    per_item = df.drop_duplicates(["position", "method"])
    n_fwd, secs = int(per_item["n_forward"].sum()), float(per_item["seconds"].sum())
    assert f"<td>forward passes</td><td>{n_fwd}</td>" in text
    assert f"<td>forward passes/s</td><td>{n_fwd / secs:.4g}</td>" in text
    assert f"<td>error rows</td><td>{int((df['status'] == 'error').sum())}</td>" in text


def test_paired_comparison_matches_scipy(stores):
    from scipy.stats import wilcoxon

    from salient.report.sections import paired

    df = open_store(stores["image"]).df
    ok = df[df["status"] == "ok"]
    # rise explains target 0 of every item, dida targets 0 and 1: the pairs are (item, target 0)
    a = ok[(ok["method"] == "dida") & (ok["target"] == 0)].set_index("position")["deletion_auc"]
    b = ok[(ok["method"] == "rise")].set_index("position")["deletion_auc"]
    d = (a - b).dropna().to_numpy()
    got = paired(df, "dida", "rise", "deletion_auc").iloc[0]
    assert got["n"] == len(d) == 6 and got["alternative"] == "less"
    assert got["wins"] == (d < 0).sum() and got["losses"] == (d > 0).sum()  # lower deletion is better
    assert got["p"] == pytest.approx(wilcoxon(d, alternative="less").pvalue)
    text = build_report(stores["image"]).read_text()
    assert f"<td>{got['p']:.4g}</td>" in text
    assert paired(df.assign(method=df["method"].where(df["target"] != 0, "x")), "dida", "rise", "insertion_auc").empty


def test_new_metric_columns_appear_when_present(stores, tmp_path):
    """A metric registered later (object_share) shows in the method table once rows hold values."""
    from salient.methods.metric import METRICS, register_metric

    @register_metric("object_share")
    def _share(item, size, saliency, target):  # pragma: no cover - never driven here
        yield []
        return 0.0

    try:
        out = toys.image_store(tmp_path, n=3)
        assert "object_share" not in open_store(out).metric_columns  # no values: left out
        import pyarrow.parquet as pq

        for part in (out / "results").glob("part-*.parquet"):
            t = pq.read_table(part).to_pandas()
            t["object_share"] = np.linspace(0.1, 0.9, len(t))
            pq.write_table(__import__("pyarrow").Table.from_pandas(t, preserve_index=False), part)
        text = build_report(out).read_text()
        assert ">object_share<" in text and (out / "report" / "assets" / "hist_object_share.png").is_file()
    finally:
        METRICS.pop("object_share", None)


def test_sections_are_a_list_other_issues_extend(stores):
    def audit(ctx: ReportContext):
        return "<h2 id=audit>Audit</h2>" if ctx.view.df["status"].eq("error").any() else None

    register_section(audit, before=SECTIONS[-1])
    try:
        text = build_report(stores["image"]).read_text()
        assert text.index("id=audit") < text.index("id=gallery")
        assert "id=audit" not in build_report(stores["video"]).read_text()  # no data: left out
    finally:
        SECTIONS.remove(audit)


def test_colour_rules_per_map(stores):
    view = open_store(stores["image"])
    dida = view.df[(view.df["method"] == "dida") & (view.df["status"] == "ok")].iloc[0]
    rise = view.df[(view.df["method"] == "rise") & (view.df["status"] == "ok")].iloc[0]
    assert view.diverging(dida) and not view.diverging(rise)
    d = render_row(view, dida, alpha=0.0, photo=False).rgb
    m = view.map_of(dida)
    big = PILImage.fromarray(d).resize(m.shape[::-1], PILImage.Resampling.NEAREST)
    small = np.asarray(big)
    assert (small[m > 0.2][:, 2] == 0).all() and (small[m < -0.2][:, 0] == 0).all()  # red +, blue −
    np.testing.assert_array_equal(colour(np.zeros((2, 2)), True), 0)  # zero is black
    u = colour(view.map_of(rise), False)
    assert u.shape == (32, 32, 3) and u.max() > 0.9  # relative: the maximum is the brightest


def test_gallery_is_bounded_and_paginated_for_100k_rows(tmp_path):
    out = toys.large_store(tmp_path, n=100_000, labels=300)
    index = build_report(out)
    text = index.read_text()
    pages = sorted((out / "report").glob("gallery-*.html"))
    assert len(pages) > 1 and all(f'href="{p.name}"' in text for p in pages)
    view = open_store(out)
    entries = choose(ReportContext(view, out / "report"))
    assert 100 < len(entries) <= 2 * 6 * 2 + 2 * 100 + 6  # best/worst per metric + labels, never every item
    pngs = list((out / "report" / "assets" / "items").glob("*.png"))
    assert len(pngs) == 2 * len(entries)  # an overlay and a panel per entry, nothing else
    best = [e for e in entries if e.why.startswith("best insertion_auc")]
    top = view.df.sort_values("insertion_auc", ascending=False).head(6)["position"].tolist()
    assert [e.position for e in best] == top
    worst_del = [e.position for e in entries if e.why.startswith("worst deletion_auc")]
    assert worst_del == view.df.sort_values("deletion_auc", ascending=False).head(6)["position"].tolist()


def test_video_maps_show_their_mean_and_render_frames(stores):
    view = open_store(stores["video"])
    odd = view.df[view.df["index"] < 0]
    assert len(odd) == 3  # the larger item's maps live at items/<key>/<method>
    for row in (view.df.iloc[0], odd.iloc[0]):
        assert view.frames(row) == 5 and view.dims(row) == ("t", "y", "x")
        frames = [render_row(view, row, alpha=0.0, t=t, photo=False) for t in range(5)]
        assert [f.frame for f in frames] == list(range(5))
        # the blob moves left to right: the brightest column of each frame moves right
        cols = [int(np.argmax(f.rgb.astype(int).sum(axis=(0, 2)))) for f in frames]
        assert cols == sorted(cols) and cols[0] < cols[-1]
    index = build_report(stores["video"])
    anim = index.parent / "assets" / "items" / "0_rise3d_0_frames.png"
    assert 'href="assets/items/0_rise3d_0_frames.png"' in index.read_text()
    row = view.df[(view.df["position"] == 0) & (view.df["method"] == "rise3d")].iloc[0]
    from salient.report.gallery import THUMB_SIDE
    from salient.report.render import photo_of

    photo = photo_of(row, THUMB_SIDE)
    with PILImage.open(anim) as im:
        assert im.n_frames == 5
        for t in range(5):
            im.seek(t)
            want = render_row(view, row, t=t, max_side=THUMB_SIDE, photo=photo).rgb
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), want)


def test_pyramid_levels_fit_the_view(stores):
    view = open_store(stores["huge"])
    row = view.df[view.df["item_id"] == "huge.tif"].iloc[0]
    pyr = view.pyramid(row)
    assert pyr.shapes == [(512, 640), (256, 320), (128, 160), (64, 80)]
    assert pyr.choose(512, 640, 64, 80) == 3  # the whole image in 64 x 80: the coarsest level
    assert pyr.choose(512, 640, 256, 320) == 1
    assert pyr.choose(64, 80, 256, 320) == 0  # zoomed in beyond full resolution: level 0
    m, lvl = pyr.read(0, 320, 256, 640, 128, 160)  # the right half of the top: level 1 at 128 x 160
    assert lvl == 1 and m.shape == (128, 160) and m.min() >= 100  # level 1 holds 100 + the blob
    np.testing.assert_array_equal(m, np.asarray(pyr.level(1)[0:128, 160:320]))
    r = render_row(view, row, max_side=256)  # the report: the coarsest level at least 256 a side
    assert r.level == 1 and max(r.rgb.shape[:2]) == 320 // 1 * 256 // 320
    build_report(stores["huge"])
    assert (stores["huge"] / "report" / "assets" / "items" / "1_mosaic_0.png").is_file()


# -- bad input
def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_not_a_store_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    for target in (tmp_path / "photos", tmp_path / "nope"):
        rc, out, err = run(["report", target], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and str(target) in err
        assert "not a salient store" in err or "no such folder" in err
        assert not (target / "report").exists()
        rc, _, err = run(["view", target, "--port", "0"], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1


def test_empty_store_reports_what_is_missing(tmp_path, capsys):
    import zarr

    out = tmp_path / "empty"
    zarr.open_group(out / ZARR_NAME, mode="w", zarr_format=3).attrs.update({"model": "toy", "complete": False})
    rc, printed, err = run(["report", out], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no results yet" in err
    text = (out / "report" / "index.html").read_text()
    assert "Missing from this store" in text and "no results yet" in text and "not complete" in text


def test_partly_written_store_reports_what_is_there(stores, tmp_path, capsys):
    out = tmp_path / "partial"
    shutil.copytree(stores["image"], out)
    parts = sorted((out / "results").glob("part-*.parquet"))
    import pyarrow.parquet as pq

    t = pq.read_table(parts[0])
    pq.write_table(t.slice(0, 6), parts[0])  # some rows written
    bad = out / "results" / "part-r0009-000001-deadbeef.parquet"
    bad.write_bytes(parts[0].read_bytes()[:100])  # a torn part
    _, missing = write_report(out)
    assert any(str(bad) in m for m in missing)
    rc, printed, err = run(["report", out], capsys)
    assert rc == 2 and "incomplete" in err and len(err.strip().splitlines()) == 1
    text = (out / "report" / "index.html").read_text()
    assert "Missing from this store" in text and "p0.png" in text  # what is there is shown


def test_rows_pointing_to_missing_arrays_say_so(stores, tmp_path):
    out = tmp_path / "lost"
    shutil.copytree(stores["image"], out)
    shutil.rmtree(out / ZARR_NAME / "maps" / "rise")  # every rise row now points nowhere
    view = open_store(out)
    row = view.df[(view.df["method"] == "rise") & (view.df["status"] == "ok")].iloc[0]
    with pytest.raises(MapMissing, match="missing"):
        view.map_of(row)
    index = build_report(out)
    pages = "".join(p.read_text() for p in (out / "report").glob("*.html"))
    assert "p0.png [rise]: its map array maps/rise is missing" in pages
    items = {p.name for p in (out / "report" / "assets" / "items").iterdir()}
    assert any("_dida_" in n for n in items) and not any(n.endswith("_rise_0.png") for n in items)
    resolve_all(index)


def test_an_odd_size_map_that_is_gone_says_so(stores, tmp_path):
    out = tmp_path / "huge2"
    shutil.copytree(stores["huge"], out)
    shutil.rmtree(out / ZARR_NAME / "items" / item_key("huge.tif"))
    view = open_store(out)
    with pytest.raises(MapMissing, match="missing"):
        view.map_of(view.df[view.df["item_id"] == "huge.tif"].iloc[0])


def test_read_only_on_the_store(stores):
    """Building a report writes under OUT/report/ only."""
    out = stores["video"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if "report" not in p.relative_to(out).parts}
    build_report(out)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if "report" not in p.relative_to(out).parts}
    assert before == after


def test_render_refuses_unknown_rows(stores):
    with pytest.raises(SalientError):
        open_store(stores["image"]).row(10**6)


def test_audit_findings_appear_when_present(stores, tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "audited"
    shutil.copytree(stores["image"], out)
    (out / "audit" / "flagged").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"position": [1, 3], "why": ["context", "flip"]})),
                   out / "audit" / "flagged.parquet")
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"variant": ["only_fg"], "accuracy": [0.5]})),
                   out / "audit" / "accuracy.parquet")
    PILImage.new("RGB", (8, 8), "blue").save(out / "audit" / "flagged" / "000001_rise.png")
    view = open_store(out)
    assert sorted(view.df.loc[view.df["flagged"], "position"].unique()) == [1, 3]
    text = build_report(out).read_text()
    assert "id=audit" in text and "only_fg" in text and "../audit/flagged/000001_rise.png" in text
    resolve_all(out / "report" / "index.html")
    assert "id=audit" not in build_report(stores["video"]).read_text()


def test_demo_writes_and_prints_its_report(tmp_path):
    from job_toys import OPTIONS

    from salient.jobs.demo import run_demo

    lines: list[str] = []
    run_demo(tmp_path / "demo", photos=("chelsea",), methods=[{"name": "rise", "n_masks": 16, "chunk": 16}],
             model={"name": "job_toys:linear", **OPTIONS}, step=256, batch_size=8, progress=False, echo=lines.append)
    index = tmp_path / "demo" / "report" / "index.html"
    assert f"demo: report {index}" in lines and index.is_file()
    assert "chelsea" in "".join(p.read_text() for p in index.parent.glob("*.html"))
    resolve_all(index)
