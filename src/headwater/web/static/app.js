// Headwater web app: a small single-page app over the JSON API (no build step).
import { auditPage } from "./audit.js";
import { planPage } from "./plan.js";
import { modelsPage } from "./models.js";
import { alertsPage } from "./alerts.js";
import { privacyPage } from "./privacy.js";
import { processorsPage, streamLive } from "./processors.js";
import { sourcesPage } from "./sources.js";
import { processorTilePicker, stateTile, streamTile } from "./tiles.js";

const view = document.getElementById("view");
let me = null;
let timers = [];

const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const child of children.flat()) el.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return el;
};

async function api(path, options = {}) {
  const headers = { "content-type": "application/json" };
  if (me && options.method && options.method !== "GET") headers["x-csrf-token"] = me.csrf;
  const response = await fetch(path, {
    method: options.method || "GET", headers, credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function table(columns, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((v) => h("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "")))))));
}

function chart(el, option) {
  // charts need a laid-out element: draw now if attached, else right after the caller attaches it
  const draw = () => echarts.init(el).setOption({ animation: false, tooltip: { trigger: "axis" }, grid: { left: 50, right: 20, top: 30, bottom: 40 }, ...option });
  if (el.isConnected) draw();
  else requestAnimationFrame(draw);
}

// helpers for page modules (their timers stop when the page changes)
const ui = { h, api, table, chart, every: (fn, ms) => timers.push(setInterval(fn, ms)) };

// ---------- rendering of insight results (shared by builder, dashboards and share pages)
function renderResult(container, kind, result) {
  container.replaceChildren();
  if (!result) return;
  if (kind === "trend") {
    const el = h("div", { class: "chart" });
    container.append(el);
    chart(el, {
      legend: {}, xAxis: { type: "category", data: (result[0]?.points || []).map((p) => p[0].slice(0, 16)) }, yAxis: { type: "value" },
      series: result.map((s) => ({ type: "line", name: `${s.event} ${s.measure}${s.breakdown ? " · " + s.breakdown : ""}${s.period === "previous" ? " (previous)" : ""}`, data: s.points.map((p) => p[1]) })),
    });
    container.append(table(["series", "period", "breakdown", "total"], result.map((s) => [s.event + " " + s.measure, s.period, s.breakdown ?? "", s.total ?? ""])));
  } else if (kind === "funnel") {
    for (const group of result) {
      const el = h("div", { class: "chart" });
      container.append(h("div", { class: "muted" }, group.breakdown ? `breakdown: ${group.breakdown}` : ""), el);
      chart(el, { xAxis: { type: "category", data: group.steps.map((s) => s.event) }, yAxis: { type: "value" },
        series: [{ type: "bar", data: group.steps.map((s) => s.count), label: { show: true, position: "top" } }] });
      container.append(table(["step", "event", "users", "conversion", "from previous", "drop-off", "median time (s)"],
        group.steps.map((s) => [s.step + 1, s.event, s.count, (100 * s.conversion).toFixed(1) + "%", (100 * s.conversion_from_previous).toFixed(1) + "%", s.drop_off, s.median_seconds ?? ""])));
    }
  } else if (kind === "retention") {
    const el = h("div", { class: "chart" });
    container.append(el);
    chart(el, { xAxis: { type: "category", data: result.curve.map((p) => "period " + p.period) }, yAxis: { type: "value", max: 1 },
      series: [{ type: "line", data: result.curve.map((p) => p.rate) }] });
    container.append(table(["cohort", "size", ...result.curve.map((p) => "P" + p.period)],
      result.cohorts.map((c) => [c.cohort.slice(0, 10), c.size, ...c.rates.map((r) => (100 * r).toFixed(1) + "%")])));
  } else if (kind === "journey") {
    const nodes = new Map();
    const links = result.edges.map((e) => {
      const source = `${e.step - 1}: ${e.source}`, target = `${e.step}: ${e.target}`;
      nodes.set(source, 1); nodes.set(target, 1);
      return { source, target, value: e.users };
    });
    const el = h("div", { class: "chart" });
    container.append(el);
    chart(el, { tooltip: {}, series: [{ type: "sankey", data: [...nodes.keys()].map((name) => ({ name })), links }] });
    container.append(table(["path", "users"], result.paths.map((p) => [p.path, p.users])));
  } else if (kind === "experiment") {
    container.append(table(["variant", "exposed", "converted", "rate", "95% interval", "p-value", "significant"],
      result.variants.map((v) => [v.variant + (v.control ? " (control)" : ""), v.exposed, v.converted, (100 * v.rate).toFixed(2) + "%",
        `${(100 * v.ci_low).toFixed(1)}–${(100 * v.ci_high).toFixed(1)}%`, v.p_value?.toFixed(4) ?? "", v.significant ?? ""])));
  } else if (result.columns) {
    if (result.identities) {  // a user's timeline: the person and every id stitched into it
      container.append(h("h3", {}, "Person " + result.person),
        table(["id", "linked at", "reason"], result.identities.map((i) => [i.id, i.linked_at, i.reason])));
    }
    container.append(table(result.columns, result.rows));
  } else {
    container.append(h("pre", {}, JSON.stringify(result, null, 2)));
  }
}

// ---------- pages
function login() {
  const name = h("input", { name: "name", autocomplete: "username" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password" });
  const error = h("div", { class: "error" });
  const form = h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault();
    try {
      me = await api("/api/login", { method: "POST", body: { name: name.value, password: password.value } });
      me = await api("/api/me");
      location.hash = "#/live";
      route();
    } catch (err) { error.textContent = err.message; }
  } }, h("h2", {}, "Sign in"), h("label", {}, "Name", name), h("label", {}, "Password", password), h("div", {}, h("button", { type: "submit" }, "Sign in")), error);
  view.replaceChildren(form);
}

function live() {
  const filter = h("input", { placeholder: "event or user", name: "filter" });
  const body = h("tbody");
  let cursor = null;
  const rows = [];
  const draw = () => {
    const f = filter.value.trim();
    body.replaceChildren(...rows.filter((r) => !f || r.event === f || r.user_id === f || r.anonymous_id === f).slice(0, 200).map((r) =>
      h("tr", { class: r.rejected ? "rejected" : "" }, h("td", {}, (r.received_at || "").replace("T", " ").slice(0, 19)),
        h("td", {}, r.event ?? "—"), h("td", {}, r.user_id ?? r.anonymous_id ?? ""), h("td", {}, r.source),
        h("td", {}, r.rejected ? "rejected: " + r.rejected : JSON.stringify(r.properties ?? {})), planCell(r))));
  };
  // what the source's tracking plan finds in the event (before the lake writer enforces it)
  const planCell = (r) => {
    if (!r.plan_version) return h("td", { class: "plan" }, "");
    const found = r.violations || [];
    const bad = found.filter((v) => v.rule !== "undeclared");
    const head = bad.length ? `${bad.length} violation${bad.length > 1 ? "s" : ""} (${r.plan_mode})` : "✓";
    return h("td", { class: "plan", title: r.plan_version }, h("div", { class: bad.length ? "rejected" : "" }, head),
      found.map((v) => v.rule === "undeclared" ? h("div", { class: "muted violation" }, `${v.path}: not in the plan`)
        : h("div", { class: "rejected violation" }, `${v.path}: ${v.rule}: expected ${v.expected}, got ${v.got}`)));
  };
  const poll = async () => {
    try {
      const page = await api("/api/live" + (cursor ? "?limit=200&cursor=" + encodeURIComponent(cursor) : "?limit=100"));
      const fresh = cursor ? page.events.slice().reverse() : page.events;
      rows.unshift(...fresh);
      rows.length = Math.min(rows.length, 1000);
      cursor = page.cursor;
      draw();
    } catch (err) { /* transient: try again on the next tick */ }
  };
  filter.addEventListener("input", draw);
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Live events"), h("label", {}, "Filter", filter),
    h("table", { id: "live" }, h("thead", {}, h("tr", {}, ["received", "event", "user", "source", "properties", "plan"].map((c) => h("th", {}, c)))), body)));
  poll();
  timers.push(setInterval(poll, 1000));
}

const DAY = 86400000;
const isoDay = (t) => new Date(t).toISOString().slice(0, 10);

function parseFilters(text) {
  // "plan=pro, country!=FR" -> insight filters
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((part) => {
    const m = part.match(/^([^!=<>]+?)\s*(!=|>=|<=|=|>|<)\s*(.*)$/);
    if (!m) throw new Error(`filter "${part}": write property=value (or !=, >, >=, <, <=)`);
    const op = { "=": "eq", "!=": "neq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte" }[m[2]];
    const value = ["gt", "gte", "lt", "lte"].includes(op) ? Number(m[3]) : m[3];
    return { property: m[1].trim(), op, value };
  });
}

function insights() {
  const field = (label, input, kinds) => { const el = h("label", { "data-kinds": kinds }, label, input); return el; };
  const kind = h("select", { name: "kind" }, ["funnel", "trend", "retention", "journey", "experiment", "timeline"].map((k) => h("option", { value: k }, k)));
  const events = h("input", { name: "events", placeholder: "comma-separated events, e.g. Signed Up, Activated", size: 45 });
  const person = h("input", { name: "person", placeholder: "user or anonymous id" });
  const from = h("input", { name: "from", type: "date", value: isoDay(Date.now() - 30 * DAY) });
  const to = h("input", { name: "to", type: "date", value: isoDay(Date.now() + DAY) });
  const windowDays = h("input", { name: "window", type: "number", value: 14, min: 1, style: "width:6em" });
  const order = h("select", { name: "order" }, ["ordered", "strict", "any"].map((o) => h("option", { value: o }, o)));
  const exclude = h("input", { name: "exclude", placeholder: "event to exclude (optional)" });
  const measure = h("select", { name: "measure" }, ["count", "users", "sum", "avg", "p50", "p90", "p95", "p99"].map((m) => h("option", { value: m }, m)));
  const property = h("input", { name: "property", placeholder: "numeric property for sum/avg/pXX" });
  const interval = h("select", { name: "interval" }, ["day", "hour", "week", "month"].map((m) => h("option", { value: m }, m)));
  const compare = h("input", { name: "compare", type: "checkbox" });
  const period = h("select", { name: "period" }, ["week", "day", "month"].map((m) => h("option", { value: m }, m)));
  const variant = h("input", { name: "variant", placeholder: "variant property, e.g. variant" });
  const breakdown = h("input", { name: "breakdown", placeholder: "property (optional)" });
  const filters = h("input", { name: "filters", placeholder: "plan=pro, country!=FR", size: 30 });
  const fields = [
    field("Insight", kind, "*"), field("Events / steps", events, "funnel trend retention journey experiment"), field("User", person, "timeline"),
    field("From", from, "funnel trend retention journey experiment"), field("To", to, "funnel trend retention journey experiment"),
    field("Window (days)", windowDays, "funnel experiment"), field("Order", order, "funnel"), field("Exclude", exclude, "funnel"),
    field("Measure", measure, "trend"), field("Property", property, "trend"), field("Interval", interval, "trend"), field("Compare with previous period", compare, "trend"),
    field("Period", period, "retention"), field("Variant property", variant, "experiment"),
    field("Breakdown", breakdown, "funnel trend"), field("Filters", filters, "funnel trend retention"),
  ];
  const showFields = () => fields.forEach((f) => { f.style.display = f.dataset.kinds === "*" || f.dataset.kinds.split(" ").includes(kind.value) ? "" : "none"; });
  kind.addEventListener("change", showFields);
  const out = h("div", { id: "result" });
  const sql = h("pre", { class: "sql" });
  const error = h("div", { class: "error" });
  const name = h("input", { name: "save-name", placeholder: "name to save as" });
  const boards = h("select", { name: "dashboard" });
  let lastQuery = null;
  const build = () => {
    const list = events.value.split(",").map((x) => x.trim()).filter(Boolean);
    const range = { date_from: from.value + "T00:00:00Z", date_to: to.value + "T00:00:00Z" };
    const k = kind.value;
    const common = { filters: parseFilters(filters.value) };
    if (k === "funnel") return { kind: k, steps: list.map((event) => ({ event })), window_seconds: windowDays.value * 86400, order: order.value,
      exclusions: exclude.value ? [{ event: exclude.value.trim() }] : [], breakdown: breakdown.value || undefined, ...common, ...range };
    if (k === "trend") return { kind: k, series: list.map((event) => ({ event, measure: measure.value, property: property.value || undefined })),
      interval: interval.value, compare: compare.checked, breakdown: breakdown.value || undefined, ...common, ...range };
    if (k === "retention") return { kind: k, start_event: list[0], return_event: list[1] || list[0], period: period.value, periods: 8, ...common, ...range };
    if (k === "experiment") return { kind: k, exposure_event: list[0], goal_event: list[1] || list[0], variant_property: variant.value, window_seconds: windowDays.value * 86400, ...range };
    if (k === "timeline") return { kind: k, person: person.value, limit: 200 };
    return { kind: k, event: list[0], depth: 4, ...range };
  };
  const run = async () => {
    error.textContent = "";
    try {
      lastQuery = build();
      const answer = await api("/api/insights", { method: "POST", body: lastQuery });
      sql.textContent = answer.sql;
      renderResult(out, answer.kind, answer.result);
    } catch (err) { error.textContent = err.message; }
  };
  const save = async () => {
    error.textContent = "";
    try {
      const saved = await api("/api/saved-insights", { method: "POST", body: { name: name.value || "Untitled", query: lastQuery || build() } });
      if (boards.value) {
        const board = await api("/api/dashboards/" + boards.value);
        const tiles = boardTiles(board);
        tiles.push({ insight_id: saved.id, x: 0, y: tiles.length * 4, w: 12, h: 4 });
        await saveBoard(board, { tiles });
      }
      error.textContent = `saved as insight ${saved.id}` + (boards.value ? " and added to the dashboard" : "");
    } catch (err) { error.textContent = err.message; }
  };
  api("/api/dashboards").then((list) => boards.replaceChildren(h("option", { value: "" }, "— no dashboard —"), ...list.map((b) => h("option", { value: b.id }, b.name)))).catch(() => {});
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Insight builder"), ...fields,
    h("div", {}, h("button", { id: "run", onclick: run }, "Run")), error),
    h("div", { class: "card" }, out, h("details", {}, h("summary", {}, "SQL"), sql)),
    h("div", { class: "card" }, h("h2", {}, "Save"), h("label", {}, "Name", name), h("label", {}, "Add to dashboard", boards), h("div", {}, h("button", { id: "save", onclick: save }, "Save insight"))));
  showFields();
}

