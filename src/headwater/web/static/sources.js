// Sources beyond HTTP: the Sources page (Kafka topics, RabbitMQ queues, file drops): state, throughput,
// lag, last error; a row expands to its progress and recent rejections. Pages get the app's helpers:
// { view, h, api, every(fn, ms), can(permission) } (`every` timers stop when the page changes).

const POLL_MS = 2000;
const RAW_CHARS = 160;
const HEX_BYTES = 48;

const when = (s) => (s == null ? "" : new Date(s * 1000).toISOString().replace("T", " ").slice(0, 19));
const ago = (s) => {
  if (s == null) return "";
  const d = Math.max(0, Date.now() / 1000 - s);
  return d < 60 ? `${Math.round(d)} s ago` : d < 3600 ? `${Math.round(d / 60)} min ago` : d < 86400 ? `${Math.round(d / 3600)} h ago` : when(s);
};
const count = (x) => (x == null ? "—" : Number(x).toLocaleString());
const rate = (x) => (x == null ? "—" : x < 10 ? Number(x).toFixed(1) : Math.round(x).toLocaleString());
const bytes = (n) => {
  if (n == null) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const base = (path) => String(path ?? "").split("/").pop();
const lag = (s) => (s.lag == null ? "—" : s.kind === "files" ? `${count(s.lag)} file${s.lag === 1 ? "" : "s"}` : count(s.lag));
const STATES = { running: "ok", starting: "warn", reconnecting: "warn", failed: "bad" };

export const quarantineSql = (name) =>
  `SELECT * FROM quarantine WHERE source = '${name.replaceAll("'", "''")}' ORDER BY received_at DESC LIMIT 100`;

// a table whose cells may be DOM nodes (the app's `table` helper prints objects as JSON)
function grid(h, columns, rows, cls) {
  const cell = (v) => h("td", {}, v instanceof Node ? v : v == null ? "" : String(v));
  return h("table", { class: cls }, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), h("tbody", {}, rows.map((r) => h("tr", {}, r.map(cell)))));
}

function badge(h, state) {
  return h("span", { class: `badge ${STATES[state] || "off"}`, "data-state": state }, state || "unknown");
}

// a rejected record's raw payload: text as is, binary ("base64:...") as a hex dump of its first bytes
function rawExcerpt(h, raw) {
  if (raw == null) return "";
  const text = String(raw);
  if (text.startsWith("base64:")) {
    let body = text.slice(7).replace(/[^A-Za-z0-9+/=]/g, "");
    body = body.slice(0, body.length - (body.length % 4));
    let hex = "";
    try {
      const decoded = atob(body);
      hex = Array.from(decoded.slice(0, HEX_BYTES), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
      if (decoded.length > HEX_BYTES) hex += " …";
    } catch { hex = text.slice(7, 7 + RAW_CHARS); }
    return h("span", { class: "raw", title: text }, h("span", { class: "badge off" }, "binary"), " ", h("code", {}, hex));
  }
  return h("code", { class: "raw", title: text }, text.length > RAW_CHARS ? text.slice(0, RAW_CHARS) + " …" : text);
}

function filesProgress(h, p) {
  const parts = [];
  const files = p.files || {};
  parts.push(h("div", { class: "muted" }, ["done", "failed", "reading"].map((k) => `${count(files[k] || 0)} ${k}`).join(" · ") + ` · ${count(p.waiting ?? 0)} waiting`));
  const current = p.current;
  if (current) {
    const share = current.share == null ? null : Math.max(0, Math.min(1, current.share));
    parts.push(h("div", { class: "current-file" },
      h("div", {}, "Reading ", h("code", {}, current.path), " ", h("span", { class: "muted" }, `${bytes(current.read_bytes)} of ${bytes(current.size)}`)),
      h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": share == null ? "" : Math.round(share * 100) },
        h("span", { style: `width:${share == null ? 0 : (share * 100).toFixed(1)}%` })),
      h("span", { class: "muted" }, share == null ? "" : `${(share * 100).toFixed(1)}%`)));
  }
  const recent = p.recent || [];
  if (recent.length) {
    parts.push(h("h3", {}, "Recent files"), grid(h, ["file", "state", "records", "rejected", "started", "finished", "error"],
      recent.map((f) => [h("span", { title: f.path }, base(f.path)), f.state, count(f.records), count(f.rejected), when(f.started_at), when(f.finished_at), f.error ?? ""]), "recent-files"));
  }
  return parts;
}

function queueProgress(h, p) {
  const item = (label, value) => h("span", { class: "fact" }, h("span", { class: "muted" }, label + " "), value);
  return [h("div", { class: "queue" },
    item("queue", h("code", {}, p.queue ?? "—")),
    p.exchange ? item("bound to exchange", h("code", {}, p.exchange)) : "",
    item("messages ready", count(p.messages_ready)),
    p.in_flight != null ? item("in flight", count(p.in_flight)) : "",
    item("connection", p.connected ? h("span", { class: "badge ok" }, "connected") : h("span", { class: "badge bad" }, "disconnected")),
    p.reconnects ? item("reconnects", count(p.reconnects)) : "")];
}

function kafkaProgress(h, p) {
  const partitions = Object.entries(p.partitions || {});
  return [h("div", { class: "muted" }, `topic ${p.topic ?? "?"} · group ${p.group ?? "?"}`),
    partitions.length
      ? grid(h, ["partition", "position", "committed", "end", "behind"], partitions.map(([n, s]) => [n, count(s.position), count(s.committed), count(s.high), count(Math.max(0, s.high - s.position))]), "partitions")
      : h("div", { class: "muted" }, "no partitions assigned yet")];
}

