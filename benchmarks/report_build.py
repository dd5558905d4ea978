"""What ``salient report`` costs on a large store: build time and size of OUT/report/.

Writes a synthetic store of ``--rows`` rows (one method, insertion/deletion AUCs, ``--labels`` true
labels, 8 x 8 maps; the items' sources cycle over the bundled sample photos (scikit-image's), so the
gallery's PNGs have a realistic size; ``--no-photos``: maps alone) and times
:func:`salient.report.html.build_report`. The gallery is bounded (best/worst per metric, a sample
per label), so time and size stay flat as rows grow; the table read and the per-method statistics
are what scales with the rows.

    python benchmarks/report_build.py                 # 100,000 rows, 300 labels
    python benchmarks/report_build.py --rows 1000000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import report_toys  # noqa: E402

from salient.report.html import build_report  # noqa: E402


def size_of(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def write_photos(folder: Path) -> list[Path]:
    from salient.data import sample_images
    from salient.report.overlay import save_png, to_uint8

    return [save_png(folder / f"{im.name}.png", to_uint8(im.pixels)) for im in sample_images()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--no-photos", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="salient-report-bench-"))
    try:
        photos = [] if args.no_photos else write_photos(root / "photos")
        t0 = time.perf_counter()
        out = report_toys.large_store(root, n=args.rows, labels=args.labels, photos=photos)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = build_report(out)
        t_build = time.perf_counter() - t0
        n_files, n_bytes = size_of(index.parent)
        pages = len(list(index.parent.glob("gallery-*.html")))
        print(f"{'rows':>10} {'labels':>7} {'write s':>8} {'report s':>9} {'files':>6} {'MB':>7} {'pages':>6}")
        print(f"{args.rows:>10} {args.labels:>7} {t_write:>8.1f} {t_build:>9.2f} {n_files:>6} {n_bytes / 1e6:>7.2f} "
              f"{pages:>6}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
