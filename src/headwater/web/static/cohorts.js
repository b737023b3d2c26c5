// The Cohorts page (`#/cohorts`, `#/cohorts/<id>`): saved cohorts with their sizes; an editor of conditions
// (did / did not do an event N times in a period, a property's latest value, a funnel step or drop-off, another
// cohort) with a live size preview; for a saved cohort its size over time, its members and the SQL behind it.
// Pages get the app's helpers: { view, h, api, table, chart, every, later, can, params }.
import { cohortSelect, eventPicker, filterRows, OPERATORS, propertyPicker, valuePicker } from "./pickers.js";

const TYPES = [["performed", "did"], ["not_performed", "did not do"], ["property", "has property"],
  ["funnel", "in a funnel"], ["cohort", "in cohort"], ["not_cohort", "not in cohort"]];
const DAY = 86400000;
const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);

// one condition row: a type select and the inputs of that type; get() -> the condition's JSON, or null if incomplete
function conditionRow(app, initial, onChange) {
  const { h } = app;
  const type = h("select", { name: "condition-type", class: "condition-type" }, TYPES.map(([v, label]) => h("option", { value: v }, label)));
  const slot = h("span", { class: "condition-body" });
  const el = h("div", { class: "condition-row" }, type, slot);
  let get = () => null;
  const number = (name, value, attrs = {}) => h("input", { name, type: "number", min: 1, value: value ?? "", style: "width:5em", oninput: onChange, ...attrs });

  const performed = (c) => {
    const event = eventPicker(app, { value: c.event || "", name: "condition-event", onChange: (e) => { filters.setEvent(e); onChange(); } });
    const min = number("min-count", c.min_count ?? 1);
    const max = number("max-count", c.max_count, { placeholder: "any" });
    const days = number("days", c.days ?? (c.date_from ? "" : 30));
    const filters = filterRows(app, { event: c.event || "", filters: c.filters || [], cohorts: false, onChange });
    slot.replaceChildren(event.el, " at least ", min, " and at most ", max, " times in the last ", days, " days ", filters.el);
    return () => {
      if (!event.value()) return null;
      const out = { type: "performed", event: event.value(), min_count: Number(min.value || 1), filters: filters.value() };
      if (max.value) out.max_count = Number(max.value);
      if (days.value) out.days = Number(days.value);
      else if (c.date_from) Object.assign(out, { date_from: c.date_from, date_to: c.date_to });
      return out;
    };
  };
  const property = (c) => {
    const op = h("select", { name: "condition-op", onchange: onChange });
    const value = valuePicker(app, { property: c.property || "", value: c.value ?? "", name: "condition-value", onChange });
    const setOps = (kind, keep) => {
      const ops = OPERATORS[kind] || OPERATORS.string;
      op.replaceChildren(...ops.map(([v, label]) => h("option", { value: v }, label)));
      op.value = ops.some(([v]) => v === keep) ? keep : ops[0][0];
    };
    const name = propertyPicker(app, { value: c.property || "", name: "condition-property", onChange: (p) => {
      value.setTarget(p, ""); setOps(name.type(), op.value); onChange();
    } });
    setOps(typeof c.value === "number" ? "number" : "string", c.op || "eq");
    slot.replaceChildren(name.el, op, value.el, h("span", { class: "muted" }, " (latest value)"));
    return () => {
      if (!name.value()) return null;
      if (op.value === "is_set" || op.value === "is_not_set") return { type: "property", property: name.value(), op: op.value };
      const raw = value.value();
      if (raw === "") return null;
      const numeric = ["gt", "gte", "lt", "lte"].includes(op.value) || name.type() === "number";
      return { type: "property", property: name.value(), op: op.value, value: numeric && Number.isFinite(Number(raw)) ? Number(raw) : raw };
    };
  };
  const funnel = (c) => {
    const f = c.funnel || {};
    const pickers = [];
    const list = h("span", { class: "funnel-steps" });
    const step = h("select", { name: "funnel-step", onchange: onChange });
    const drawSteps = () => {
      const keep = step.value || String(c.step ?? 1);
      step.replaceChildren(...pickers.map((_, i) => h("option", { value: i }, `step ${i + 1}`)));
      step.value = Number(keep) < pickers.length ? keep : String(pickers.length - 1);
    };
    const addStep = (event = "") => {
      const p = eventPicker(app, { value: event, name: "funnel-event", onChange });
      pickers.push(p);
      list.append(p.el, " → ");
      drawSteps();
    };
    (f.steps?.length ? f.steps.map((s) => s.event) : ["", ""]).forEach(addStep);
    const dropped = h("select", { name: "funnel-dropped", onchange: onChange }, h("option", { value: "" }, "reached"), h("option", { value: "1" }, "dropped before"));
    dropped.value = c.dropped ? "1" : "";
    const from = h("input", { type: "date", name: "funnel-from", value: (f.date_from || isoDay(Date.now() - 30 * DAY)).slice(0, 10), onchange: onChange });
    const to = h("input", { type: "date", name: "funnel-to", value: (f.date_to || isoDay(Date.now() + DAY)).slice(0, 10), onchange: onChange });
    slot.replaceChildren(list, h("button", { class: "ghost", type: "button", onclick: () => addStep() }, "+ step"), " people who ", dropped, " ", step,
      " between ", from, " and ", to);
    return () => {
      const steps = pickers.map((p) => p.value()).filter(Boolean);
      if (steps.length < 2) return null;
      const k = Math.min(Number(step.value), steps.length - 1);
      if (dropped.value && k === 0) return null;
      return { type: "funnel", step: k, dropped: Boolean(dropped.value), funnel: { kind: "funnel", steps: steps.map((event) => ({ event })),
        date_from: from.value + "T00:00:00Z", date_to: to.value + "T00:00:00Z", window_seconds: f.window_seconds || 14 * 86400 } };
    };
  };
  const cohort = (c, negate) => {
    const select = cohortSelect(app, { value: c.cohort_id, onChange, name: "condition-cohort" });
    slot.replaceChildren(select.el);
    return () => (select.value() ? { type: "cohort", cohort_id: select.value(), negate } : null);
  };
  const build = (kind, c = {}) => {
    type.value = kind;
    if (kind === "performed" || kind === "not_performed") {
      const inner = performed(c);
      get = () => { const out = inner(); return out && { ...out, negate: kind === "not_performed" }; };
    } else if (kind === "property") get = property(c);
    else if (kind === "funnel") get = funnel(c);
    else get = cohort(c, kind === "not_cohort");
  };
  const kindOf = (c) => (c.type === "performed" ? (c.negate ? "not_performed" : "performed") : c.type === "cohort" ? (c.negate ? "not_cohort" : "cohort") : c.type);
  type.addEventListener("change", () => { build(type.value); onChange(); });
  build(initial ? kindOf(initial) : "performed", initial || {});
  return { el, get: () => get() };
}

