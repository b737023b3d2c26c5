// The Models page (#/models): the lineage of the SQL models (a layered graph: lake tables on the left, each model
// right of what it reads, coloured by its last build), and per model its last run, duration, rows, error, next
// run, the data checks on its table (from /api/checks) and recent builds; admins build a model (or all) now.
// Pages get the app's helpers: { view, h, api, every(fn, ms), can(permission) }.

const POLL_MS = 10000;
const STATUS = { ok: "ok", failed: "bad", skipped: "warn" };
const CHECK = { pass: "ok", fail: "bad", error: "bad" };
const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 150;
const NODE_H = 30;
const GAP_X = 70;
const GAP_Y = 16;

const count = (x) => (x == null ? "—" : Number(x).toLocaleString());
const seconds = (x) => (x == null ? "—" : x < 10 ? `${Number(x).toFixed(2)} s` : `${Math.round(x)} s`);
const stamp = (s) => (s ? String(s).replace("T", " ").replace("Z", "").slice(0, 19) : "");
const badge = (h, text, cls) => h("span", { class: `badge ${cls || "off"}` }, text);

function grid(h, columns, rows, attrs = {}) {
  const cell = (v) => h("td", {}, v instanceof Node ? v : v == null ? "" : String(v));
  return h("table", attrs, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map(cell))))));
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

// layer 0: tables that are not models; a model sits one layer right of the deepest table or model it reads
function layers(models) {
  const byName = Object.fromEntries(models.map((m) => [m.name, m]));
  const depth = {};
  const visit = (name, seen = new Set()) => {
    if (depth[name] != null) return depth[name];
    const m = byName[name];
    if (!m || seen.has(name)) return (depth[name] = 0);
    seen.add(name);
    depth[name] = 1 + Math.max(0, ...(m.refs || []).map((r) => visit(r, seen)));
    return depth[name];
  };
  models.forEach((m) => visit(m.name));
  models.forEach((m) => (m.refs || []).forEach((r) => { if (!byName[r]) depth[r] = 0; }));
  return depth;
}

function lineage(h, models, select) {
  const depth = layers(models);
  const byName = Object.fromEntries(models.map((m) => [m.name, m]));
  const columns = {};
  Object.keys(depth).sort().forEach((name) => (columns[depth[name]] ||= []).push(name));
  const place = {};
  let height = 0;
  Object.entries(columns).forEach(([layer, names]) => names.forEach((name, i) => {
    place[name] = { x: 10 + Number(layer) * (NODE_W + GAP_X), y: 10 + i * (NODE_H + GAP_Y) };
    height = Math.max(height, place[name].y + NODE_H + 10);
  }));
  const width = 20 + (Math.max(0, ...Object.keys(columns).map(Number)) + 1) * (NODE_W + GAP_X) - GAP_X;
  const edges = [];
  for (const m of models) {
    for (const ref of m.refs || []) {
      const a = place[ref], b = place[m.name];
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, mid = (x1 + x2) / 2;
      edges.push(svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, fill: "none", stroke: "#98a2b3",
        "stroke-width": 1.5, "marker-end": "url(#hw-arrow)", "data-edge": `${ref}->${m.name}` }));
    }
  }
  const fill = (m) => (!m ? "#f2f4f7" : m.error || m.last_run?.status === "failed" ? "#fee4e2" : m.last_run?.status === "ok" ? "#dcfae6" : "#fff");
  const nodes = Object.entries(place).map(([name, p]) => {
    const m = byName[name];
    const title = m ? `${name}: ${m.error || (m.last_run ? `${m.last_run.status} ${stamp(m.last_run.finished_at)}` : "never built")}` : `${name} (lake table)`;
    return svg("g", { class: "model-node", "data-model": name, style: m ? "cursor:pointer" : "", onclick: () => m && select(name) },
      svg("title", {}, title),
      svg("rect", { x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 6, fill: fill(m), stroke: m ? "#475467" : "#d0d5dd",
        "stroke-dasharray": m ? "" : "4 3" }),
      svg("text", { x: p.x + NODE_W / 2, y: p.y + NODE_H / 2 + 4, "text-anchor": "middle", "font-size": 12,
        fill: m ? "#101828" : "#667085" }, name.length > 20 ? `${name.slice(0, 19)}…` : name));
  });
  const marker = svg("defs", {}, svg("marker", { id: "hw-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#98a2b3" })));
  return h("div", { style: "overflow-x:auto" }, svg("svg", { width, height, id: "models-lineage", role: "img",
    "aria-label": "model lineage" }, marker, ...edges, ...nodes));
}

