// Stream processors: the Processors page (lag, rates, late records, errors, outputs, state lookups)
// and the live view of a processor's output stream. Pages get the app's helpers:
// { view, h, api, table, every(fn, ms) } (`every` timers stop when the page changes).

const POLL_MS = 2000;
const SCAN_LIMIT = 50;

const iso = (ms) => (ms == null ? "" : new Date(ms).toISOString().replace("T", " ").slice(0, 23));
const rate = (x) => (x == null ? "—" : x < 10 ? x.toFixed(1) : Math.round(x).toLocaleString());
const count = (x) => (x == null ? "—" : x.toLocaleString());
const bytes = (n) => {
  if (n == null) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const streamLink = (h, stream, label) => h("a", { class: "stream-link", href: "#/live/" + encodeURIComponent(stream) }, label || stream);

// records in/out per second from two status snapshots of the same run (status.json is rewritten every few seconds)
function rateTracker() {
  const seen = new Map();
  return (p) => {
    const before = seen.get(p.name);
    let rates = before ? before.rates : [null, null];
    if (before && before.run === p.run && p.updated_at > before.updated_at && p.records_in != null && before.records_in != null) {
      const seconds = (p.updated_at - before.updated_at) / 1000;
      rates = [Math.max(0, p.records_in - before.records_in) / seconds, Math.max(0, p.records_out - before.records_out) / seconds];
    }
    if (!before || before.run !== p.run || p.updated_at !== before.updated_at) {
      seen.set(p.name, { run: p.run, updated_at: p.updated_at, records_in: p.records_in, records_out: p.records_out, rates });
    }
    return p.stale ? [null, null] : rates;
  };
}

function stateSearch(app, name) {
  const { h, api, table } = app;
  const input = h("input", { name: `state-${name}`, placeholder: "key or key prefix", size: 30 });
  const out = h("div", { class: "state-result" });
  const error = h("div", { class: "error" });
  const search = async (start) => {
    error.textContent = "";
    try {
      const params = new URLSearchParams({ prefix: input.value.trim(), limit: String(SCAN_LIMIT) });
      if (start) params.set("start", start);
      const page = await api(`/api/state/${encodeURIComponent(name)}?${params}`);
      if (!start) out.replaceChildren();
      out.querySelector(".more")?.remove();
      if (!page.rows.length && !start) out.append(h("div", { class: "muted" }, input.value ? `no key starts with "${input.value.trim()}"` : "empty"));
      else out.append(table(["key", "value", "event time"], page.rows.map((r) => [r.key, r.value, iso(r.event_time)])));
      if (page.next) out.append(h("button", { class: "ghost more", onclick: () => search(page.next) }, "More"));
    } catch (err) { error.textContent = err.message; }
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
  return h("div", { class: "state-table", "data-table": name },
    h("h3", {}, "State table ", h("code", {}, name)),
    h("div", {}, input, " ", h("button", { class: "state-search", onclick: () => search() }, "Search"),
      h("span", { class: "muted" }, `  GET /api/state/${name}/<key>`)),
    error, out);
}

function processorCard(app, p) {
  const { h } = app;
  const outputs = p.outputs || {};
  const list = (label, items) => (items.length ? h("div", {}, h("span", { class: "muted" }, label + ": "), ...items.flatMap((x, i) => (i ? [", ", x] : [x]))) : "");
  return h("div", { class: "card processor", "data-processor": p.name },
    h("h2", {}, p.name, p.description ? h("span", { class: "muted" }, "  · " + p.description) : ""),
    h("div", { class: "muted" }, `reads ${p.input} · run ${p.run} since ${iso(p.started_at)} · ${p.partitions ?? "?"} partitions`),
    list("Output streams", (outputs.streams || []).map((s) => streamLink(h, s))),
    list("Side streams", [streamLink(h, `${p.name}.late`, "late records"), streamLink(h, `${p.name}.errors`, "dead letters")]),
    list("Iceberg tables", (outputs.tables || []).map((t) => h("code", {}, t))),
    list("Sinks", (outputs.sinks || []).map((s) => h("code", {}, s))),
    ...(outputs.state_tables || []).map((t) => stateSearch(app, t)));
}

export async function processorsPage(app) {
  const { view, h, api, table, every } = app;
  const summary = h("div");
  const cards = h("div");
  const error = h("div", { class: "error" });
  const rates = rateTracker();
  let drawn = "";
  const poll = async () => {
    let list;
    try { list = (await api("/api/processors")).processors; error.textContent = ""; }
    catch (err) { error.textContent = err.message; return; }
    summary.replaceChildren(list.length
      ? table(["processor", "status", "input", "lag", "in/s", "out/s", "records in", "records out", "late", "errors", "state", "last error"],
        list.map((p) => {
          const [rateIn, rateOut] = rates(p);
          const status = p.stale ? (p.updated_at ? `stale (${iso(p.updated_at)})` : "no status yet") : "running";
          return [p.name, status, p.input, count(p.lag), rate(rateIn), rate(rateOut), count(p.records_in), count(p.records_out),
            count(p.late), count(p.errors), bytes(p.state_bytes), p.last_error ?? ""];
        }))
      : h("div", { class: "muted" }, "No processors yet: list them in the `processors` setting and run `headwater up`, or run `headwater process file.py:pipeline`."));
    const shape = JSON.stringify(list.map((p) => [p.name, p.run, p.outputs]));
    if (shape !== drawn) {  // redraw the cards only when processors or their outputs change (keeps searches)
      drawn = shape;
      cards.replaceChildren(...list.map((p) => processorCard(app, p)));
    }
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Processors"), error, h("div", { id: "processors" }, summary)), cards);
  await poll();
  every(poll, POLL_MS);
}

export function streamLive(app, stream) {
  const { view, h, api, every } = app;
  const filter = h("input", { placeholder: "key", name: "filter" });
  const body = h("tbody");
  const error = h("div", { class: "error" });
  let cursor = null;
  const rows = [];
  const draw = () => {
    const f = filter.value.trim();
    body.replaceChildren(...rows.filter((r) => !f || r.key === f).slice(0, 200).map((r) =>
      h("tr", {}, h("td", {}, (r.time || "").replace("T", " ").slice(0, 23)), h("td", {}, r.key ?? "—"),
        h("td", {}, typeof r.value === "object" && r.value !== null ? JSON.stringify(r.value) : String(r.value ?? "")))));
  };
  const poll = async () => {
    try {
      const params = new URLSearchParams({ stream, limit: cursor ? "200" : "100" });
      if (cursor) params.set("cursor", cursor);
      const page = await api("/api/live?" + params);
      rows.unshift(...(cursor ? page.events.slice().reverse() : page.events));
      rows.length = Math.min(rows.length, 1000);
      cursor = page.cursor;
      error.textContent = "";
      draw();
    } catch (err) { error.textContent = err.message; }
  };
  filter.addEventListener("input", draw);
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Live stream ", h("code", {}, stream)),
    h("div", { class: "muted" }, h("a", { href: "#/processors" }, "← Processors"), "  · newest first; time is the record's event time"),
    h("label", {}, "Filter", filter), error,
    h("table", { id: "live-stream" }, h("thead", {}, h("tr", {}, ["time", "key", "value"].map((c) => h("th", {}, c)))), body)));
  poll();
  every(poll, 1000);
}
