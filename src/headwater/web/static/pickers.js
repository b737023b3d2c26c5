// Searchable pickers fed by the catalog API: events, properties, property values, and filter rows.
// Every picker returns { el, value(), set(v) } (filterRows too); `onChange(value)` fires when the user picks.
// Sources, best first: /api/catalog/* (counts, last seen); else the `catalog` insight (events, properties);
// else free text. Values without the catalog API come from a trend broken down by the property (needs an event).
import { api as uiApi, h as uiH } from "./ui.js";

// the enrichment columns an insight can filter or break down by (insights/spec.py COLUMNS, the useful ones)
export const COLUMNS = ["country", "region", "city", "browser", "os", "device_type", "channel", "referrer_domain",
  "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "source", "type", "user_id", "anonymous_id", "session_id"];
export const OPERATORS = {
  string: [["eq", "="], ["neq", "≠"], ["contains", "contains"], ["is_set", "is set"], ["is_not_set", "is not set"]],
  number: [["eq", "="], ["neq", "≠"], ["gt", ">"], ["gte", "≥"], ["lt", "<"], ["lte", "≤"], ["is_set", "is set"], ["is_not_set", "is not set"]],
  boolean: [["eq", "is"], ["neq", "is not"], ["is_set", "is set"], ["is_not_set", "is not set"]],
  cohort: [["eq", "in"], ["neq", "not in"]],
};
const NO_VALUE = new Set(["is_set", "is_not_set"]);
const TTL = 30000;
const cache = new Map();

// one request per URL per 30 s (a page with many pickers asks once)
function cached(app, key, load) {
  const hit = cache.get(key);
  if (hit && Date.now() - hit.at < TTL) return hit.promise;
  const promise = load(app?.api || uiApi);
  cache.set(key, { at: Date.now(), promise });
  promise.catch(() => cache.delete(key));
  return promise;
}
export const clearPickerCache = () => cache.clear();

const compact = (n) => (n == null ? "" : n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? Math.round(n / 1e3) + "k" : n >= 1e3 ? (n / 1e3).toFixed(1) + "k" : String(n));
export function ago(iso) {
  if (!iso) return "";
  const text = String(iso).replace(" ", "T");
  const s = (Date.now() - new Date(/(Z|[+-]\d\d:?\d\d)$/.test(text) ? text : text + "Z")) / 1000;
  if (!Number.isFinite(s)) return "";
  if (s < 90) return "just now";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

// the `catalog` insight, for servers without /api/catalog (slower: it reads every event)
const catalogInsight = (app) => cached(app, "insight:catalog", (api) => api("/api/insights", { method: "POST", body: { kind: "catalog" } }).then((a) => a.result));

export function loadEvents(app, q = "") {
  const url = `/api/catalog/events?limit=200&q=${encodeURIComponent(q)}`;
  return cached(app, url, (api) => api(url).then((d) => d.events)).catch(() =>
    catalogInsight(app).then((r) => [...r.events].sort((a, b) => b.events - a.events)));
}

export function loadProperties(app, event = "") {
  const url = `/api/catalog/properties?event=${encodeURIComponent(event || "")}`;
  return cached(app, url, (api) => api(url).then((d) => d.properties)).catch(() => catalogInsight(app).then((r) => {
    const merged = new Map();
    for (const p of r.properties) {
      if (event && p.event !== event) continue;
      const seen = merged.get(p.property);
      const type = p.type === "DOUBLE" || p.type === "UBIGINT" || p.type === "BIGINT" ? "number" : p.type === "BOOLEAN" ? "boolean" : "string";
      if (seen) { seen.events += p.events; if (p.last_seen > seen.last_seen) seen.last_seen = p.last_seen; }
      else merged.set(p.property, { property: p.property, type, events: p.events, last_seen: p.last_seen, kind: "property" });
    }
    return [...[...merged.values()].sort((a, b) => b.events - a.events), ...COLUMNS.map((c) => ({ property: c, type: "string", kind: "column" }))];
  }));
}

export function loadValues(app, property, event = "", q = "") {
  const url = `/api/catalog/values?limit=50&property=${encodeURIComponent(property)}&event=${encodeURIComponent(event || "")}&q=${encodeURIComponent(q)}`;
  return cached(app, url, (api) => api(url).then((d) => d.values)).catch(() => {
    if (!event || !property) return [];
    const now = Date.now();
    const spec = { kind: "trend", series: [{ event }], breakdown: property, top_n: 50, interval: "month",
      date_from: new Date(now - 30 * 86400000).toISOString(), date_to: new Date(now + 3600000).toISOString() };
    return cached(app, "values:" + JSON.stringify(spec.series) + property, (api) => api("/api/insights", { method: "POST", body: spec })
      .then((a) => a.result.filter((s) => s.breakdown !== "(none)" && s.breakdown != null).map((s) => ({ value: s.breakdown, events: s.total }))));
  }).catch(() => []);
}

export const loadCohorts = (app) => cached(app, "/api/cohorts", (api) => api("/api/cohorts").then((d) => (Array.isArray(d) ? d : d.cohorts || []))).catch(() => []);

// A text box with a searchable list under it. `load(text)` -> [{ value, label, meta, group }];
// free text is accepted unless `strict`.
export function combo(app, { name, placeholder, load, onChange, strict = false, cls = "", width, autoHighlight = true }) {
  const h = app?.h || uiH;
  const input = h("input", { name, placeholder, autocomplete: "off", spellcheck: "false", role: "combobox", style: width ? `width:${width}` : undefined });
  const menu = h("ul", { class: "picker-menu", role: "listbox" });
  const el = h("div", { class: "picker " + cls }, input, menu);
  let current = "";
  let items = [];
  let active = -1;
  let token = 0;
  let typing = null;
  // closing also cancels a pending or running search, so a late answer does not reopen the list
  const close = () => { clearTimeout(typing); token++; menu.classList.remove("open"); active = -1; };
  const choose = (value, fire = true) => {
    const changed = value !== current;
    current = value;
    const item = items.find((i) => i.value === value);
    input.value = item?.label ?? value;
    el.dataset.value = value;
    close();
    if (changed && fire) onChange?.(value, item);
  };
  const highlight = (index) => {
    const rows = menu.querySelectorAll("li.item");
    active = Math.max(-1, Math.min(index, rows.length - 1));
    rows.forEach((r, i) => r.classList.toggle("active", i === active));
    rows[active]?.scrollIntoView({ block: "nearest" });
  };
  const render = async () => {
    const mine = ++token;
    const text = input.value.trim();
    menu.replaceChildren(h("li", { class: "hint" }, "loading…"));
    menu.classList.add("open");
    let all;
    try { all = await load(text); } catch { all = []; }
    if (mine !== token || document.activeElement !== input) return;
    items = all;
    const needle = text.toLowerCase();
    const typed = text && text === (items.find((i) => i.value === current)?.label ?? current);
    const shown = (typed || !needle ? all : all.filter((i) => String(i.label ?? i.value).toLowerCase().includes(needle))).slice(0, 200);
    const rows = [];
    let group = null;
    for (const item of shown) {
      if (item.group && item.group !== group) { group = item.group; rows.push(h("li", { class: "group" }, group)); }
      rows.push(h("li", { class: "item" + (item.value === current ? " chosen" : ""), role: "option", "data-value": item.value,
        onmousedown: (e) => { e.preventDefault(); choose(item.value); } },
      h("span", { class: "label" }, item.label ?? item.value), h("span", { class: "meta" }, item.meta || "")));
    }
    if (!rows.length) rows.push(h("li", { class: "hint" }, strict || !text ? "nothing found" : `press Enter to use “${text}”`));
    menu.replaceChildren(...rows);
    if (autoHighlight && needle && !typed && shown.length) highlight(0);  // Enter takes the first match of typed text
  };
  input.addEventListener("focus", () => { input.select(); render(); });
  input.addEventListener("input", () => {
    clearTimeout(typing);
    highlight(-1);  // the rows shown are for the old text until the search below runs
    typing = setTimeout(render, 120);
  });
  // Enter without a highlighted row: the item named exactly so, else the text itself
  const best = (text) => items.find((i) => String(i.label ?? i.value).toLowerCase() === text.toLowerCase());
  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown") { e.preventDefault(); if (!menu.classList.contains("open")) render(); else highlight(active + 1); }
    else if (e.key === "ArrowUp") { e.preventDefault(); highlight(active - 1); }
    else if (e.key === "Escape") { input.value = items.find((i) => i.value === current)?.label ?? current; close(); }
    else if (e.key === "Enter") {
      e.preventDefault();
      const row = menu.querySelectorAll("li.item")[active];
      const match = row ? null : best(input.value.trim());
      if (row) choose(row.dataset.value);
      else if (match) choose(match.value);
      else if (!strict) choose(input.value.trim());
    }
  });
  input.addEventListener("blur", () => {
    const text = input.value.trim();
    const label = items.find((i) => i.value === current)?.label ?? current;
    if (text !== label) {
      const match = items.find((i) => String(i.label ?? i.value) === text);
      if (match) choose(match.value);
      else if (!strict) choose(text);
      else input.value = label;
    }
    close();
  });
  return {
    el, input,
    value: () => current,
    set(v) { current = v ?? ""; el.dataset.value = current; input.value = items.find((i) => i.value === current)?.label ?? current; },
    item: () => items.find((i) => i.value === current),
    focus: () => input.focus(),
  };
}

