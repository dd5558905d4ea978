"""``salient view OUT``: a local web viewer of a store, on the standard library's http.server.

Bound to 127.0.0.1 unless ``host`` says otherwise. Routes (GET only; anything else is 404):
- ``/`` the item browser, ``/item?position=P&method=M`` the DiDA-View page of one item, and
  ``/static/<name>`` their files (the package's ``viewer_static/``, by exact name);
- ``/files/<path>`` a file inside OUT (the static report: ``/files/report/index.html``). A path
  with a ``..`` segment, an absolute path, a backslash or NUL, or one that resolves outside OUT
  (a symlink out) is 404: nothing outside OUT is served;
- JSON: ``/api/summary`` (model, methods, metric columns, labels, statuses, what is missing),
  ``/api/table`` (filter by ``method``, ``status``, ``label`` (true label), ``flagged``, ``q``
  (item id substring); ``sort`` by any column, ``desc``; ``offset``, ``limit``: one page of rows),
  ``/api/item?position=P`` (every row of the item: targets, scores, metrics, frames, pyramid levels);
- PNG: ``/api/photo?position=P`` (the item's photo, 404 when it cannot be read) and
  ``/api/map?row=R`` (the row's map rendered from the store with its colour rule,
  :mod:`salient.report.render`; ``alpha`` (0: the map alone), ``t`` (a video frame), ``side``
  (longest side), or ``y0,x0,y1,x1,h,w`` for a region of a pyramid), with headers
  ``X-Salient-Level`` and ``X-Salient-Frame``. A row whose map is missing is 404 with the reason.

A port in use is a one-line SalientError naming a free one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import SalientError
from .render import MAX_SIDE, photo_of, png_bytes, render_row
from .store_view import MapMissing, StoreView, as_int, open_store

STATIC = "viewer_static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
         ".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json", ".txt": "text/plain",
         ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4", ".webm": "video/webm"}
PAGE_LIMIT = 1000
TABLE_COLUMNS = ("row", "position", "item_id", "method", "target", "label", "rank", "base_score", "true_label",
                 "status", "error", "n_forward", "seconds")


def safe_path(root: Path, rel: str) -> Path | None:
    """The file ``rel`` (URL-decoded, relative) inside ``root``, or None: no ``..`` segment, no absolute
    path, no backslash or NUL, and the resolved path (symlinks followed) must lie inside ``root``."""
    if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/") or ":" in rel.split("/")[0]:
        return None
    if any(seg in ("..", ".") for seg in rel.split("/")):
        return None
    base = root.resolve()
    p = (base / rel).resolve()
    if p != base and base not in p.parents:
        return None
    return p if p.is_file() else None


INT_COLUMNS = {"row", "position", "target", "rank", "n_forward"}  # null-able ints that pandas holds as floats


def _cell(column: str, v: Any) -> Any:
    v = _json_value(v)
    return int(v) if column in INT_COLUMNS and isinstance(v, float) else v


def _json_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if hasattr(v, "item"):
        return _json_value(v.item())
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


class Viewer:
    """The store a server shows and what its handlers compute from it."""

    def __init__(self, out: str | os.PathLike):
        self.view: StoreView = open_store(out)
        self.out = self.view.out
        self.lock = threading.Lock()  # zarr reads and matplotlib-free rendering, one at a time

    def summary(self) -> dict[str, Any]:
        v, df = self.view, self.view.df
        labels = sorted(str(x) for x in df["true_label"].dropna().unique()) if len(df) else []
        report = (self.out / "report" / "index.html").is_file()
        return {"store": str(self.out), "model": v.attrs.get("model"), "rows": len(df),
                "items": int(df["position"].nunique()) if len(df) else 0, "methods": v.methods,
                "metrics": v.metric_columns, "labels": labels[:2000],
                "statuses": sorted(str(s) for s in df["status"].dropna().unique()),
                "flagged": "flagged" in df.columns, "missing": v.missing, "report": report}

    def table(self, q: dict[str, str]) -> dict[str, Any]:
        df = self.view.df
        for col, key in (("method", "method"), ("status", "status"), ("true_label", "label")):
            if q.get(key):
                df = df[df[col].astype(str) == q[key]]
        if q.get("flagged") and "flagged" in df.columns:
            df = df[df["flagged"].fillna(False).astype(bool) == (q["flagged"] in ("1", "true", "yes"))]
        if q.get("q"):
            df = df[df["item_id"].astype(str).str.contains(q["q"], regex=False)]
        sort = q.get("sort") or "position"
        if sort in df.columns:
            df = df.sort_values(sort, ascending=q.get("desc") not in ("1", "true"), kind="stable", na_position="last")
        offset = max(0, as_int(q.get("offset"), 0))
        limit = min(PAGE_LIMIT, max(1, as_int(q.get("limit"), 100)))
        cols = [c for c in (*TABLE_COLUMNS, *self.view.metric_columns, "flagged") if c in df.columns]
        page = df.iloc[offset:offset + limit][cols]
        rows = [{c: _cell(c, r[c]) for c in cols} for _, r in page.iterrows()]
        return {"total": len(df), "offset": offset, "limit": limit, "columns": cols, "rows": rows}

    def item(self, position: int) -> dict[str, Any]:
        v = self.view
        rows = v.item_rows(position)
        if not len(rows):
            raise MapMissing(f"no item at position {position}")
        out = []
        for _, r in rows.iterrows():
            d = {c: _cell(c, r[c]) for c in (*TABLE_COLUMNS, *v.metric_columns) if c in r.index}
            d.update(frames=1, pyramid=None, diverging=None, problem=None)
            try:
                with self.lock:
                    d["diverging"] = v.diverging(r)
                    pyr = v.pyramid(r)
                    d["frames"] = v.frames(r)
                    shape = pyr.shapes[0] if pyr else tuple(int(n) for n in v.node(r).shape[-2:])
                d["shape"] = list(shape)
                d["pyramid"] = {"shapes": [list(s) for s in pyr.shapes]} if pyr else None
            except MapMissing as e:
                d["problem"] = str(e)
            out.append(d)
        first = rows.iloc[0]
        photo = photo_of(first, 64, v)
        return {"position": int(position), "item_id": str(first["item_id"]), "source": str(first["source"]),
                "true_label": _json_value(first["true_label"]), "methods": sorted(set(rows["method"])),
                "metrics": v.metric_columns, "rows": out, "photo": photo is not None,
                "photo_shape": None if photo is None else list(photo.shape[:2])}

    def photo(self, position: int, side: int) -> bytes:
        rows = self.view.item_rows(position)
        if not len(rows):
            raise MapMissing(f"no item at position {position}")
        img = photo_of(rows.iloc[0], side, self.view)
        if img is None:
            raise MapMissing(f"{rows.iloc[0]['item_id']}: its photo cannot be read")
        return png_bytes(img)

    def map_png(self, q: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        row = self.view.row(as_int(q.get("row"), -1))
        alpha = min(1.0, max(0.0, float(q.get("alpha", 0.5))))
        side = min(2048, max(8, as_int(q.get("side"), MAX_SIDE)))
        t = None if q.get("t") in (None, "") else as_int(q.get("t"))
        region = size = None
        if all(q.get(k) not in (None, "") for k in ("y0", "x0", "y1", "x1")):
            region = tuple(float(q[k]) for k in ("y0", "x0", "y1", "x1"))
            size = (min(2048, max(1, as_int(q.get("h"), side))), min(2048, max(1, as_int(q.get("w"), side))))
        with self.lock:
            r = render_row(self.view, row, alpha=alpha, t=t, max_side=side, region=region, size=size)
        headers = {"X-Salient-Level": "" if r.level is None else str(r.level),
                   "X-Salient-Frame": "" if r.frame is None else str(r.frame)}
        return png_bytes(r.rgb), headers


class Handler(BaseHTTPRequestHandler):
    viewer: Viewer  # set on the subclass made by make_server
    server_version = "salient-view"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet; the CLI prints the URL
        pass

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any) -> None:
        self._send(200, json.dumps(data).encode(), "application/json")

    def _404(self, why: str = "not found") -> None:
        self._send(404, why.encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802
        self._404()

    def do_GET(self) -> None:  # noqa: N802
        raw = self.path
        if not raw.startswith("/") or "://" in raw:
            return self._404()
        url = urlsplit(raw)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        try:
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path in ("/item", "/item.html"):
                return self._static("item.html")
            if path.startswith("/static/"):
                return self._static(unquote(path[len("/static/"):]))
            if path.startswith("/files/"):
                return self._file(unquote(path[len("/files/"):]))
            v = self.viewer
            if path == "/api/summary":
                return self._json(v.summary())
            if path == "/api/table":
                return self._json(v.table(q))
            if path == "/api/item":
                return self._json(v.item(as_int(q.get("position"), -1)))
            if path == "/api/photo":
                return self._send(200, v.photo(as_int(q.get("position"), -1), as_int(q.get("side"), MAX_SIDE)),
                                  "image/png")
            if path == "/api/map":
                body, headers = v.map_png(q)
                return self._send(200, body, "image/png", headers)
        except MapMissing as e:
            return self._404(str(e))
        except (ValueError, KeyError) as e:
            return self._send(400, f"bad request: {e}".encode(), "text/plain; charset=utf-8")
        return self._404()

    def _static(self, name: str) -> None:
        folder = resources.files("salient.report") / STATIC
        names = {p.name for p in folder.iterdir() if p.is_file()}
        if name not in names:
            return self._404()
        self._send(200, (folder / name).read_bytes(), TYPES.get(Path(name).suffix, "application/octet-stream"))

    def _file(self, rel: str) -> None:
        p = safe_path(self.viewer.out, rel)
        if p is None:
            return self._404()
        self._send(200, p.read_bytes(), TYPES.get(p.suffix.lower(), "application/octet-stream"))


def free_port(host: str, start: int) -> int | None:
    """The first port from ``start`` on (20 tries) that ``host`` can bind, or None."""
    for port in range(start, min(start + 20, 65536)):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    return None


def make_server(out: str | os.PathLike, port: int = 8765, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The viewer's server for ``out`` (not started: call ``serve_forever``). A store that is not one,
    or a port in use, is a one-line SalientError."""
    viewer = Viewer(out)
    handler = type("BoundHandler", (Handler,), {"viewer": viewer})
    ThreadingHTTPServer.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = ThreadingHTTPServer((host, int(port)), handler)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            alt = free_port(host, int(port) + 1)
            hint = f"; try --port {alt}" if alt else ""
            what = "is in use" if e.errno == errno.EADDRINUSE else "cannot be used (permission denied)"
            raise SalientError(f"view: port {port} on {host} {what}{hint}") from None
        raise SalientError(f"view: cannot listen on {host}:{port} ({e.strerror})") from None
    server.daemon_threads = True
    return server


def serve(out: str | os.PathLike, port: int = 8765, host: str = "127.0.0.1", echo: Any = print) -> None:
    """Serve ``out`` until interrupted (Ctrl-C)."""
    server = make_server(out, port, host)
    h, p = server.server_address[:2]
    echo(f"salient view: http://{'[' + h + ']' if ':' in h else h}:{p}/  ({out}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