function sizeChart(app, el, points) {
  app.chart(el, {
    xAxis: { type: "category", data: points.map(([at]) => at.slice(0, 16).replace("T", " ")) },
    yAxis: { type: "value", minInterval: 1 },
    series: [{ type: "line", name: "members", data: points.map(([, size]) => size), areaStyle: { opacity: 0.15 } }],
  });
}

// size over time, members and SQL of a saved cohort
async function details(app, cohort, box) {
  const { h, api, table } = app;
  const days = h("select", { name: "sizes-days" }, [[7, "7 days"], [30, "30 days"], [90, "90 days"]].map(([v, l]) => h("option", { value: v }, l)));
  days.value = "30";
  const plot = h("div", { class: "chart", id: "cohort-sizes" });
  const status = h("div", { class: "muted" });
  const members = h("div", { id: "cohort-members" });
  const sql = h("pre", { class: "sql", id: "cohort-sql" });
  box.replaceChildren(h("div", { class: "card" }, h("h3", {}, "Size over time "), h("label", {}, "Range ", days), status, plot),
    h("div", { class: "card" }, h("h3", {}, "Members"), members),
    h("details", { class: "card" }, h("summary", {}, "View SQL"), sql));
  const draw = async () => {
    status.textContent = "computing…";
    try {
      const interval = Number(days.value) > 30 ? "week" : "day";
      const found = await api(`/api/cohorts/${cohort.id}/sizes?days=${days.value}&interval=${interval}`);
      status.textContent = `size at the end of each ${interval} (the definition applied to the events before it)`;
      sizeChart(app, plot, found.points);
    } catch (err) { status.textContent = err.message; }
  };
  days.addEventListener("change", draw);
  const listing = api(`/api/cohorts/${cohort.id}/members?limit=100`).then((found) => {
    sql.textContent = found.sql;
    const rows = found.members.map((m) => [h("a", { href: `#/timeline/${encodeURIComponent(m)}` }, m)]);
    members.replaceChildren(h("div", { class: "muted" }, `${found.size} member${found.size === 1 ? "" : "s"}${found.truncated ? ", the first 100 shown" : ""}`),
      rows.length ? h("table", { class: "members" }, h("tbody", {}, rows.map((r) => h("tr", {}, h("td", {}, r))))) : table(["member"], []));
  }).catch((err) => { members.textContent = err.message; });
  await Promise.all([draw(), listing]);
}