// a dashboard as the API accepts it back (GET adds results and names)
const boardTiles = (board) => board.tiles.map(({ insight_id, live, state, x, y, w, h }) => (live ? { live, x, y, w, h } : state ? { state, x, y, w, h } : { insight_id, x, y, w, h }));
const saveBoard = (board, changes) => api("/api/dashboards/" + board.id, { method: "PUT",
  body: { name: board.name, tiles: boardTiles(board), last_days: board.last_days, filters: board.filters, refresh_seconds: board.refresh_seconds, ...changes } });

// `#/sql/<url-encoded SQL>` opens the page with that query, and runs it
function sqlPage(initial) {
  const text = h("textarea", { name: "sql" }, initial || "SELECT event, count(*) AS events, count(DISTINCT user_id) AS users\nFROM events GROUP BY event ORDER BY events DESC");
  const out = h("div");
  const error = h("div", { class: "error" });
  let last = null;
  const run = async () => {
    error.textContent = "";
    try {
      last = await api("/api/query", { method: "POST", body: { sql: text.value } });
      out.replaceChildren(h("div", { class: "muted" }, `${last.row_count} rows in ${last.elapsed_ms} ms${last.truncated ? " (truncated)" : ""}`));
      if (last.columns.length >= 2 && last.rows.length && typeof last.rows[0][1] === "number") {
        const el = h("div", { class: "chart" });
        out.append(el);
        chart(el, { xAxis: { type: "category", data: last.rows.map((r) => String(r[0])) }, yAxis: { type: "value" }, series: [{ type: "bar", data: last.rows.map((r) => r[1]) }] });
      }
      out.append(table(last.columns, last.rows));
    } catch (err) { error.textContent = err.message; }
  };
  const csv = () => {
    if (!last) return;
    const quote = (v) => `"${String(v ?? "").replaceAll('"', '""')}"`;
    const body = [last.columns, ...last.rows].map((r) => r.map(quote).join(",")).join("\n");
    const link = h("a", { href: URL.createObjectURL(new Blob([body], { type: "text/csv" })), download: "query.csv" });
    link.click();
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "SQL"), text, h("div", {}, h("button", { onclick: run }, "Run"), " ", h("button", { class: "ghost", onclick: csv }, "Download CSV")), error), h("div", { class: "card" }, out));
  if (initial) run();
}

