// The insight builder (#/insights?q=<URL-encoded JSON>): pickers instead of typing, re-runs (debounced) on
// every change, and the URL holds the whole insight, so back/forward and pasted links restore it.
// The JSON in `q` is the insight spec (as POST /api/insights takes it) plus `range`: "24h" | "7d" | "30d" |
// "90d" (relative to now, computed at each run) or "custom" (the spec's own date_from / date_to).
// `#/insights?id=<saved insight id>` opens a saved insight. With no query it opens on the most frequent
// event as a daily trend over the last 7 days.
import { boardTiles, saveBoard } from "./dashboards.js";
import { eventPicker, filterRows, loadCohorts, loadEvents, propertyPicker, valuePicker } from "./pickers.js";
import { renderResult } from "./results.js";
import { api, can, h, view as currentView } from "./ui.js";

const HOUR = 3600000;
const DAY = 86400000;
export const KINDS = [["trend", "Trends"], ["funnel", "Funnels"], ["retention", "Retention"], ["journey", "Journeys"], ["experiment", "Experiments"], ["timeline", "User timeline"]];
export const RANGES = [["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["90d", "Last 90 days"], ["custom", "Custom"]];
const MEASURES = [["count", "Total events"], ["users", "Unique users"], ["sum", "Sum of"], ["avg", "Average of"], ["min", "Min of"], ["max", "Max of"],
  ["p50", "Median of"], ["p90", "90th pct of"], ["p95", "95th pct of"], ["p99", "99th pct of"]];
const DATED = new Set(["trend", "funnel", "retention", "journey", "experiment"]);
const DEBOUNCE_MS = 350;

export function parseFilters(text) {
  const view = currentView;  // this route's element
  // "plan=pro, country!=FR" -> insight filters (the dashboards page's text filters use it)
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((part) => {
    const m = part.match(/^([^!=<>]+?)\s*(!=|>=|<=|=|>|<)\s*(.*)$/);
    if (!m) throw new Error(`filter "${part}": write property=value (or !=, >, >=, <, <=)`);
    const op = { "=": "eq", "!=": "neq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte" }[m[2]];
    const value = ["gt", "gte", "lt", "lte"].includes(op) ? Number(m[3]) : m[3];
    return { property: m[1].trim(), op, value };
  });
}

// [date_from, date_to] of a relative range: whole hours for 24 h, whole UTC days otherwise (the last one
// partial), so the same range gives the same query (and cache entry) for a while
export function rangeDates(range, now = Date.now()) {
  if (range === "24h") {
    const to = Math.ceil(now / HOUR) * HOUR;
    return [new Date(to - 24 * HOUR), new Date(to)];
  }
  const days = { "7d": 7, "30d": 30, "90d": 90 }[range] || 7;
  const to = Math.floor(now / DAY) * DAY + DAY;
  return [new Date(to - days * DAY), new Date(to)];
}

// the spec POST /api/insights takes: relative ranges become dates, empty parts are dropped
export function toSpec(state) {
  const view = currentView;  // this route's element
  const spec = structuredClone(state);
  delete spec.range;
  if (DATED.has(spec.kind) && state.range !== "custom") {
    const [from, to] = rangeDates(state.range);
    spec.date_from = from.toISOString();
    spec.date_to = to.toISOString();
  }
  for (const key of ["breakdown", "breakdown_cohorts", "anomalies", "forecast", "compare", "control"]) {
    if (!spec[key] || (Array.isArray(spec[key]) && !spec[key].length)) delete spec[key];
  }
  if (spec.breakdown !== "$cohort") delete spec.breakdown_cohorts;
  if (spec.kind === "trend") spec.series = spec.series.filter((s) => s.event).map((s) => (s.measure === "count" || s.measure === "users" ? { ...s, property: undefined } : s));
  if (spec.kind === "funnel") spec.steps = spec.steps.filter((s) => s.event);
  if (spec.exclusions) spec.exclusions = spec.exclusions.filter((x) => x.event);
  return JSON.parse(JSON.stringify(spec));  // drops undefined
}

// what is missing before the insight can run ("" when it can)
export function missing(state) {
  const view = currentView;  // this route's element
  const k = state.kind;
  if (k === "trend" && !state.series.some((s) => s.event)) return "Pick an event to chart.";
  if (k === "trend" && state.series.some((s) => s.event && !["count", "users"].includes(s.measure) && !s.property)) return "Pick a numeric property to measure.";
  if (k === "funnel" && state.steps.filter((s) => s.event).length < 2) return "Pick at least two funnel steps.";
  if (k === "retention" && !(state.start_event && state.return_event)) return "Pick a start event and a return event.";
  if (k === "journey" && !state.event) return "Pick the event journeys start (or end) at.";
  if (k === "experiment" && !(state.exposure_event && state.goal_event && state.variant_property)) return "Pick the exposure event, the variant property and the goal event.";
  if (k === "timeline" && !state.person) return "Type a user id (or anonymous id) to see their events.";
  if (state.breakdown === "$cohort" && !(state.breakdown_cohorts || []).length) return "Pick the cohorts to break down by.";
  return "";
}

// a fresh state for `kind`, carrying over the events, range and filters of `from`
export function defaults(kind, from = {}, top = []) {
  const view = currentView;  // this route's element
  const events = from.kind === "trend" ? from.series.map((s) => s.event) : from.kind === "funnel" ? from.steps.map((s) => s.event)
    : [from.start_event, from.return_event, from.event, from.exposure_event, from.goal_event];
  const picked = [...new Set(events.filter(Boolean))];
  const pool = [...picked, ...top.filter((e) => !picked.includes(e))];
  const base = { kind, range: from.range || "7d", ...(from.range === "custom" ? { date_from: from.date_from, date_to: from.date_to } : {}) };
  const filters = from.filters || [];
  if (kind === "trend") return { ...base, series: [{ event: pool[0] || "", measure: "count" }], interval: base.range === "24h" ? "hour" : "day", filters };
  if (kind === "funnel") return { ...base, steps: [pool[0] || "", pool[1] || "", ...(picked.length > 2 ? picked.slice(2) : [])].map((event) => ({ event })), window_seconds: 14 * 86400, order: "ordered", exclusions: [], filters };
  if (kind === "retention") return { ...base, range: base.range === "24h" || base.range === "7d" ? "90d" : base.range, start_event: pool[0] || "", return_event: pool[1] || pool[0] || "", period: "week", periods: 8, filters };
  if (kind === "journey") return { ...base, event: pool[0] || "", direction: "after", depth: 4, filters };
  if (kind === "experiment") {
    const exposure = top.includes("$experiment_started") ? "$experiment_started" : pool[0] || "";
    return { ...base, range: base.range === "24h" || base.range === "7d" ? "30d" : base.range, exposure_event: exposure, variant_property: "variant",
      goal_event: pool.find((e) => e !== exposure) || "", window_seconds: 14 * 86400, filters };
  }
  return { kind: "timeline", person: "", limit: 200 };
}

export const stateFromHash = (params) => {
  const q = params.get("q");
  if (!q) return null;
  const state = JSON.parse(q);
  if (!KINDS.some(([k]) => k === state.kind)) throw new Error(`unknown insight kind ${state.kind}`);
  if (DATED.has(state.kind) && !state.range) state.range = state.date_from ? "custom" : "7d";
  return state;
};
export const hashOf = (state) => "#/insights?q=" + encodeURIComponent(JSON.stringify(state));

// ---------- form pieces
const field = (label, ...inputs) => h("label", {}, label, ...inputs);
const select = (name, options, value, onchange) => {
  const el = h("select", { name, onchange: () => onchange(el.value) }, options.map(([v, label]) => h("option", { value: v }, label ?? v)));
  el.value = String(value);
  return el;
};
const numberInput = (name, value, onchange, attrs = {}) => {
  const el = h("input", { name, type: "number", value, style: "width:6em", ...attrs, onchange: () => el.value !== "" && onchange(Number(el.value)) });
  return el;
};
const isoDate = (iso) => (iso ? new Date(iso).toISOString().slice(0, 10) : "");

export async function insightsPage(app) {
  const view = currentView;  // this route's element
  const params = app.params || new URLSearchParams();
  const kindTabs = h("div", { class: "kind-tabs", role: "tablist" });
  const form = h("div", { class: "builder-form" });
  const status = h("div", { class: "status muted", id: "status" });
  const out = h("div", { id: "result" });
  const sql = h("pre", { class: "sql" });
  const error = h("div", { class: "error", id: "insight-error" });
  const actions = h("div", { class: "builder-actions" });
  const rerun = h("button", { type: "button", class: "ghost", id: "run", title: "run again (new data)", onclick: () => run() }, "Run again");
  const root = h("div", { class: "builder" },
    h("div", { class: "card" }, h("div", { class: "builder-head" }, h("h2", {}, "Insight builder"), kindTabs), form),
    h("div", { class: "card result-card" }, h("div", { class: "result-head" }, status, rerun), error, out, h("details", { class: "view-sql" }, h("summary", {}, "View SQL"), sql)),
    actions);
  view.replaceChildren(root);

  let top = [];
  let state;
  let timer = null;
  let runs = 0;
  let savedId = null;

  const schedule = (immediate = false, replace = false) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (!root.isConnected) return;
      const hash = hashOf(state);
      if (location.hash !== hash) history[replace ? "replaceState" : "pushState"](null, "", hash);
      run();
    }, immediate ? 0 : DEBOUNCE_MS);
  };
  let eventAware = [];  // the breakdown and filter pickers of the form: they suggest the first event's properties
  const changed = (patch, rerender = false) => {
    Object.assign(state, patch);
    eventAware.forEach((p) => p.setEvent(firstEvent()));
    savedId = null;
    if (rerender) renderForm();
    renderActions();
    schedule();
  };

  const run = async () => {
    const mine = ++runs;
    const why = missing(state);
    error.textContent = "";
    if (why) {
      status.textContent = why;
      out.replaceChildren();
      sql.textContent = "";
      return;
    }
    const spec = toSpec(state);
    status.textContent = "running…";
    root.classList.add("running");
    try {
      const answer = await api("/api/insights", { method: "POST", body: spec });
      if (mine !== runs || !root.isConnected) return;
      sql.textContent = answer.sql + (answer.history_sql ? `\n\n-- the band's history (the span before)\n${answer.history_sql}` : "");
      renderResult(out, answer.kind, answer.result, { spec });
      status.textContent = `${answer.cached ? "from cache" : `${answer.elapsed_ms} ms`}${answer.truncated ? " · truncated" : ""}${answer.answered_by === "rollup" ? " · from rollups" : ""}`;
    } catch (err) {
      if (mine !== runs) return;
      status.textContent = "";
      out.replaceChildren();
      error.textContent = err.message;
    } finally {
      if (mine === runs) root.classList.remove("running");
    }
  };

  // ---------- the form for the current kind
  const rangeField = () => {
    const from = h("input", { name: "from", type: "date", value: isoDate(state.date_from) });
    const to = h("input", { name: "to", type: "date", value: state.date_to ? isoDate(new Date(new Date(state.date_to) - DAY)) : "" });
    const custom = h("span", { class: "custom-range" }, field("From", from), field("To (inclusive)", to));
    const setCustom = () => {
      if (!from.value || !to.value) return;
      changed({ date_from: from.value + "T00:00:00Z", date_to: new Date(new Date(to.value + "T00:00:00Z").getTime() + DAY).toISOString().replace(".000", "") });
    };
    from.addEventListener("change", setCustom);
    to.addEventListener("change", setCustom);
    custom.style.display = state.range === "custom" ? "" : "none";
    const presets = h("div", { class: "presets", role: "group" }, RANGES.map(([value, label]) => h("button", {
      type: "button", class: "preset" + (state.range === value ? " on" : ""), "data-range": value,
      onclick: () => {
        const patch = { range: value };
        if (value === "custom") {
          const [f, t] = rangeDates(state.range === "custom" ? "7d" : state.range);
          patch.date_from = state.date_from || f.toISOString();
          patch.date_to = state.date_to || t.toISOString();
        }
        if (state.kind === "trend" && value !== "custom") patch.interval = value === "24h" ? "hour" : state.interval === "hour" ? "day" : state.interval;
        changed(patch, true);
      } }, label)));
    return h("div", { class: "row" }, field("Date range", presets), custom);
  };

  const breakdownField = () => {
    const cohortsBox = h("span", { class: "breakdown-cohorts" });
    const showCohorts = () => {
      cohortsBox.replaceChildren();
      if (state.breakdown !== "$cohort") return;
      loadCohorts(app).then((list) => {
        const chosen = new Set(state.breakdown_cohorts || []);
        cohortsBox.replaceChildren(...(list.length ? list.map((c) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "breakdown-cohort", value: c.id, ...(chosen.has(c.id) ? { checked: "" } : {}),
          onchange: (e) => {
            if (e.target.checked) chosen.add(c.id); else chosen.delete(c.id);
            changed({ breakdown_cohorts: [...chosen] });
          } }), c.name)) : [h("span", { class: "muted" }, "no saved cohorts yet: define one on the Cohorts page")]));
      });
    };
    const picker = propertyPicker(app, { event: firstEvent(), value: state.breakdown || "", name: "breakdown", placeholder: "none", cohorts: true,
      onChange: (v) => { changed({ breakdown: v || undefined, breakdown_cohorts: v === "$cohort" ? state.breakdown_cohorts || [] : undefined }); showCohorts(); } });
    eventAware.push(picker);
    const clear = h("button", { type: "button", class: "ghost icon", title: "no breakdown", onclick: () => { picker.set(""); changed({ breakdown: undefined, breakdown_cohorts: undefined }); showCohorts(); } }, "×");
    showCohorts();
    return field("Breakdown", h("span", { class: "inline" }, picker.el, clear), cohortsBox);
  };

  const filtersField = () => {
    const rows = filterRows(app, { event: firstEvent(), filters: state.filters || [], onChange: (v) => changed({ filters: v }) });
    eventAware.push(rows);
    return h("div", { class: "row filters" }, h("span", { class: "row-label" }, "Filters"), rows.el);
  };

  const firstEvent = () => (state.kind === "trend" ? state.series[0]?.event : state.kind === "funnel" ? state.steps[0]?.event : state.start_event || state.event || state.exposure_event) || "";

  const eventField = (label, key, name) => field(label, eventPicker(app, { value: state[key] || "", name, onChange: (v) => changed({ [key]: v }) }).el);

  const trendForm = () => {
    const list = h("div", { class: "series-list" });
    state.series.forEach((s, i) => {
      const property = propertyPicker(app, { event: s.event, value: s.property || "", numeric: true, name: "measure-property", placeholder: "numeric property",
        onChange: (v) => { s.property = v || undefined; changed({}); } });
      property.el.style.display = ["count", "users"].includes(s.measure) ? "none" : "";
      const event = eventPicker(app, { value: s.event, name: "series-event", onChange: (v) => { s.event = v; property.setEvent(v); changed({}); } });
      const measure = select("measure", MEASURES, s.measure || "count", (v) => {
        s.measure = v;
        property.el.style.display = ["count", "users"].includes(v) ? "none" : "";
        changed({});
      });
      const remove = state.series.length > 1 ? h("button", { type: "button", class: "ghost icon", title: "remove this series", onclick: () => { state.series.splice(i, 1); changed({}, true); } }, "×") : "";
      list.append(h("div", { class: "series-row" }, h("span", { class: "letter" }, String.fromCharCode(65 + i)), event.el, measure, property.el, remove));
    });
    const add = state.series.length < 10 ? h("button", { type: "button", class: "ghost add-series", onclick: () => { state.series.push({ event: "", measure: "count" }); changed({}, true); } }, "+ Series") : "";
    const forecast = numberInput("forecast", state.forecast || 0, (v) => changed({ forecast: Math.max(0, Math.min(366, v)) }), { min: 0, max: 366 });
    forecast.disabled = !state.forecast;
    const forecastOn = h("input", { type: "checkbox", name: "forecast-on", ...(state.forecast ? { checked: "" } : {}), onchange: (e) => {
      const ahead = e.target.checked ? { hour: 48, day: 14, week: 8, month: 3 }[state.interval || "day"] : 0;
      changed({ forecast: ahead }, true);
    } });
    const toggle = (name, key, label) => h("label", { class: "check" }, h("input", { type: "checkbox", name, ...(state[key] ? { checked: "" } : {}), onchange: (e) => changed({ [key]: e.target.checked }) }), label);
    return [h("div", { class: "row" }, h("span", { class: "row-label" }, "Series"), list, add), rangeField(),
      h("div", { class: "row" }, field("Interval", select("interval", [["hour"], ["day"], ["week"], ["month"]], state.interval || "day", (v) => changed({ interval: v }))), breakdownField(),
        h("span", { class: "toggles" }, toggle("compare", "compare", "Compare with previous period"), toggle("anomalies", "anomalies", "Anomaly band"),
          h("label", { class: "check" }, forecastOn, "Forecast"), h("span", { class: "forecast-ahead", style: state.forecast ? "" : "display:none" }, forecast, " intervals ahead"))),
      filtersField()];
  };

  const funnelForm = () => {
    const list = h("ol", { class: "steps-list" });
    state.steps.forEach((s, i) => {
      const remove = state.steps.length > 2 ? h("button", { type: "button", class: "ghost icon", title: "remove this step", onclick: () => { state.steps.splice(i, 1); changed({}, true); } }, "×") : "";
      list.append(h("li", { class: "step-row" }, eventPicker(app, { value: s.event, name: "step-event", onChange: (v) => { s.event = v; changed({}); } }).el, remove));
    });
    const add = state.steps.length < 10 ? h("button", { type: "button", class: "ghost add-step", onclick: () => { state.steps.push({ event: "" }); changed({}, true); } }, "+ Step") : "";
    const exclusions = h("div", { class: "exclusions" }, (state.exclusions || []).map((x, i) => h("span", { class: "inline" },
      eventPicker(app, { value: x.event, name: "exclusion", onChange: (v) => { x.event = v; changed({}); } }).el,
      h("button", { type: "button", class: "ghost icon", title: "remove", onclick: () => { state.exclusions.splice(i, 1); changed({}, true); } }, "×"))),
    h("button", { type: "button", class: "ghost", onclick: () => { state.exclusions = [...(state.exclusions || []), { event: "" }]; renderForm(); } }, "+ Exclude an event"));
    return [h("div", { class: "row" }, h("span", { class: "row-label" }, "Steps"), list, add), rangeField(),
      h("div", { class: "row" }, field("Conversion window (days)", numberInput("window", state.window_seconds / 86400, (v) => changed({ window_seconds: Math.max(1, Math.round(v * 86400)) }), { min: 1 })),
        field("Order", select("order", [["ordered", "in order"], ["strict", "strictly in order"], ["any", "any order"]], state.order || "ordered", (v) => changed({ order: v }))),
        breakdownField()),
      h("div", { class: "row" }, h("span", { class: "row-label" }, "Exclusions"), exclusions), filtersField()];
  };

  const retentionForm = () => [h("div", { class: "row" }, eventField("People who did", "start_event", "start-event"), eventField("and came back to do", "return_event", "return-event"),
    field("Period", select("period", [["day"], ["week"], ["month"]], state.period || "week", (v) => changed({ period: v }))),
    field("Periods", numberInput("periods", state.periods || 8, (v) => changed({ periods: Math.max(1, Math.min(60, v)) }), { min: 1, max: 60 }))), rangeField(), filtersField()];

  const journeyForm = () => [h("div", { class: "row" }, eventField("Journeys from", "event", "journey-event"),
    field("Direction", select("direction", [["after", "what people do after it"], ["before", "what people did before it"]], state.direction || "after", (v) => changed({ direction: v }))),
    field("Depth", numberInput("depth", state.depth || 4, (v) => changed({ depth: Math.max(1, Math.min(10, v)) }), { min: 1, max: 10 }))), rangeField(), filtersField()];

  const experimentForm = () => {
    const control = valuePicker(app, { property: state.variant_property, event: state.exposure_event, value: state.control || "", name: "control", placeholder: "first variant",
      onChange: (v) => changed({ control: v || undefined }) });
    const variant = propertyPicker(app, { event: state.exposure_event, value: state.variant_property || "", name: "variant", onChange: (v) => { control.setTarget(v, state.exposure_event); changed({ variant_property: v }); } });
    const exposure = eventPicker(app, { value: state.exposure_event || "", name: "exposure-event", onChange: (v) => { variant.setEvent(v); control.setTarget(state.variant_property, v); changed({ exposure_event: v }); } });
    return [h("div", { class: "row" }, field("Exposure event", exposure.el), field("Variant property", variant.el), field("Control variant", control.el),
      eventField("Goal event", "goal_event", "goal-event"),
      field("Window (days)", numberInput("window", state.window_seconds / 86400, (v) => changed({ window_seconds: Math.max(1, Math.round(v * 86400)) }), { min: 1 }))), rangeField(), filtersField()];
  };

  const timelineForm = () => {
    const person = valuePicker(app, { property: "user_id", value: state.person || "", name: "person", placeholder: "user or anonymous id", onChange: (v) => changed({ person: v }) });
    return [h("div", { class: "row" }, field("User", person.el), field("Events", numberInput("limit", state.limit || 200, (v) => changed({ limit: Math.max(1, Math.min(5000, v)) }), { min: 1, max: 5000 })))];
  };

  const renderForm = () => {
    kindTabs.replaceChildren(...KINDS.map(([k, label]) => h("button", { type: "button", role: "tab", class: "kind" + (state.kind === k ? " on" : ""), "data-kind": k, "aria-selected": String(state.kind === k),
      onclick: () => { if (state.kind !== k) { state = defaults(k, state, top); savedId = null; renderForm(); renderActions(); schedule(); } } }, label)));
    eventAware = [];
    const parts = { trend: trendForm, funnel: funnelForm, retention: retentionForm, journey: journeyForm, experiment: experimentForm, timeline: timelineForm }[state.kind]();
    form.replaceChildren(...parts);
  };

  // ---------- save, alert, copy link
  const saveName = h("input", { name: "save-name", placeholder: "name to save as" });
  const boards = h("select", { name: "dashboard" }, h("option", { value: "" }, "— no dashboard —"));
  const saveMessage = h("span", { class: "muted save-message", id: "save-message" });
  const alertSlot = h("span");
  const save = async () => {
    saveMessage.textContent = "";
    try {
      const saved = await api("/api/saved-insights", { method: "POST", body: { name: saveName.value || "Untitled", query: toSpec(state) } });
      if (boards.value) {
        const board = await api("/api/dashboards/" + boards.value);
        const tiles = boardTiles(board);
        tiles.push({ insight_id: saved.id, x: 0, y: tiles.length * 4, w: 12, h: 4 });
        await saveBoard(board, { tiles });
      }
      savedId = saved.id;
      renderActions();
      saveMessage.textContent = `saved as insight ${saved.id}` + (boards.value ? " and added to the dashboard" : "");
    } catch (err) { saveMessage.textContent = err.message; }
  };
  const copyLink = async () => {
    const link = location.origin + location.pathname + hashOf(state);
    try { await navigator.clipboard.writeText(link); saveMessage.textContent = "link copied"; } catch { saveMessage.textContent = link; }
  };
  const renderActions = () => {
    alertSlot.replaceChildren(savedId && state.kind === "trend" ? h("a", { class: "button ghost", id: "alert-me", href: `#/alerts?insight=${savedId}` }, "Alert me") : "");
  };
  if (can("analyze")) {
    api("/api/dashboards").then((list) => boards.append(...list.map((b) => h("option", { value: b.id }, b.name)))).catch(() => {});
    actions.replaceChildren(h("div", { class: "card save-bar" }, h("h2", {}, "Save"), field("Name", saveName), field("Add to dashboard", boards),
      h("button", { id: "save", onclick: save }, "Save insight"), " ", alertSlot, " ", h("button", { class: "ghost", id: "copy-link", onclick: copyLink }, "Copy link"), " ", saveMessage));
  } else actions.replaceChildren(h("div", { class: "card save-bar" }, h("button", { class: "ghost", id: "copy-link", onclick: copyLink }, "Copy link"), " ", saveMessage));

  // ---------- start: the URL's insight, a saved one, or the default
  try {
    state = stateFromHash(params);
    if (!state && params.get("id")) {
      const saved = await api("/api/saved-insights/" + encodeURIComponent(params.get("id")));
      state = { ...saved.query, range: DATED.has(saved.query.kind) ? "custom" : undefined };
      saveName.value = saved.name || "";
    }
  } catch (err) {
    error.textContent = `could not open this insight: ${err.message}`;
    state = null;
  }
  const events = await loadEvents(app).catch(() => []);
  top = events.map((e) => e.event);
  if (!state) {
    state = defaults("trend", {}, top);
    history.replaceState(null, "", hashOf(state));
  }
  renderForm();
  renderActions();
  if (!top.length && missing(state)) status.textContent = "No events yet: send some (see Live events, or run `headwater generate --scenario shop`), then pick them here.";
  else schedule(true, true);
}
