// DiDA View: the original beside one overlay per target, a square that follows the mouse at the same
// relative image position in every panel (with a magnified inset), an opacity slider, a method and
// target switcher, a frame slider for video maps (moves every panel) and pan/zoom over the levels of a
// huge image (the server reads the pyramid level that fits the view: /api/map region requests).
"use strict";
const $ = (id) => document.getElementById(id);
const HEIGHT = 256, SQUARE = 32, ZOOM = 4, INSET = 120;
const params = new URLSearchParams(location.search);
const S = { position: Number(params.get("position") || 0), method: params.get("method"), target: "all",
            alpha: 0.5, frame: 0, u: null, v: null, region: null, item: null, width: HEIGHT };

function fmt(v) { return v === null || v === undefined ? "-" : (typeof v === "number" ? v.toPrecision(4) : v); }

function rowsShown() {
  return S.item.rows.filter((r) => r.method === S.method && r.status === "ok" &&
                                   (S.target === "all" || String(r.target) === S.target));
}

function fullShape() {  // (h, w) of the image the panels show
  const r = S.item.rows.find((x) => x.method === S.method && x.shape);
  return r ? (r.pyramid ? r.pyramid.shapes[0] : r.shape) : [HEIGHT, HEIGHT];
}

function mapURL(r) {
  const p = new URLSearchParams({ row: r.row, alpha: 0, side: 512 });
  if (r.frames > 1) p.set("t", S.frame);
  if (r.pyramid) {
    const g = S.region;
    p.set("y0", g.y0); p.set("x0", g.x0); p.set("y1", g.y1); p.set("x1", g.x1);
    p.set("h", HEIGHT); p.set("w", S.width);
  }
  return "/api/map?" + p;
}

async function loadMap(panel, r) {  // fetch so that the level and frame headers reach the DOM
  const res = await fetch(mapURL(r));
  if (!res.ok) { panel.querySelector(".caption").appendChild(line(await res.text(), "err")); return; }
  panel.dataset.level = res.headers.get("X-Salient-Level") || "";
  panel.dataset.frame = res.headers.get("X-Salient-Frame") || "";
  const url = URL.createObjectURL(await res.blob());
  for (const img of panel.querySelectorAll("img.map")) img.src = url;
  panel.dataset.loaded = String(Number(panel.dataset.loaded || 0) + 1);
}

function view(imgs) {  // a .view box with the given image layers and the square, plus its inset
  const box = document.createElement("div");
  box.className = "view";
  box.style.width = S.width + "px";
  box.style.height = HEIGHT + "px";
  const inset = document.createElement("div");
  inset.className = "inset";
  for (const [cls, src, opacity] of imgs) {
    for (const parent of [box, inset]) {
      const img = document.createElement("img");
      img.className = cls;
      img.alt = cls;
      if (src) img.src = src;
      if (opacity !== undefined) img.style.opacity = opacity;
      if (parent === inset) { img.style.width = S.width * ZOOM + "px"; img.style.height = HEIGHT * ZOOM + "px"; }
      parent.appendChild(img);
    }
  }
  const sq = document.createElement("div");
  sq.className = "square";
  sq.style.width = sq.style.height = SQUARE + "px";
  box.appendChild(sq);
  box.addEventListener("mousemove", (e) => {
    const b = box.getBoundingClientRect();
    setCursor((e.clientX - b.left) / b.width, (e.clientY - b.top) / b.height);
  });
  box.addEventListener("wheel", onWheel, { passive: false });
  box.addEventListener("mousedown", onDragStart);
  return [box, inset];
}

function setCursor(u, v) {  // the square and the inset of every panel, at the same relative position
  S.u = u; S.v = v;
  for (const panel of document.querySelectorAll(".panel")) {
    const sq = panel.querySelector(".square");
    sq.style.display = "block";
    sq.style.left = (u * S.width - SQUARE / 2) + "px";
    sq.style.top = (v * HEIGHT - SQUARE / 2) + "px";
    panel.dataset.u = u.toFixed(4); panel.dataset.v = v.toFixed(4);
    for (const img of panel.querySelectorAll(".inset img")) {
      img.style.left = (INSET / 2 - u * S.width * ZOOM) + "px";
      img.style.top = (INSET / 2 - v * HEIGHT * ZOOM) + "px";
    }
  }
}

