// The search page: plain JS, no build step, nothing fetched from outside this server.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { fields: {}, key: localStorage.getItem("enclip_key") || "" };

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function call(path, options) {
  const resp = await fetch(path, { ...options, headers: { ...headers(), ...(options && options.headers) } });
  const data = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function saveKey() {
  state.key = $("key").value.trim();
  localStorage.setItem("enclip_key", state.key);
  // images are plain <img> requests, which cannot send headers: they carry the key as a same-site cookie
  document.cookie = `enclip_key=${encodeURIComponent(state.key)}; path=/images; SameSite=Strict`;
  loadCollection();
}

async function loadCollection() {
  try {
    const info = await call("/v1/collections");
    $("served").textContent = `collection ${info.served} · ${info.members.length} members · ${info.clusters} clusters`;
    state.fields = info.fields || {};
    const box = $("filters");
    box.textContent = "";
    for (const [field, values] of Object.entries(state.fields)) {
      const sel = document.createElement("select");
      sel.dataset.field = field;
      sel.setAttribute("aria-label", field);
      sel.add(new Option(`${field}: any`, ""));
      for (const v of values) sel.add(new Option(String(v), String(v)));
      box.appendChild(sel);
    }
    setStatus("");
  } catch (e) {
    setStatus(e.message, true);
  }
}

function commonFields(form) {
  form.append("top_k", $("top-k").value || "20");
  form.append("clusters", $("clusters").value.trim() || "auto");
  if ($("explain").checked) form.append("explain", "true");
  for (const sel of document.querySelectorAll("#filters select")) {
    if (sel.value) form.append("filter", `${sel.dataset.field}=${sel.value}`);
  }
}

async function runSearch(extra) {
  const form = new FormData();
  const text = $("q").value.trim();
  if (extra && extra.like) {
    form.append("like", extra.like);
  } else {
    if (text) form.append("text", text);
    const file = $("image").files[0];
    if (file) form.append("image", file);
  }
  commonFields(form);
  setStatus("searching…");
  const t0 = performance.now();
  try {
    const data = await call("/v1/search", { method: "POST", body: form });
    render(data, performance.now() - t0);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function render(data, ms) {
  const clusters = data.clusters.length ? data.clusters.map((c) => `${c.id}${c.label ? ` ${c.label}` : ""} (p=${c.p.toFixed(2)})`).join(", ") : "all";
  const what = data.query.like ? `more like ${data.query.like}` : (data.query.text || "image");
  setStatus(`${data.results.length} results for ${what} · clusters ${clusters} · ${ms.toFixed(0)} ms`);
  const grid = $("results");
  grid.textContent = "";
  for (const r of data.results) {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.pointId = r.point_id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = r.payload.text || String(r.id);
    img.src = `/images/${encodeURIComponent(r.point_id)}`;
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = r.payload.text || String(r.id);
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `#${r.rank} · id ${r.id} · score ${r.score.toFixed(4)} · cluster ${r.cluster}${r.cluster_label ? ` (${r.cluster_label})` : ""}`;
    card.append(img, title, meta);
    if (r.member_ranks) {
      const ranks = document.createElement("div");
      ranks.className = "ranks";
      ranks.textContent = Object.entries(r.member_ranks).map(([m, k]) => `${m}:${k ?? "-"}` + (r.shares && k ? ` (${Math.round(100 * r.shares[m])}%)` : "")).join(" ");
      card.append(ranks);
    }
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "more like this";
    more.addEventListener("click", () => runSearch({ like: r.point_id }));
    card.append(more);
    grid.append(card);
  }
}

$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });
$("image").addEventListener("change", () => { if ($("image").files.length) runSearch(); });
$("save-key").addEventListener("click", saveKey);
$("key").value = state.key;
loadCollection();