async function dashboards() {
  const name = h("input", { name: "board-name", placeholder: "New dashboard" });
  const days = h("input", { name: "board-days", type: "number", value: 30, min: 1, style: "width:6em" });
  const list = h("ul");
  const error = h("div", { class: "error" });
  const load = async () => list.replaceChildren(...(await api("/api/dashboards")).map((b) => h("li", {}, h("a", { href: `#/dashboard/${b.id}` }, b.name))));
  const create = async () => {
    try {
      const board = await api("/api/dashboards", { method: "POST", body: { name: name.value || "Dashboard", tiles: [], last_days: Number(days.value), refresh_seconds: 30 } });
      location.hash = `#/dashboard/${board.id}`;
    } catch (err) { error.textContent = err.message; }
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Dashboards"), list,
    me.permissions.includes("analyze") ? h("div", {}, h("label", {}, "Name", name), h("label", {}, "Last days", days), h("button", { onclick: create }, "Create")) : "", error));
  await load();
}

function renderBoard(board, shared, token) {
  const grid = h("div", { class: "grid" });
  board.tiles.forEach((tile, index) => {
    const body = h("div");
    grid.append(h("div", { class: "card tile", "data-kind": tile.kind, style: `grid-column: span ${tile.w}` }, h("h2", {}, tile.name), tile.error ? h("div", { class: "error" }, tile.error) : body));
    if (tile.kind === "live") {
      const feed = h("tbody");
      body.append(h("table", { class: "live-tile" }, h("thead", {}, h("tr", {}, ["received", "event", "user"].map((c) => h("th", {}, c)))), feed));
      const poll = async () => {
        const url = shared ? `/api/shared/${token}/live/${index}` : `/api/live?rejected=false&limit=${tile.live.limit}` + (tile.live.event ? "&event=" + encodeURIComponent(tile.live.event) : "");
        const page = shared ? await (await fetch(url)).json() : await api(url);
        feed.replaceChildren(...(page.events || []).map((e) => h("tr", {}, h("td", {}, (e.received_at || "").replace("T", " ").slice(0, 19)), h("td", {}, e.event), h("td", {}, e.user_id ?? e.anonymous_id ?? ""))));
      };
      poll().catch(() => {});
      timers.push(setInterval(() => poll().catch(() => {}), 2000));
    } else if (tile.error) {
      // the error is shown instead of the body
    } else if (tile.kind === "state") stateTile(ui, body, tile);
    else if (tile.kind === "live.stream") streamTile(ui, body, tile, index, shared, token);
    else renderResult(body, tile.kind, tile.result);
  });
  return h("div", {}, h("h2", {}, board.name, h("span", { class: "muted" }, board.last_days ? `  · last ${board.last_days} days` : "", shared ? "  · shared view" : "")), grid);
}

