// Dashboard tiles over stream processors: a served state table (bar chart of one number per key, or rows)
// and a processor's output stream live (key, value, time), plus the editor's picker that adds them from
// /api/processors. Functions get the app's helpers: { h, api, table, chart, every(fn, ms) }.

const LIVE_POLL_MS = 2000;

const when = (t) => (t == null ? "" : new Date(t).toISOString().replace("T", " ").slice(0, 19));
const shown = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? ""));

// a state tile: tile.result = { rows: [{ key, value, event_time, measure }], chart: "bar" | "table", field }
export function stateTile(app, body, tile) {
  const { h, table, chart } = app;
  const result = tile.result || { rows: [] };
  const rows = result.rows || [];
  const spec = tile.state || {};
  if (!rows.length) {
    body.append(h("div", { class: "muted state-empty" }, spec.prefix ? `no key starts with "${spec.prefix}" yet` : "no rows yet"));
    return;
  }
  const bars = result.chart === "bar" && rows.some((r) => r.measure != null);
  if (bars) {
    const el = h("div", { class: "chart state-chart" });
    body.append(el);
    chart(el, {
      xAxis: { type: "category", data: rows.map((r) => r.key), axisLabel: { interval: 0, rotate: rows.length > 8 ? 30 : 0 } },
      yAxis: { type: "value", name: result.field || "value" },
      series: [{ type: "bar", name: result.field || "value", data: rows.map((r) => r.measure), label: { show: rows.length <= 20, position: "top" } }],
    });
  }
  const columns = bars ? ["key", result.field || "value", "full value", "event time"] : ["key", "value", "event time"];
  const cells = rows.map((r) => (bars ? [r.key, r.measure ?? "", shown(r.value), when(r.event_time)] : [r.key, shown(r.value), when(r.event_time)]));
  const out = table(columns, cells);
  out.classList.add("state-tile");
  body.append(out);
}

// a live.stream tile: the newest records of the stream, refreshed every 2 s (through the share link when shared)
export function streamTile(app, body, tile, index, shared, token) {
  const { h, api, every } = app;
  const feed = h("tbody");
  body.append(h("table", { class: "stream-tile", "data-stream": tile.live.stream },
    h("thead", {}, h("tr", {}, ["time", "key", "value"].map((c) => h("th", {}, c)))), feed));
  const draw = (rows) => feed.replaceChildren(...rows.map((r) =>
    h("tr", {}, h("td", {}, (r.time || "").replace("T", " ").slice(0, 19)), h("td", {}, r.key ?? "—"), h("td", {}, shown(r.value)))));
  draw(tile.result?.rows || []);
  const poll = async () => {
    const params = new URLSearchParams({ stream: tile.live.stream, limit: String(tile.live.limit) });
    const page = shared ? await (await fetch(`/api/shared/${token}/live/${index}`)).json() : await api("/api/live?" + params);
    if (page.events) draw(page.events);
  };
  every(() => poll().catch(() => {}), LIVE_POLL_MS);
}

// the editor's "add a processor tile": one of the processors' streams or state tables
export function processorTilePicker(app, addTile) {
  const { h, api } = app;
  const output = h("select", { name: "processor-output" }, h("option", { value: "" }, "— processor stream or state table —"));
  const title = h("input", { name: "processor-tile-title", placeholder: "title (optional)" });
  const prefix = h("input", { name: "state-prefix", placeholder: "optional", size: 12 });
  const field = h("input", { name: "state-field", placeholder: "default: value", size: 14 });
  const chartKind = h("select", { name: "state-chart" }, ["bar", "table"].map((c) => h("option", { value: c }, c)));
  const stateOnly = [h("label", {}, "Key prefix", prefix), h("label", {}, "Bar value field", field), h("label", {}, "Show as", chartKind)];
  const showFields = () => stateOnly.forEach((el) => { el.style.display = output.value.startsWith("stream:") ? "none" : ""; });
  output.addEventListener("change", showFields);
  api("/api/processors").then(({ processors }) => {
    for (const p of processors) {
      const outputs = p.outputs || {};
      for (const s of outputs.streams || []) output.append(h("option", { value: "stream:" + s }, `stream ${s} (${p.name})`));
      for (const t of outputs.state_tables || []) output.append(h("option", { value: "state:" + t }, `state table ${t} (${p.name})`));
    }
  }).catch(() => {});
  const add = async () => {
    const [kind, ...rest] = output.value.split(":");
    const name = rest.join(":");
    if (!name) throw new Error("pick a processor stream or state table first");
    if (kind === "stream") {
      await addTile({ live: { title: title.value || `Live: ${name}`, stream: name, limit: 10 }, x: 0, y: 0, w: 6, h: 4 });
    } else {
      await addTile({ state: { title: title.value || name, table: name, prefix: prefix.value, limit: 20, chart: chartKind.value,
        field: field.value.trim() || null }, x: 0, y: 0, w: 6, h: 4 });
    }
    for (const input of [title, prefix, field]) input.value = "";
  };
  showFields();
  return { fields: [h("label", {}, "Processor output", output), h("label", {}, "Title", title), ...stateOnly], add };
}