export async function cohortsPage(app, arg) {
  const { view, h, api, can } = app;
  const id = arg ? Number(arg) : null;
  const list = h("tbody");
  const error = h("div", { class: "error" });
  view.replaceChildren(h("div", { class: "card", id: "cohorts-page" }, h("h2", {}, "Cohorts"),
    h("div", { class: "muted intro" }, "Groups of people defined by what they did or who they are. Use them as a filter or breakdown in any insight."),
    can("analyze") ? h("a", { class: "button", href: "#/cohorts/new", id: "new-cohort" }, "+ New cohort") : "", error,
    h("table", { id: "cohorts" }, h("thead", {}, h("tr", {}, ["name", "size", "updated", "by"].map((c) => h("th", {}, c)))), list)));
  const loadList = async () => {
    try {
      const cohorts = await api("/api/cohorts?sizes=true");
      list.replaceChildren(...cohorts.map((c) => h("tr", { "data-id": c.id },
        h("td", {}, h("a", { href: `#/cohorts/${c.id}` }, c.name)), h("td", { class: "size" }, String(c.size ?? "")),
        h("td", {}, new Date(c.updated_ms).toISOString().slice(0, 16).replace("T", " ")), h("td", {}, c.created_by))));
      if (!cohorts.length) list.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No cohorts yet: create one with “+ New cohort”.")));
    } catch (err) { error.textContent = err.message; }
  };
  const listed = loadList();
  if (arg === undefined || arg === null || arg === "") return listed;
  const cohort = id ? await api(`/api/cohorts/${id}`).catch((err) => { error.textContent = err.message; return null; }) : null;
  if (id && !cohort) return listed;
  view.append(editor(app, cohort, loadList));
  if (cohort) {
    const box = h("div", { id: "cohort-details" });
    view.append(box);
    await details(app, cohort, box);
  }
  await listed;
}

function editor(app, cohort, reload) {
  const { h, api, can } = app;
  const definition = cohort?.definition || { name: "", match: "all", conditions: [] };
  const name = h("input", { name: "cohort-name", placeholder: "name, e.g. Repeat buyers", value: definition.name || "", style: "width:22em" });
  const description = h("input", { name: "cohort-description", placeholder: "description (optional)", value: definition.description || "", style: "width:30em" });
  const match = h("select", { name: "cohort-match" }, h("option", { value: "all" }, "all of"), h("option", { value: "any" }, "any of"));
  match.value = definition.match || "all";
  const rows = [];
  const list = h("div", { class: "condition-list" });
  const size = h("div", { class: "cohort-size", id: "cohort-preview" }, "");
  const sql = h("pre", { class: "sql", id: "cohort-preview-sql" });
  const status = h("div", { class: "error" });
  let timer = null;
  let token = 0;
  const body = () => ({ name: name.value.trim(), description: description.value.trim(), match: match.value,
    conditions: rows.map((r) => r.get()).filter(Boolean) });
  const preview = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const doc = body();
      if (!doc.conditions.length) { size.textContent = "add a complete condition to see the size"; return; }
      const mine = ++token;
      size.textContent = "counting…";
      try {
        const found = await api("/api/cohorts/preview", { method: "POST", body: { ...doc, name: doc.name || "preview" } });
        if (mine !== token) return;
        size.textContent = `${found.size} ${found.size === 1 ? "person" : "people"} now`;
        sql.textContent = found.sql;
        status.textContent = "";
      } catch (err) { if (mine === token) { size.textContent = ""; status.textContent = err.message; } }
    }, 400);
  };
  const addRow = (c) => {
    const row = conditionRow(app, c, preview);
    const remove = h("button", { class: "ghost icon", type: "button", title: "remove this condition", onclick: () => { rows.splice(rows.indexOf(row), 1); row.el.remove(); preview(); } }, "×");
    row.el.append(remove);
    rows.push(row);
    list.append(row.el);
  };
  (definition.conditions.length ? definition.conditions : [null]).forEach(addRow);
  for (const el of [match]) el.addEventListener("change", preview);
  const save = async () => {
    const doc = body();
    if (!doc.name) { status.textContent = "name: required"; return; }
    try {
      const saved = await api(cohort ? `/api/cohorts/${cohort.id}` : "/api/cohorts", { method: cohort ? "PUT" : "POST", body: doc });
      status.textContent = "";
      if (cohort) { await reload(); location.hash = `#/cohorts/${saved.id}`; window.dispatchEvent(new HashChangeEvent("hashchange")); }
      else location.hash = `#/cohorts/${saved.id}`;
    } catch (err) { status.textContent = err.message; }
  };
  const remove = async () => {
    if (!confirm(`Delete the cohort “${cohort.name}”?`)) return;
    try { await api(`/api/cohorts/${cohort.id}`, { method: "DELETE" }); location.hash = "#/cohorts"; } catch (err) { status.textContent = err.message; }
  };
  const writable = can("analyze");
  const card = h("div", { class: "card", id: "cohort-editor" }, h("h3", {}, cohort ? `Cohort: ${cohort.name}` : "New cohort"),
    h("div", {}, name, " ", description), h("div", {}, "People who match ", match, " these conditions:"), list,
    h("button", { class: "ghost", type: "button", id: "add-condition", onclick: () => { addRow(null); } }, "+ Condition"),
    h("div", { class: "preview" }, size),
    writable ? h("button", { id: "save-cohort", onclick: save }, cohort ? "Save changes" : "Save cohort") : "",
    writable && cohort ? h("button", { class: "ghost danger", id: "delete-cohort", onclick: remove }, "Delete") : "",
    status, h("details", {}, h("summary", {}, "View SQL"), sql));
  preview();
  return card;
}
