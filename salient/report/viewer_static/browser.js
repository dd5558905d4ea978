// The item browser: one page of the store's table, filtered and sorted on the server (/api/table).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { offset: 0, limit: 100, total: 0 };

function fill(select, values) {
  for (const v of values) {
    const o = document.createElement("option");
    o.value = o.textContent = v;
    select.appendChild(o);
  }
}

function cell(v) {
  if (v === null || v === undefined) return "-";
  return typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v);
}

async function load() {
  const p = new URLSearchParams({ offset: state.offset, limit: state.limit, sort: $("sort").value,
                                  desc: $("desc").checked ? "1" : "0" });
  for (const k of ["method", "status", "label", "flagged", "q"]) if ($(k).value) p.set(k, $(k).value);
  const data = await (await fetch("/api/table?" + p)).json();
  state.total = data.total;
  $("count").textContent = `rows ${data.total ? data.offset + 1 : 0}-${data.offset + data.rows.length} of ${data.total}`;
  const shown = data.columns.filter((c) => c !== "row");
  const head = document.createElement("tr");
  for (const c of ["view", ...shown]) {
    const th = document.createElement("th");
    th.textContent = c;
    if (c !== "view") th.dataset.col = c;
    head.appendChild(th);
  }
  $("rows").tHead.replaceChildren(head);
  const body = $("rows").tBodies[0];
  body.replaceChildren();
  for (const r of data.rows) {
    const tr = document.createElement("tr");
    const a = document.createElement("a");
    a.href = `/item?position=${r.position}&method=${encodeURIComponent(r.method)}`;
    a.textContent = "view";
    a.className = "view-link";
    const td = document.createElement("td");
    td.appendChild(a);
    tr.appendChild(td);
    for (const c of shown) {
      const t = document.createElement("td");
      t.textContent = cell(r[c]);
      if (c === "error" && r[c]) t.className = "err";
      tr.appendChild(t);
    }
    body.appendChild(tr);
  }
  for (const th of $("rows").tHead.querySelectorAll("th[data-col]")) {
    th.onclick = () => { $("desc").checked = $("sort").value === th.dataset.col && !$("desc").checked;
                         $("sort").value = th.dataset.col; state.offset = 0; load(); };
  }
}

async function init() {
  const s = await (await fetch("/api/summary")).json();
  $("store").textContent = `${s.store} (model ${s.model}, ${s.items} items, ${s.rows} rows)`;
  if (s.missing.length) { $("missing").hidden = false; $("missing").textContent = "Missing: " + s.missing.join("; "); }
  $("report").hidden = !s.report;
  fill($("method"), s.methods);
  fill($("status"), s.statuses);
  fill($("label"), s.labels);
  $("flaggedbox").hidden = !s.flagged;
  fill($("sort"), ["position", "item_id", "method", "label", "true_label", "status", "base_score", ...s.metrics]);
  for (const k of ["method", "status", "label", "flagged", "sort", "desc"]) $(k).onchange = () => { state.offset = 0; load(); };
  $("q").oninput = () => { state.offset = 0; load(); };
  $("prev").onclick = () => { state.offset = Math.max(0, state.offset - state.limit); load(); };
  $("next").onclick = () => { if (state.offset + state.limit < state.total) { state.offset += state.limit; load(); } };
  await load();
}

init();
