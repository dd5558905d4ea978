"""The viewer's server (salient view OUT) over raw HTTP: what it serves, what it refuses, its JSON
and PNG endpoints, a port in use."""

from __future__ import annotations

import io
import json
import os
import socket
import threading

import numpy as np
import pytest
import report_toys as toys
from PIL import Image as PILImage

from salient import SalientError
from salient.report.store_view import open_store
from salient.report.viewer import make_server, safe_path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three stores (image, video, pyramid), each served on a free port; yields {name: (out, port)}."""
    root = tmp_path_factory.mktemp("viewer")
    (root / "secret.txt").write_text("SECRET outside OUT")
    stores = {"image": toys.image_store(root), "video": toys.video_store(root), "huge": toys.pyramid_store(root)}
    out = stores["image"]
    (out / "notes.txt").write_text("inside OUT")
    os.symlink(root / "secret.txt", out / "link_out.txt")
    servers, got = [], {}
    for name, o in stores.items():
        srv = make_server(o, 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        got[name] = (o, srv.server_address[1])
    yield got
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def raw(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """One GET with ``target`` sent exactly as given (no client-side normalisation of ``..``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("target", [
    "/../secret.txt", "/files/../secret.txt", "/files/../../etc/passwd", "/files/%2e%2e/secret.txt",
    "/files/%2E%2E%2Fsecret.txt", "/files//etc/passwd", "/files/%2Fetc%2Fpasswd", "/files/link_out.txt",
    "/files/./notes.txt", "/files/..%5Csecret.txt", "/static/../viewer.py", "/static/%2e%2e/viewer.py",
    "/etc/passwd", "http://127.0.0.1/files/notes.txt", "/files/", "/files/results",
])
def test_paths_outside_out_are_404(served, target):
    _, port = served["image"]
    code, _, body = raw(port, target)
    assert code == 404 and b"SECRET" not in body and b"root:" not in body


def test_files_inside_out_are_served(served):
    out, port = served["image"]
    code, headers, body = raw(port, "/files/notes.txt")
    assert code == 200 and body == b"inside OUT"
    part = sorted((out / "results").glob("*.parquet"))[0]
    code, _, body = raw(port, f"/files/results/{part.name}")
    assert code == 200 and body == part.read_bytes()
    assert raw(port, "/static/dida.js")[0] == 200 and raw(port, "/")[0] == 200


def test_safe_path_rules(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    assert safe_path(tmp_path, "a/f.txt") == (tmp_path / "a" / "f.txt").resolve()
    for bad in ("../a/f.txt", "/etc/passwd", "a/../a/f.txt", "a\\f.txt", "a/f.txt\x00", "a", "C:/x", ""):
        assert safe_path(tmp_path, bad) is None


def test_bound_to_localhost_by_default(served, tmp_path):
    from salient.cli import build_parser

    args = build_parser().parse_args(["view", "x"])
    assert args.host == "127.0.0.1" and args.port == 8765
    srv = make_server(served["image"][0], 0)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.server_close()


def test_port_in_use_is_one_line_with_a_free_port(served):
    out, port = served["image"]  # that port is held by the fixture's server
    with pytest.raises(SalientError) as e:
        make_server(out, port)
    msg = str(e.value)
    assert "\n" not in msg and f"port {port}" in msg and "in use" in msg
    alt = int(msg.rsplit("--port ", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", alt))  # the suggested port is free


def get_json(port: int, target: str):
    code, _, body = raw(port, target)
    assert code == 200, body
    return json.loads(body)


def test_table_filters_sorts_and_pages_like_pandas(served):
    out, port = served["image"]
    df = open_store(out).df
    got = get_json(port, "/api/table?method=dida&sort=insertion_auc&desc=1&limit=3&offset=1")
    want = df[df["method"] == "dida"].sort_values("insertion_auc", ascending=False, kind="stable")
    assert got["total"] == len(want)
    assert [r["row"] for r in got["rows"]] == want["row"].iloc[1:4].tolist()
    got = get_json(port, "/api/table?status=error")
    assert {r["item_id"] for r in got["rows"]} == {"broken.png"} and got["total"] == 2
    got = get_json(port, "/api/table?label=dog&limit=1000")
    assert got["total"] == int((df["true_label"] == "dog").sum()) > 0
    assert all(r["true_label"] == "dog" for r in got["rows"])
    s = get_json(port, "/api/summary")
    assert s["methods"] == ["dida", "rise"] and s["metrics"] == ["insertion_auc", "deletion_auc"]


def png(body: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(body)).convert("RGB"))


def test_map_endpoint_renders_from_the_store(served):
    out, port = served["image"]
    item = get_json(port, "/api/item?position=2")
    assert item["photo"] and {r["method"] for r in item["rows"]} == {"dida", "rise"}
    dida = [r for r in item["rows"] if r["method"] == "dida"]
    assert [r["target"] for r in dida] == [0, 1] and all(r["diverging"] for r in dida)
    code, _, body = raw(port, f"/api/map?row={dida[0]['row']}&alpha=0&side=32")
    assert code == 200
    view = open_store(out)
    from salient.report.render import render_row

    want = render_row(view, view.row(dida[0]["row"]), alpha=0.0, max_side=32, photo=False).rgb
    np.testing.assert_array_equal(png(body), want)
    assert raw(port, "/api/map?row=999999")[0] == 404
    err = [r for r in get_json(port, "/api/item?position=6")["rows"]]
    code, _, body = raw(port, f"/api/map?row={err[0]['row']}")
    assert code == 404 and b"not a readable image" in body


def test_video_frames_and_pyramid_levels_over_http(served):
    _, port = served["video"]
    item = get_json(port, "/api/item?position=0")
    assert all(r["frames"] == 5 for r in item["rows"])
    row = item["rows"][0]["row"]
    bodies = []
    for t in range(5):
        code, headers, body = raw(port, f"/api/map?row={row}&alpha=0&t={t}")
        assert code == 200 and headers["X-Salient-Frame"] == str(t)
        bodies.append(body)
    assert len(set(bodies)) == 5  # every frame differs
    _, port = served["huge"]
    item = get_json(port, "/api/item?position=1")
    r = item["rows"][0]
    assert r["pyramid"]["shapes"] == [[512, 640], [256, 320], [128, 160], [64, 80]] and not item["photo"]
    levels = {}
    for region, size in (((0, 0, 512, 640), (64, 80)), ((0, 0, 512, 640), (256, 320)), ((0, 0, 64, 80), (256, 320))):
        q = "&".join(f"{k}={v}" for k, v in zip(("y0", "x0", "y1", "x1", "h", "w"), (*region, *size), strict=True))
        code, headers, body = raw(port, f"/api/map?row={r['row']}&alpha=0&{q}")
        assert code == 200 and png(body).shape[:2] == size
        levels[(region, size)] = int(headers["X-Salient-Level"])
    assert list(levels.values()) == [3, 1, 0]


def test_view_cli_port_in_use_is_one_line_exit_2(served, capsys):
    from salient import cli

    out, port = served["image"]
    rc = cli.main(["view", str(out), "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "in use" in err and "try --port" in err


def test_empty_store_is_served_and_says_what_is_missing(tmp_path):
    import zarr

    from salient.store import ZARR_NAME

    out = tmp_path / "empty"
    zarr.open_group(out / ZARR_NAME, mode="w", zarr_format=3).attrs.update({"model": "toy"})
    srv = make_server(out, 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        s = get_json(port, "/api/summary")
        assert s["rows"] == 0 and any("no results yet" in m for m in s["missing"])
        assert get_json(port, "/api/table")["total"] == 0
        assert raw(port, "/api/item?position=0")[0] == 404
    finally:
        srv.shutdown()
        srv.server_close()
