// shopclip web page: plain JS against the same server's JSON API; no build step, no framework.
// Views are driven by the URL hash (#/search?q=..., #/product/ID) so Back and bookmarks work.
"use strict";

const HISTORY_KEY = "shopclip.session.history"; // products opened this session (sessionStorage)
const MAX_HISTORY = 50;
const $ = (sel) => document.querySelector(sel);

const state = { imageResults: null, lastProduct: null, categoriesLoaded: false, listHash: "#/", render: 0 };

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text; // never innerHTML: titles come from catalogs
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.message) || `request failed (HTTP ${response.status})`);
  return body;
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function productHref(id) { return "#/product/" + encodeURIComponent(id); }

function card(hit) {
  const li = el("li");
  const link = el("a", { class: "card", href: productHref(hit.id), "data-id": hit.id });
  const img = el("img", { src: hit.image_url, alt: hit.title, width: "256", height: "256", decoding: "async" });
  const body = el("span", { class: "card-body" });
  body.append(el("span", { class: "card-title" }, hit.title));
  const meta = el("span", { class: "card-meta" });
  const leaf = (hit.category || "").split(">").map((s) => s.trim()).filter(Boolean).pop() || "";
  meta.append(el("span", { class: "card-category", title: hit.category }, leaf));
  meta.append(el("span", { class: "card-score", "aria-label": `score ${hit.score.toFixed(3)}` }, hit.score.toFixed(3)));
  body.append(meta);
  link.append(img, body);
  li.append(link);
  return li;
}

function fill(list, hits) {
  list.replaceChildren(...hits.map(card));
}

// ------------------------------------------------------------------ session history

function readHistory() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY_KEY) || "[]"); } catch (_) { return []; }
}

function remember(id) {
  const history = readHistory().filter((e) => e.id !== id); // a re-visit moves to the end (newest)
  history.push({ id, timestamp: Date.now() / 1000 });
  sessionStorage.setItem(HISTORY_KEY, JSON.stringify(history.slice(-MAX_HISTORY)));
}

async function renderRecommendations(section, token) {
  const history = readHistory();
  const list = section.querySelector("ul");
  list.replaceChildren(); // never leave the previous page's row up while this one loads
  if (!history.length) { section.hidden = true; return; }
  try {
    const out = await api("/recommend", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ history, k: 8 }),
    });
    if (token !== state.render) return; // the user moved on; a newer view owns the page
    fill(list, out.results);
    section.hidden = out.results.length === 0;
  } catch (_) {
    section.hidden = true; // recommendations are a bonus; never block the page on them
  }
}

// ------------------------------------------------------------------ views

function showView(name) {
  $("#results-view").hidden = name !== "results";
  $("#product-view").hidden = name !== "product";
  $("#check-view").hidden = name !== "check";
}

function category() { return $("#category").value; }

async function loadCategories() {
  if (state.categoriesLoaded) return;
  try {
    const out = await api("/categories");
    const select = $("#category");
    for (const c of out.categories.filter((c) => c.depth <= 2)) {
      const label = (c.depth === 2 ? "\u2003" : "") + c.path.split(" > ").pop() + ` (${c.count})`;
      select.append(el("option", { value: c.path }, label));
    }
    state.categoriesLoaded = true;
  } catch (e) {
    setStatus(`Could not load categories: ${e.message}`, true);
  }
}

async function renderHome() {
  showView("results");
  $("#results-heading").textContent = "Start with a search";
  $("#results").replaceChildren();
  setStatus("");
  await renderRecommendations($("#home-recs"), state.render);
}

// Filters the server understood from the query, each with a button that drops it (a new search).
function renderUnderstood(out, params) {
  const box = $("#understood");
  const chips = $("#filter-chips");
  const understood = out.understood || { filters: [], ignored: [] };
  chips.replaceChildren();
  for (const f of understood.filters) {
    const li = el("li", { class: "chip" });
    li.append(el("span", {}, f.label));
    const remove = el("button", { type: "button", class: "chip-remove", "aria-label": `Remove filter ${f.label}`,
                                  "data-facet": f.facet }, "\u00d7");
    remove.addEventListener("click", () => {
      const next = new URLSearchParams(params);
      next.append("drop", f.facet);
      location.hash = `#/search?${next}`;
    });
    li.append(remove);
    chips.append(li);
  }
  const notes = [...(understood.ignored || []).map((i) => `ignored \u201c${i.words}\u201d: ${i.reason}`),
                 ...(out.notes || [])];
  $("#understood-notes").textContent = notes.join(" \u00b7 ");
  box.hidden = understood.filters.length === 0 && notes.length === 0;
}