async function dashboard(id) {
  const area = h("div");
  const links = h("div", { class: "muted" });
  const error = h("div", { class: "error" });
  let board = await api("/api/dashboards/" + id);
  const days = h("input", { name: "board-days", type: "number", min: 1, value: board.last_days ?? "", style: "width:6em" });
  const filters = h("input", { name: "board-filters", placeholder: "plan=pro", value: (board.filters || []).map((f) => `${f.property}${{ eq: "=", neq: "!=", gt: ">", gte: ">=", lt: "<", lte: "<=" }[f.op] || "="}${f.value}`).join(", ") });
  const liveEvent = h("input", { name: "live-event", placeholder: "event (optional)" });
  const draw = async () => {
    timers.forEach(clearInterval);
    timers = [];
    board = await api("/api/dashboards/" + id);
    area.replaceChildren(renderBoard(board, false));
    if (board.refresh_seconds) timers.push(setTimeout(draw, board.refresh_seconds * 1000));
  };
  const apply = async () => {
    try { await saveBoard(board, { last_days: days.value ? Number(days.value) : null, filters: parseFilters(filters.value) }); await draw(); }
    catch (err) { error.textContent = err.message; }
  };
  const addLive = async () => {
    try {
      const tiles = boardTiles(board);
      tiles.push({ live: { title: liveEvent.value ? `Live: ${liveEvent.value}` : "Live events", event: liveEvent.value || null, limit: 10 }, x: 0, y: 0, w: 6, h: 4 });
      await saveBoard(board, { tiles });
      await draw();
    } catch (err) { error.textContent = err.message; }
  };
  const editable = me.permissions.includes("analyze");
  const picker = editable ? processorTilePicker(ui, async (tile) => { await saveBoard(board, { tiles: [...boardTiles(board), tile] }); await draw(); }) : null;
  const addProcessorTile = async () => {
    error.textContent = "";
    try { await picker.add(); } catch (err) { error.textContent = err.message; }
  };
  const listShares = async () => {
    const shares = await api(`/api/dashboards/${id}/shares`);
    return shares.map((sh) => h("div", {}, `link ${sh.prefix}… by ${sh.created_by} `,
      h("button", { class: "ghost revoke", onclick: async () => { await api(`/api/dashboards/${id}/shares/${sh.prefix}`, { method: "DELETE" }); links.replaceChildren(...(await listShares())); } }, "Revoke")));
  };
  const share = async () => {
    const link = await api(`/api/dashboards/${id}/shares`, { method: "POST" });
    links.replaceChildren("Share link: ", h("a", { id: "share-link", href: link.url }, location.origin + link.url), ...(await listShares()));
  };
  if (editable) listShares().then((rows) => links.replaceChildren(...rows)).catch(() => {});
  view.replaceChildren(h("div", { class: "card" },
    editable ? h("div", {}, h("label", {}, "Last days (shared range)", days), h("label", {}, "Shared filters", filters), h("button", { class: "ghost", onclick: apply }, "Apply"), " ",
      h("label", {}, "Live widget event", liveEvent), h("button", { id: "add-live", class: "ghost", onclick: addLive }, "Add live widget"), " ",
      h("button", { id: "share", onclick: share }, "Create share link")) : "",
    editable ? h("div", { class: "processor-tile-picker" }, ...picker.fields, h("button", { id: "add-processor-tile", class: "ghost", onclick: addProcessorTile }, "Add processor tile")) : "",
    links, error), area);
  await draw();
}

