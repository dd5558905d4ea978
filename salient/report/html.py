"""``salient report OUT``: a static HTML report of any store, ``OUT/report/index.html``.

The report is a list of sections (:data:`SECTIONS`), each ``fn(ctx) -> HTML | None``
(:mod:`salient.report.page`): None when the store lacks that section's data, so a section for a
new kind of result is one function plus :func:`register_section`. Today: the job, the methods
(tables and metric distributions), paired comparisons, the audit's findings, clusters, the gallery (bounded and
paginated, :mod:`salient.report.gallery`). Everything lives under ``OUT/report/`` (PNG assets,
pages), links are relative and nothing is fetched from elsewhere, so it opens from the file system.
An empty or partly written store gets a report of what is there and a box saying what is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .gallery import gallery_section
from .page import ReportContext, esc, page
from .sections import (
    audit_section,
    clusters_section,
    inspect_section,
    job_section,
    methods_section,
    paired_section,
)
from .store_view import open_store

Section = Callable[[ReportContext], "str | None"]
SECTIONS: list[Section] = [job_section, methods_section, paired_section, audit_section, inspect_section,
                           clusters_section, gallery_section]
REPORT_DIR = "report"


def register_section(fn: Section, before: Section | None = None) -> Section:
    """Add a section (at the end, or before another one)."""
    if fn not in SECTIONS:
        SECTIONS.insert(SECTIONS.index(before) if before in SECTIONS else len(SECTIONS), fn)
    return fn


def build_report(out: str | os.PathLike, **options) -> Path:
    """Write ``OUT/report/index.html`` and its assets (replacing an earlier report); returns its path.
    ``options``: gallery_n, per_label, max_labels, page_size (:mod:`salient.report.gallery`)."""
    return write_report(out, **options)[0]


def write_report(out: str | os.PathLike, **options) -> tuple[Path, list[str]]:
    """:func:`build_report`, also returning what the store lacks (empty for a whole store)."""
    view = open_store(out)
    dest = Path(out) / REPORT_DIR
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ctx = ReportContext(view, dest, options)
    parts = [s for s in (fn(ctx) for fn in SECTIONS) if s]
    title = f"salient report: {view.out.name or view.out}"
    body = (f"<h1>{esc(title)}</h1><p>model {esc(view.attrs.get('model', '?'))}; open the interactive viewer "
            f"with <code>salient view {esc(str(view.out))}</code></p>" + "\n".join(parts))
    index = dest / "index.html"
    index.write_text(page(title, body))
    return index, view.missing