export function eventPicker(app, { onChange, value = "", placeholder = "Select an event", name = "event" } = {}) {
  const picker = combo(app, { name, placeholder, onChange, cls: "event-picker", load: async (text) => {
    const events = await loadEvents(app).catch(() => []);
    // the API's list is capped: ask it for matches of the typed text too
    const more = text && events.length >= 200 ? await loadEvents(app, text).catch(() => []) : [];
    const seen = new Set(events.map((e) => e.event));
    return [...events, ...more.filter((e) => !seen.has(e.event))].map((e) => ({ value: e.event,
      meta: [compact(e.events) + " events", e.users != null ? compact(e.users) + " users" : "", ago(e.last_seen)].filter(Boolean).join(" · ") }));
  } });
  picker.set(value);
  return picker;
}

// `cohorts: true` adds the saved cohorts (value "$cohort"); `extra` adds items first (e.g. a "none" entry)
export function propertyPicker(app, { event = "", onChange, value = "", placeholder = "Select a property", name = "property", cohorts = false, numeric = false, extra = [] } = {}) {
  let forEvent = event;
  const picker = combo(app, { name, placeholder, onChange, cls: "property-picker", load: async () => {
    const list = await loadProperties(app, forEvent).catch(() => COLUMNS.map((c) => ({ property: c, type: "string", kind: "column" })));
    const items = list.filter((p) => !numeric || p.type === "number").map((p) => ({ value: p.property, type: p.type || "string",
      group: p.kind === "column" ? "Columns" : "Event properties",
      meta: [p.type, p.events != null ? compact(p.events) + " events" : "", ago(p.last_seen)].filter(Boolean).join(" · ") }));
    const cohortItems = cohorts ? [{ value: "$cohort", label: "Cohort", type: "cohort", group: "Cohorts", meta: "saved cohorts" }] : [];
    return [...extra, ...items.filter((i) => i.group === "Event properties"), ...cohortItems, ...items.filter((i) => i.group === "Columns")];
  } });
  picker.set(value);
  picker.setEvent = (e) => { forEvent = e || ""; };
  picker.type = () => (picker.value() === "$cohort" ? "cohort" : picker.item()?.type || "string");
  return picker;
}