export async function modelsPage(app) {
  const { view, h, api, every, can } = app;
  const error = h("div", { class: "error", id: "models-error" });
  const note = h("div", { class: "muted", id: "models-note" });
  const graph = h("div", { id: "models-graph" });
  const list = h("div", { id: "models-list" });
  const detail = h("div", { id: "models-detail" });
  let state = { models: [] };
  let checks = [];
  let selected = null;

  const checksOf = (name) => checks.filter((c) => c.table === name);

  const run = async (models, fullRefresh = false) => {
    error.textContent = "";
    try {
      await api("/api/models/run", { method: "POST", body: { models, full_refresh: fullRefresh } });
      note.textContent = `Building ${models.length ? models.join(", ") : "every model"}…`;
      setTimeout(load, 1000);
    } catch (err) { error.textContent = err.message; }
  };

  const showDetail = async (name) => {
    selected = name;
    const m = state.models.find((x) => x.name === name);
    if (!m) { detail.replaceChildren(); return; }
    let runs = [];
    try { runs = (await api(`/api/models/runs?model=${encodeURIComponent(name)}&limit=20`)).runs; } catch (err) { error.textContent = err.message; }
    const config = m.config ? Object.entries(m.config).filter(([, v]) => v != null && v !== "").map(([k, v]) => `${k}: ${v}`).join(" · ") : "";
    const checkRows = checksOf(name).map((c) => h("tr", { "data-check": c.name },
      h("td", {}, c.name), h("td", {}, c.kind), h("td", {}, badge(h, c.severity, c.severity === "error" ? "bad" : "warn")),
      h("td", {}, c.last ? badge(h, c.last.status, CHECK[c.last.status]) : badge(h, "not run")),
      h("td", {}, c.last ? c.last.detail?.message || "" : ""), h("td", { class: "muted" }, c.last ? stamp(c.last.started_at) : "")));
    const runRows = runs.map((r) => h("tr", { "data-run": r.run_id },
      h("td", {}, stamp(r.started_at)), h("td", {}, r.trigger), h("td", {}, badge(h, r.status, STATUS[r.status])),
      h("td", {}, seconds(r.duration_s)), h("td", {}, count(r.rows)), h("td", { class: "error" }, r.error || "")));
    detail.replaceChildren(h("div", { class: "card", id: "model-detail", "data-model": name },
      h("h2", {}, name), m.description ? h("p", {}, m.description) : "", h("div", { class: "muted" }, config || ""),
      m.error ? h("div", { class: "error" }, m.error) : "",
      m.sql ? h("pre", { class: "model-sql" }, m.sql) : "",
      h("h3", {}, "Checks"), checkRows.length
        ? grid(h, ["check", "kind", "severity", "last", "message", "at"], checkRows, { class: "model-checks" })
        : h("div", { class: "muted" }, "no checks on this table (checks.toml)"),
      h("h3", {}, "Recent builds"), runRows.length
        ? grid(h, ["started", "trigger", "status", "duration", "rows", "error"], runRows, { class: "model-runs" })
        : h("div", { class: "muted" }, "never built")));
  };

  const draw = () => {
    const models = state.models;
    if (!models.length) {
      graph.replaceChildren();
      list.replaceChildren(h("div", { class: "muted", id: "models-empty" },
        state.models_dir ? `No models in ${state.models_dir}: add a name.sql file with one SELECT.` :
          "No models directory: set models_dir in headwater.toml to a directory of name.sql files (one SELECT each)."));
      return;
    }
    graph.replaceChildren(lineage(h, models, showDetail));
    const rows = models.map((m) => {
      const last = m.last_run;
      const mine = checksOf(m.name);
      const failing = mine.filter((c) => c.last && c.last.status !== "pass").length;
      const checkCell = !mine.length ? h("span", { class: "muted" }, "—")
        : failing ? badge(h, `${failing} of ${mine.length} failing`, "bad") : badge(h, `${mine.length} passing`, "ok");
      const actions = can("manage") && !m.error ? h("span", {},
        h("button", { class: "ghost", "data-run": m.name, onclick: (e) => { e.stopPropagation(); run([m.name]); } }, "Run"),
        m.config?.materialized === "incremental"
          ? h("button", { class: "ghost", "data-full": m.name, onclick: (e) => { e.stopPropagation(); run([m.name], true); } }, "Full refresh")
          : "") : "";
      return h("tr", { class: "model-row", "data-model": m.name, style: "cursor:pointer", onclick: () => showDetail(m.name) },
        h("td", {}, h("strong", {}, m.name)),
        h("td", {}, m.error ? badge(h, "error", "bad") : m.config.materialized + (m.config.partition_by ? ` by ${m.config.partition_by}` : "")),
        h("td", {}, m.config ? m.config.schedule : ""),
        h("td", {}, last ? badge(h, last.status, STATUS[last.status]) : badge(h, "never built"), " ", h("span", { class: "muted" }, last ? stamp(last.finished_at) : "")),
        h("td", {}, seconds(last?.duration_s)), h("td", {}, count(last?.rows)),
        h("td", {}, m.next_run ? stamp(m.next_run) : m.due ? "due" : m.error ? "" : "on change"),
        h("td", {}, checkCell), h("td", { class: "error" }, m.error || (last?.status === "failed" ? last.error : "") || ""),
        h("td", {}, actions));
    });
    list.replaceChildren(grid(h, ["model", "materialized", "schedule", "last build", "duration", "rows", "next", "checks", "error", ""],
      rows, { class: "models-table" }));
  };

  const load = async () => {
    try {
      state = await api("/api/models");
      try { checks = (await api("/api/checks?history=1")).checks || []; } catch { checks = []; }
      note.textContent = state.running ? "A build started here is running…" : "";
      draw();
      if (selected) await showDetail(selected);
    } catch (err) { error.textContent = err.message; }
  };

  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Models"),
    h("div", { class: "muted" }, "SQL models are lake tables built from a SELECT, on a schedule or when their inputs change; query them like events."),
    can("manage") ? h("button", { id: "models-run-all", onclick: () => run([]) }, "Build all now") : "",
    error, note, graph, list), detail);
  await load();
  every(load, POLL_MS);
}