function details(app, s) {
  const { h, can } = app;
  const p = s.progress || {};
  const facts = s.records_in == null ? "" : h("div", { class: "muted" },
    [`appended ${count(s.appended)}`, `duplicates ${count(s.duplicates)}`, `errors ${count(s.errors)}`,
      s.table_rows != null ? `table rows ${count(s.table_rows)}` : null, s.started_at ? `started ${when(s.started_at)}` : null,
      s.updated_at ? `updated ${ago(s.updated_at)}` : null].filter(Boolean).join(" · "));
  let progress;
  if (s.state === "not running" && !Object.keys(p).length) {
    const run = h("code", {}, `headwater source ${s.name}`);
    progress = [h("div", { class: "muted" }, ...(s.enabled === false
      ? ["Disabled: ", h("code", {}, "headwater up"), " does not run it; ", run, " does."]
      : ["Not running: start ", h("code", {}, "headwater up"), ", or ", run, "."]))];
  }
  else if (p.error) progress = [h("div", { class: "error" }, p.error)];
  else if (s.kind === "files") progress = filesProgress(h, p);
  else if (s.kind === "rabbitmq") progress = queueProgress(h, p);
  else if (s.kind === "kafka") progress = kafkaProgress(h, p);
  else progress = [h("pre", {}, JSON.stringify(p, null, 2))];
  const rejections = s.recent_rejections || [];
  const link = can("sql") ? h("a", { class: "quarantine-link", href: "#/sql/" + encodeURIComponent(quarantineSql(s.name)) }, "see in quarantine") : "";
  return h("div", { class: "source-details" },
    facts,
    s.last_error ? h("div", { class: "error" }, `last error ${when(s.last_error_at)}: ${s.last_error}`) : "",
    h("h3", {}, "Progress"), ...progress,
    h("h3", {}, "Recent rejections ", s.rejected == null ? "" : h("span", { class: "muted" }, `(${count(s.rejected)} in all) `), link),
    rejections.length
      ? grid(h, ["time", "id", "reason", "raw"], rejections.map((r) => [when(r.at), h("code", {}, r.id ?? ""), r.reason ?? "", rawExcerpt(h, r.raw)]), "rejections")
      : h("div", { class: "muted" }, "none since it started"));
}

function emptyState(h) {
  const example = `[[sources]]
name = "drops"
kind = "files"            # or kafka, rabbitmq
path = "/data/drops"
format = "ndjson"`;
  return h("div", { class: "empty-sources" },
    h("p", {}, "No sources configured. Besides HTTP, Headwater reads Kafka topics, RabbitMQ queues and file drops: add a ",
      h("code", {}, "[[sources]]"), " table to ", h("code", {}, "headwater.toml"), " and restart ", h("code", {}, "headwater up"), "."),
    h("pre", { class: "sql" }, example),
    h("p", { class: "muted" }, "Every field: ", h("code", {}, "headwater config docs --sources"), "; examples: the Sources section of the README (",
      h("code", {}, "README.md#sources"), ")."));
}

export async function sourcesPage(app) {
  const { view, h, api, every } = app;
  const body = h("tbody");
  const list = h("table", { id: "sources" },
    h("thead", {}, h("tr", {}, ["source", "kind / format", "target", "state", "records in", "rate/s", "rejected", "lag", "last error"].map((c, i) =>
      h("th", { class: i >= 4 && i <= 7 ? "num" : undefined }, c)))), body);
  const holder = h("div");
  const error = h("div", { class: "error" });
  const open = new Set();
  let sources = [];
  const draw = () => {
    if (!sources.length) { holder.replaceChildren(emptyState(h)); return; }
    const rows = [];
    for (const s of sources) {
      const toggle = () => { if (open.has(s.name)) open.delete(s.name); else open.add(s.name); draw(); };
      const expanded = open.has(s.name);
      rows.push(h("tr", { class: "source-row" + (expanded ? " open" : ""), "data-source": s.name, onclick: toggle, title: "show progress and rejections" },
        h("td", {}, h("span", { class: "caret" }, expanded ? "▾ " : "▸ "), h("strong", {}, s.name)),
        h("td", {}, `${s.kind} / ${s.format}`),
        h("td", {}, s.target ?? ""),
        h("td", {}, badge(h, s.state)),
        h("td", { class: "num" }, count(s.records_in)),
        h("td", { class: "num" }, s.state === "running" ? rate(s.rate) : "—"),
        h("td", { class: "num" + (s.rejected ? " rejected" : "") }, count(s.rejected)),
        h("td", { class: "num" }, lag(s)),
        h("td", { class: "last-error" }, s.last_error ? [h("span", { class: "error" }, s.last_error), h("div", { class: "muted" }, `${when(s.last_error_at)} (${ago(s.last_error_at)})`)] : "")));
      if (expanded) rows.push(h("tr", { class: "source-detail", "data-source": s.name }, h("td", { colspan: 9 }, details(app, s))));
    }
    body.replaceChildren(...rows);
    if (!list.isConnected) holder.replaceChildren(list);
  };
  const poll = async () => {
    try { sources = (await api("/api/sources")).sources; error.textContent = ""; }
    catch (err) { error.textContent = err.message; return; }
    draw();
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Sources"),
    h("div", { class: "muted intro" }, "Kafka topics, RabbitMQ queues and file drops configured in headwater.toml; click a source for its progress and recent rejections."),
    error, holder));
  await poll();
  every(poll, POLL_MS);
}