export function valuePicker(app, { property = "", event = "", onChange, value = "", placeholder = "value", name = "value" } = {}) {
  const target = { property, event };
  // values are often typed in full (an id, a number): Enter keeps the text unless a row is highlighted
  const picker = combo(app, { name, placeholder, onChange, cls: "value-picker", width: "12em", autoHighlight: false, load: async (text) => {
    if (!target.property) return [];
    const values = await loadValues(app, target.property, target.event, text.length > 1 ? text : "");
    return values.map((v) => ({ value: String(v.value), meta: v.events != null ? compact(v.events) + " events" : "" }));
  } });
  picker.set(value === null || value === undefined ? "" : String(value));
  picker.setTarget = (p, e) => { target.property = p; target.event = e ?? target.event; };
  return picker;
}

// a select of the saved cohorts (value: the cohort id as a number)
export function cohortSelect(app, { value, onChange, name = "cohort" } = {}) {
  const h = app?.h || uiH;
  const select = h("select", { name, class: "cohort-select", onchange: () => onChange?.(Number(select.value)) }, h("option", { value: "" }, "loading cohorts…"));
  loadCohorts(app).then((list) => {
    select.replaceChildren(h("option", { value: "" }, list.length ? "— pick a cohort —" : "no saved cohorts"), ...list.map((c) => h("option", { value: c.id }, c.name)));
    if (value != null) select.value = String(value);
  });
  return { el: select, value: () => (select.value ? Number(select.value) : null), set(v) { value = v; select.value = v == null ? "" : String(v); } };
}

