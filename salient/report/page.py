"""The static report's building blocks: the context every section gets, and HTML helpers.

A section is ``fn(ctx: ReportContext) -> str | None``: HTML for its part of ``index.html``, or None
when the store lacks its data (then it is left out). It may write assets under ``ctx.assets`` and
extra pages under ``ctx.dest`` and link them with ``ctx.rel(path)`` (relative links only: the
report opens from the file system and from the viewer's server alike).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store_view import StoreView

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.missing{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}
.err{color:#a00}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;padding:4px;width:230px;font-size:12px}.card img{width:100%;display:block}
.plots img{max-width:420px;margin:4px}nav a{margin-right:.6em}pre{background:#f8f8f8;padding:.5em;overflow:auto}
"""


@dataclass
class ReportContext:
    """What a section reads: the store (``view``: attrs, table, maps) and where the report goes."""

    view: StoreView
    dest: Path  # OUT/report
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def assets(self) -> Path:
        p = self.dest / "assets"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def rel(self, path: Path, start: Path | None = None) -> str:
        """``path`` as a relative URL from the page in ``start`` (default the report folder)."""
        import os

        return Path(os.path.relpath(Path(path).resolve(), (start or self.dest).resolve())).as_posix()


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def fmt(v: Any) -> str:
    """A cell: floats with 4 significant digits, NaN/None as '-'."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return esc(v)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells are formatted with :func:`fmt` unless they are already markup (:class:`Raw`)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else fmt(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


class Raw(str):
    """Markup that :func:`table` must not escape."""


def page(title: str, body: str) -> str:
    """A whole HTML document: inline style, no external resources."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