async function renderTextSearch(params) {
  const q = (params.get("q") || "").trim();
  const cat = params.get("category") || "";
  const mode = params.get("mode") || "";
  $("#q").value = q;
  if (cat) $("#category").value = cat;
  $("#search-mode").value = mode;
  showView("results");
  $("#understood").hidden = true;
  if (!q) return renderHome();
  $("#results-heading").textContent = `Results for \u201c${q}\u201d`;
  setStatus("Searching\u2026");
  const query = new URLSearchParams({ q, k: "24" });
  if (cat) query.set("category", cat);
  if (mode) query.set("mode", mode);
  for (const d of params.getAll("drop")) query.append("drop", d);
  const token = state.render;
  try {
    const out = await api(`/search?${query}`);
    if (token !== state.render) return;
    renderUnderstood(out, params);
    fill($("#results"), out.results);
    setStatus(out.results.length ? `${out.results.length} results in ${Math.round(out.took_ms)} ms`
                                 : "No products match; try other words or all categories.");
  } catch (e) {
    $("#results").replaceChildren();
    setStatus(e.message, true);
  }
  await renderRecommendations($("#home-recs"), token);
}

async function runImageSearch(file) {
  state.render += 1;
  const token = state.render;
  showView("results");
  $("#results-heading").textContent = `Products like \u201c${file.name}\u201d`;
  setStatus("Searching by image\u2026");
  const form = new FormData();
  form.append("image", file);
  const query = new URLSearchParams({ k: "24" });
  if (category()) query.set("category", category());
  try {
    const out = await api(`/search/image?${query}`, { method: "POST", body: form });
    if (token !== state.render) return;
    state.imageResults = { heading: $("#results-heading").textContent, results: out.results };
    fill($("#results"), out.results);
    setStatus(`${out.results.length} results in ${Math.round(out.took_ms)} ms`);
    if (location.hash !== "#/image") history.pushState(null, "", "#/image");
  } catch (e) {
    $("#results").replaceChildren();
    setStatus(e.message, true);
  }
}

function renderImageResults() {
  showView("results");
  if (!state.imageResults) return renderHome();
  $("#results-heading").textContent = state.imageResults.heading;
  fill($("#results"), state.imageResults.results);
  setStatus("");
}

async function renderProduct(id) {
  const token = state.render;
  showView("product");
  setStatus("");
  remember(id);
  state.lastProduct = id;
  $("#similar").replaceChildren();
  $("#product-recs ul").replaceChildren();
  const title = $("#product-title");
  try {
    const p = await api(`/products/${encodeURIComponent(id)}`);
    if (token !== state.render) return;
    title.textContent = p.title;
    document.title = `${p.title} — shopclip`;
    $("#product-category").textContent = p.category;
    $("#product-price").textContent = p.price != null ? `\u20b9 ${p.price.toLocaleString()}` : "";
    $("#product-description").textContent = p.description || "";
    const img = $("#product-image");
    img.src = p.image_url;
    img.alt = p.title;
    const attrs = $("#product-attributes");
    attrs.replaceChildren();
    for (const [key, value] of Object.entries(p.attributes).slice(0, 12)) {
      attrs.append(el("dt", {}, key.replaceAll("_", " ")), el("dd", {}, value));
    }
    window.scrollTo(0, 0);
    title.focus({ preventScroll: true });
  } catch (e) {
    title.textContent = "Product not found";
    setStatus(e.message, true);
    $("#similar").replaceChildren();
    return;
  }
  try {
    const similar = await api(`/products/${encodeURIComponent(id)}/similar?k=8`);
    if (token !== state.render) return;
    fill($("#similar"), similar.results);
  } catch (e) {
    setStatus(`Similar items unavailable: ${e.message}`, true);
  }
  await renderRecommendations($("#product-recs"), token);
}

// ------------------------------------------------------------------ check a new listing

function pct(x) { return `${Math.round(x * 100)}%`; }

function renderCategory(c) {
  const p = $("#check-category");
  p.replaceChildren();
  if (!c) { p.textContent = "No category head."; return; }
  c.levels.forEach((level, i) => {
    if (i) p.append(" \u203a ");
    const sure = c.decided !== null && i < c.decided.split(" > ").length;
    p.append(el("span", { class: sure ? "level" : "level muted" }, `${level} (${pct(c.confidence[i])})`));
  });
  if (c.unsure) p.append(el("span", { class: "badge warn" }, "unsure"));
}

function renderAttributes(attrs) {
  const body = $("#check-attributes tbody");
  body.replaceChildren();
  for (const [name, a] of Object.entries(attrs)) {
    const tr = el("tr");
    tr.append(el("th", { scope: "row" }, name.replaceAll("_", " ")), el("td", {}, a.predicted),
              el("td", {}, pct(a.confidence)), el("td", {}, a.status));
    body.append(tr);
  }
  if (!body.children.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: "4" }, "No attribute head applies to this category."));
    body.append(tr);
  }
}

function renderLabels(labels) {
  const list = $("#check-labels");
  list.replaceChildren();
  for (const [name, l] of Object.entries(labels)) {
    const li = el("li", { "data-label": name });
    if (l.calibrated) {
      li.append(`${name}: probability ${pct(l.probability)} \u2014 ${l.decision ? "flagged" : "not flagged"} ` +
                `(at ${pct(l.precision_target)} precision)`);
      if (l.decision) li.append(el("span", { class: "badge dup" }, "flagged"));
    } else {
      li.append(`${name}: zero-shot score ${l.score.toFixed(3)}`, el("span", { class: "badge warn" }, "uncalibrated"));
      li.append(el("div", { class: "muted" }, l.note || ""));
    }
    list.append(li);
  }
}