async function catalog() {
  const data = await api("/api/insights", { method: "POST", body: { kind: "catalog" } });
  const r = data.result;
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Events"), table(["event", "events", "users", "first seen", "last seen"], r.events.map((e) => [e.event, e.events, e.users, e.first_seen, e.last_seen]))),
    h("div", { class: "card" }, h("h2", {}, "Properties"), table(["event", "property", "type", "events", "first seen", "last seen"], r.properties.map((p) => [p.event, p.property, p.type, p.events, p.first_seen, p.last_seen]))));
}

async function keys() {
  const name = h("input", { name: "key-name" });
  const role = h("select", { name: "key-role" }, ["write", "read", "admin"].map((r) => h("option", { value: r }, r)));
  const out = h("div");
  const shown = h("div", { class: "muted" });
  const load = async () => out.replaceChildren(table(["name", "role", "prefix", "status", ""], (await api("/api/keys")).map((k) => [k.name, k.role, k.prefix + "…", k.revoked ? "revoked" : "active",
    k.revoked ? "" : h("button", { class: "ghost", onclick: async () => { await api("/api/keys/" + encodeURIComponent(k.name), { method: "DELETE" }); load(); } }, "Revoke")])));
  const create = async () => {
    try {
      const made = await api("/api/keys", { method: "POST", body: { name: name.value, role: role.value } });
      shown.textContent = `New ${made.role} key (shown once): ${made.key}`;
      load();
    } catch (err) { shown.textContent = err.message; }
  };
  const userName = h("input", { name: "user-name" });
  const userRole = h("select", { name: "user-role" }, ["viewer", "analyst", "admin"].map((r) => h("option", { value: r }, r)));
  const userPassword = h("input", { name: "user-password", type: "password", placeholder: "at least 10 characters" });
  const users = h("div");
  const userMessage = h("div", { class: "muted" });
  const loadUsers = async () => users.replaceChildren(table(["user", "role", ""], (await api("/api/users")).map((u) => [u.name, u.role,
    u.name === me.user ? "" : h("button", { class: "ghost", onclick: async () => { await api("/api/users/" + encodeURIComponent(u.name), { method: "DELETE" }); loadUsers(); } }, "Delete")])));
  const addUser = async () => {
    try {
      await api("/api/users", { method: "POST", body: { name: userName.value, role: userRole.value, password: userPassword.value } });
      userMessage.textContent = `created ${userRole.value} ${userName.value}`;
      loadUsers();
    } catch (err) { userMessage.textContent = err.message; }
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Keys & users"), h("label", {}, "Name", name), h("label", {}, "Role", role), h("button", { onclick: create }, "Create key"), shown), h("div", { class: "card" }, out),
    h("div", { class: "card" }, h("h2", {}, "Users"), h("label", {}, "Name", userName), h("label", {}, "Role", userRole), h("label", {}, "Password", userPassword), h("button", { id: "add-user", onclick: addUser }, "Add user"), userMessage, users));
  await load();
  await loadUsers();
}