const typed = (text, type) => {
  if (type === "number" && text !== "" && Number.isFinite(Number(text))) return Number(text);
  if (type === "boolean" && (text === "true" || text === "false")) return text === "true";
  return text;
};

// Filter rows: property, operator (by the property's type), value; "+ Filter" adds one.
// value() -> the complete rows as insight filters: [{ property, op, value }]
export function filterRows(app, { event = "", filters = [], onChange, cohorts = true } = {}) {
  const h = app?.h || uiH;
  let forEvent = event;
  const list = h("div", { class: "filter-list" });
  const rows = [];
  const changed = () => onChange?.(api.value());
  const addRow = (f = {}) => {
    const row = { el: h("div", { class: "filter-row" }) };
    const op = h("select", { name: "filter-op", class: "filter-op" });
    const valueSlot = h("span", { class: "filter-value" });
    const setOps = (type, keep) => {
      const ops = OPERATORS[type] || OPERATORS.string;
      op.replaceChildren(...ops.map(([v, label]) => h("option", { value: v }, label)));
      op.value = ops.some(([v]) => v === keep) ? keep : ops[0][0];
    };
    const setValueWidget = (initial) => {
      if (row.property.value() === "$cohort") row.valueWidget = cohortSelect(app, { value: initial, onChange: changed });
      else row.valueWidget = valuePicker(app, { property: row.property.value(), event: forEvent, value: initial, onChange: changed });
      valueSlot.replaceChildren(row.valueWidget.el);
      valueSlot.style.display = NO_VALUE.has(op.value) ? "none" : "";
    };
    row.property = propertyPicker(app, { event: forEvent, value: f.property || "", cohorts, name: "filter-property", onChange: () => {
      setOps(row.property.type(), op.value);
      setValueWidget("");
      changed();
    } });
    op.addEventListener("change", () => { valueSlot.style.display = NO_VALUE.has(op.value) ? "none" : ""; changed(); });
    const remove = h("button", { class: "ghost icon remove-filter", title: "remove this filter", type: "button", onclick: () => {
      rows.splice(rows.indexOf(row), 1);
      row.el.remove();
      changed();
    } }, "×");
    const guess = f.property === "$cohort" ? "cohort" : typeof f.value === "number" || ["gt", "gte", "lt", "lte"].includes(f.op) ? "number" : typeof f.value === "boolean" ? "boolean" : "string";
    setOps(guess, f.op || "eq");
    setValueWidget(f.value ?? "");
    row.get = () => {
      const property = row.property.value();
      if (!property) return null;
      if (NO_VALUE.has(op.value)) return { property, op: op.value };
      const raw = row.valueWidget.value();
      if (raw === null || raw === "") return null;
      const type = property === "$cohort" ? "cohort" : ["gt", "gte", "lt", "lte"].includes(op.value) ? "number" : row.property.type();
      return { property, op: op.value, value: type === "cohort" ? raw : typed(String(raw), type) };
    };
    row.el.append(row.property.el, op, valueSlot, remove);
    rows.push(row);
    list.append(row.el);
    return row;
  };
  const add = h("button", { class: "ghost add-filter", type: "button", onclick: () => addRow().property.focus() }, "+ Filter");
  const el = h("div", { class: "filter-rows" }, list, add);
  const api = {
    el,
    value: () => rows.map((r) => r.get()).filter(Boolean),
    set(v) { rows.splice(0); list.replaceChildren(); (v || []).forEach((f) => addRow(f)); },
    setEvent(e) { forEvent = e || ""; rows.forEach((r) => { r.property.setEvent(forEvent); r.valueWidget.setTarget?.(r.property.value(), forEvent); }); },
  };
  api.set(filters);
  return api;
}
