// The insight builder (#/insights).
import { boardTiles, saveBoard } from "./dashboards.js";
import { renderResult } from "./results.js";
import { api, h, view } from "./ui.js";

const DAY = 86400000;
const isoDay = (t) => new Date(t).toISOString().slice(0, 10);

export function parseFilters(text) {
  // "plan=pro, country!=FR" -> insight filters
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((part) => {
    const m = part.match(/^([^!=<>]+?)\s*(!=|>=|<=|=|>|<)\s*(.*)$/);
    if (!m) throw new Error(`filter "${part}": write property=value (or !=, >, >=, <, <=)`);
    const op = { "=": "eq", "!=": "neq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte" }[m[2]];
    const value = ["gt", "gte", "lt", "lte"].includes(op) ? Number(m[3]) : m[3];
    return { property: m[1].trim(), op, value };
  });
}

export function insightsPage() {
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