async function sharePage(token) {
  document.getElementById("top").style.display = "none";
  timers.forEach(clearInterval);
  timers = [];
  const response = await fetch("/api/shared/" + token);
  const board = await response.json();
  if (!response.ok) { view.replaceChildren(h("div", { class: "card error" }, board.error)); return; }
  view.replaceChildren(renderBoard(board, true, token));
  if (board.refresh_seconds) timers.push(setTimeout(() => sharePage(token).catch(() => {}), board.refresh_seconds * 1000));
}

// ---------- routing
async function route() {
  timers.forEach(clearInterval);
  timers = [];
  if (location.pathname.startsWith("/share/")) return sharePage(location.pathname.slice(7));
  if (!me) me = await api("/api/me").catch(() => null);
  const who = document.getElementById("who");
  if (!me) { who.replaceChildren(); return login(); }
  who.replaceChildren(`${me.user} (${me.role}) `, h("button", { class: "ghost", onclick: async () => { await api("/api/logout", { method: "POST" }); me = null; route(); } }, "Sign out"));
  for (const a of document.querySelectorAll("#nav a")) {
    a.style.display = a.dataset.needs && !me.permissions.includes(a.dataset.needs) ? "none" : "";
    a.classList.toggle("active", location.hash.startsWith(a.getAttribute("href")));
  }
  const [page, arg] = location.hash.replace(/^#\//, "").split("/");
  const helpers = { view, h, api, table, every: (fn, ms) => timers.push(setInterval(fn, ms)), can: (p) => me.permissions.includes(p) };
  try {
    if (page === "insights") insights();
    else if (page === "sql") sqlPage(arg ? decodeURIComponent(arg) : undefined);
    else if (page === "dashboards") await dashboards();
    else if (page === "dashboard") await dashboard(arg);
    else if (page === "catalog") await catalog();
    else if (page === "keys") await keys();
    else if (page === "processors") await processorsPage(helpers);
    else if (page === "sources") await sourcesPage(helpers);
    else if (page === "audit") await auditPage(helpers);
    else if (page === "privacy") await privacyPage(helpers);
    else if (page === "plan") await planPage(helpers);
    else if (page === "models") await modelsPage(helpers);
    else if (page === "alerts") await alertsPage(helpers);
    else if (page === "live" && arg) streamLive(helpers, decodeURIComponent(arg));
    else live();
  } catch (err) { view.replaceChildren(h("div", { class: "card error" }, err.message)); }
}

window.addEventListener("hashchange", route);
route();