function line(text, cls) {  // store strings (labels, errors) go in as text, never as markup
  const d = document.createElement("div");
  d.textContent = text;
  if (cls) d.className = cls;
  return d;
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function panelFor(title, lines, imgs, cls = "") {
  const panel = document.createElement("div");
  panel.className = "panel";
  const [box, inset] = view(imgs);
  const cap = document.createElement("div");
  cap.className = "caption";
  cap.append(line(title, "title"), ...lines.map((l) => line(l, cls)));
  panel.append(box, inset, cap);
  $("panels").appendChild(panel);
  return panel;
}

function photoURL() { return `/api/photo?position=${S.position}&side=512`; }

function build() {
  $("panels").replaceChildren();
  const photo = S.item.photo && !S.item.rows.some((r) => r.method === S.method && r.pyramid);
  const [h, w] = fullShape();
  const aspect = photo && S.item.photo_shape ? S.item.photo_shape[1] / S.item.photo_shape[0] : w / h;
  S.width = Math.max(32, Math.round(HEIGHT * aspect));
  if (!S.region) S.region = { y0: 0, x0: 0, y1: h, x1: w };
  if (photo) panelFor(S.item.item_id, ["original"], [["photo", photoURL()]]).classList.add("original");
  const metrics = S.item.metrics;
  for (const r of S.item.rows.filter((x) => x.method === S.method)) {
    const lines = [`score ${fmt(r.base_score)}`, ...metrics.map((m) => `${m} ${fmt(r[m])}`)];
    if (r.status !== "ok" || r.problem) {
      const p = panelFor(`${r.method}: ${r.label || r.target || ""}`, [r.problem || r.error || r.status], [], "err");
      p.classList.add("problem");
      continue;
    }
    if (S.target !== "all" && String(r.target) !== S.target) continue;
    const layers = photo ? [["photo", photoURL()], ["map", null, S.alpha]] : [["map", null, S.alpha]];
    const p = panelFor(`${r.label || "class"} (${r.target})`, lines, layers);
    p.classList.add("overlay");
    p.dataset.row = r.row;
    p.dataset.method = r.method;
    loadMap(p, r);
  }
  const frames = Math.max(1, ...rowsShown().map((r) => r.frames));
  $("framebox").hidden = frames <= 1;
  $("frame").max = frames - 1;
  $("zoombox").hidden = !rowsShown().some((r) => r.pyramid);
  if (S.u !== null) setCursor(S.u, S.v);
}

function reloadMaps() {
  for (const p of document.querySelectorAll(".panel.overlay")) {
    loadMap(p, S.item.rows.find((r) => String(r.row) === p.dataset.row));
  }
}

function zoom(f, u = 0.5, v = 0.5) {  // scale the region by f around relative point (u, v), inside the image
  const [h, w] = fullShape(), g = S.region;
  const cy = g.y0 + v * (g.y1 - g.y0), cx = g.x0 + u * (g.x1 - g.x0);
  const nh = Math.min(h, Math.max(8, (g.y1 - g.y0) * f)), nw = Math.min(w, Math.max(8, (g.x1 - g.x0) * f));
  pan(cy - v * nh, cx - u * nw, nh, nw);
}

function pan(y0, x0, nh, nw) {
  const [h, w] = fullShape();
  y0 = Math.min(Math.max(0, y0), h - nh); x0 = Math.min(Math.max(0, x0), w - nw);
  S.region = { y0, x0, y1: y0 + nh, x1: x0 + nw };
  reloadMaps();
}

function onWheel(e) {
  if (!rowsShown().some((r) => r.pyramid)) return;
  e.preventDefault();
  const b = e.currentTarget.getBoundingClientRect();
  zoom(e.deltaY < 0 ? 0.5 : 2, (e.clientX - b.left) / b.width, (e.clientY - b.top) / b.height);
}

function onDragStart(e) {
  if (!rowsShown().some((r) => r.pyramid)) return;
  e.preventDefault();
  const g0 = { ...S.region }, x = e.clientX, y = e.clientY, box = e.currentTarget.getBoundingClientRect();
  const up = (ev) => {
    window.removeEventListener("mouseup", up);
    const sy = (g0.y1 - g0.y0) / box.height, sx = (g0.x1 - g0.x0) / box.width;
    pan(g0.y0 - (ev.clientY - y) * sy, g0.x0 - (ev.clientX - x) * sx, g0.y1 - g0.y0, g0.x1 - g0.x0);
  };
  window.addEventListener("mouseup", up);
}

async function init() {
  S.item = await (await fetch(`/api/item?position=${S.position}`)).json();
  $("title").textContent = `${S.item.item_id}` + (S.item.true_label ? ` (true label ${S.item.true_label})` : "");
  if (!S.method || !S.item.methods.includes(S.method)) S.method = S.item.methods[0];
  for (const m of S.item.methods) $("method").appendChild(option(m, m));
  $("method").value = S.method;
  const targets = () => {
    $("target").replaceChildren(option("all", "all"));
    for (const r of S.item.rows.filter((x) => x.method === S.method && x.status === "ok"))
      $("target").appendChild(option(String(r.target), `${r.label || ""} (${r.target})`));
  };
  targets();
  $("method").onchange = () => {
    S.method = $("method").value; S.target = "all"; S.region = null; targets();
    history.replaceState(null, "", `/item?position=${S.position}&method=${encodeURIComponent(S.method)}`);
    build();
  };
  $("target").onchange = () => { S.target = $("target").value; build(); };
  $("opacity").oninput = () => {
    S.alpha = Number($("opacity").value);
    for (const img of document.querySelectorAll("img.map")) img.style.opacity = S.alpha;
  };
  $("frame").oninput = () => { S.frame = Number($("frame").value); $("frameno").textContent = S.frame; reloadMaps(); };
  $("zoomin").onclick = () => zoom(0.5);
  $("zoomout").onclick = () => zoom(2);
  $("zoomreset").onclick = () => { const [h, w] = fullShape(); pan(0, 0, h, w); };
  build();
}

init();