function renderDuplicates(out) {
  const list = $("#check-duplicates");
  fill(list, out.duplicates.map((d) => ({ ...d, score: d.probability })));
  for (const [i, d] of out.duplicates.entries()) {
    const badge = el("span", { class: d.decision === "duplicate" ? "badge dup" : "badge warn", title: d.reason },
                     `${d.decision}: ${d.reason}`);
    list.children[i].querySelector(".card-body").prepend(badge);
  }
  $("#check-duplicates-status").textContent = out.duplicates.length
    ? `${out.duplicates.length} likely duplicate(s) among ${out.candidates} compared (probability \u2265 ${out.review_threshold}).`
    : `No likely duplicate among the ${out.candidates} closest products.`;
}

function renderNeighbours(near) {
  const list = $("#check-neighbours");
  list.replaceChildren(...near.map((n) => {
    // Labelled training products: they need not be in the served catalog, so no link.
    return el("li", { "data-id": n.id }, `${n.title || n.id} \u2014 ${n.category || ""} (${n.score.toFixed(3)})`);
  }));
}

async function runCheck() {
  const file = $("#check-image").files[0];
  const title = $("#check-title").value.trim();
  if (!file) { setStatus("Choose the listing's photo first.", true); $("#check-image").focus(); return; }
  if (!title) { setStatus("Type the listing's title.", true); $("#check-title").focus(); return; }
  const description = $("#check-description").value.trim();
  const form = () => {
    const f = new FormData();
    f.append("image", file);
    f.append("title", title);
    if (description) f.append("description", description);
    return f;
  };
  state.render += 1;
  const token = state.render;
  setStatus("Checking the listing\u2026");
  try {
    const [tag, dup] = await Promise.all([
      api("/tag", { method: "POST", body: form() }),
      api("/dedupe/check?k=10", { method: "POST", body: form() }),
    ]);
    if (token !== state.render) return;
    renderCategory(tag.category);
    renderAttributes(tag.attributes);
    renderLabels(tag.labels);
    renderDuplicates(dup);
    renderNeighbours(tag.neighbours);
    $("#check-results").hidden = false;
    setStatus(`Checked in ${Math.round(Math.max(tag.took_ms, dup.took_ms))} ms.`);
    $("#check-category-heading").focus({ preventScroll: false });
  } catch (e) {
    $("#check-results").hidden = true;
    setStatus(e.message, true);
  }
}

function renderCheck() {
  showView("check");
  document.title = "Check a new listing \u2014 shopclip";
  setStatus("");
}

async function route() {
  state.render += 1; // every navigation invalidates answers still in flight for the previous one
  const hash = location.hash || "#/";
  await loadCategories();
  if (hash.startsWith("#/product/")) return renderProduct(decodeURIComponent(hash.slice("#/product/".length)));
  document.title = "shopclip — product search";
  state.listHash = hash; // where "Back to results" returns, however many products were opened since
  if (hash === "#/check") return renderCheck();
  if (hash.startsWith("#/search")) {
    await renderTextSearch(new URLSearchParams(hash.split("?")[1] || ""));
  } else if (hash === "#/image") {
    renderImageResults();
  } else {
    await renderHome();
  }
  // Coming back from a product: put keyboard focus on the card the user opened.
  if (state.lastProduct) {
    const back = document.querySelector(`#results .card[data-id="${CSS.escape(state.lastProduct)}"]`);
    if (back) back.focus();
    state.lastProduct = null;
  }
}

// ------------------------------------------------------------------ wiring

function setMode(mode) {
  $("#text-field").hidden = mode !== "text";
  $("#image-field").hidden = mode !== "image";
}

document.addEventListener("DOMContentLoaded", () => {
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("#mode-image").checked) {
      const file = $("#image-file").files[0];
      if (!file) { setStatus("Choose a photo first.", true); $("#image-file").focus(); return; }
      runImageSearch(file);
      return;
    }
    const q = $("#q").value.trim();
    if (!q) { setStatus("Type what you are looking for.", true); $("#q").focus(); return; }
    const params = new URLSearchParams({ q });
    if (category()) params.set("category", category());
    if ($("#search-mode").value) params.set("mode", $("#search-mode").value);
    const target = `#/search?${params}`;
    if (location.hash === target) route(); else location.hash = target;
  });
  $("#search-mode").addEventListener("change", () => {
    if ($("#mode-text").checked && $("#q").value.trim()) $("#search-form").requestSubmit();
  });
  $("#category").addEventListener("change", () => {
    if ($("#mode-text").checked && $("#q").value.trim()) $("#search-form").requestSubmit();
  });
  $("#check-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runCheck();
  });
  $("#back").addEventListener("click", () => {
    location.hash = state.listHash;
  });
  // Cards are links: Enter opens them natively; Space should too, as on a button.
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.key === " " && target instanceof HTMLElement && target.classList.contains("card")) {
      event.preventDefault();
      target.click();
    }
  });
  window.addEventListener("hashchange", route);
  route();
});
