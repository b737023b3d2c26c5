// The Plan page: the tracking plan's versions (active per source), each event with its properties (type,
// required, description, personal data), the sources sending it, its volume and violation rate, the diff
// between two versions, and the catalog: planned events next to events seen but not planned.
// Pages get the app's helpers: { view, h, api, every(fn, ms), can(permission) }.

const DAYS = 30;
const LEVELS = { MODEL: "bad", REVISION: "warn", ADDITION: "ok" };
const STATUS = { planned: "ok", "partly planned": "warn", "not planned": "bad", "planned, not seen": "off" };

const count = (x) => (x == null ? "—" : Number(x).toLocaleString());
const percent = (x) => (x == null ? "—" : x === 0 ? "0 %" : x < 0.001 ? "< 0.1 %" : `${(100 * x).toFixed(1)} %`);
const refOf = (v) => `${v.name}@${v.version}`;

function grid(h, columns, rows, attrs = {}) {
  const cell = (v) => h("td", {}, v instanceof Node ? v : v == null ? "" : String(v));
  return h("table", attrs, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map(cell))))));
}

const badge = (h, text, cls) => h("span", { class: `badge ${cls || "off"}` }, text);

function properties(h, event) {
  const rows = event.properties.map((p) => h("tr", { "data-path": p.path },
    h("td", {}, h("code", {}, p.path)),
    h("td", {}, p.types.length ? p.types.join(" | ") : "any"),
    h("td", {}, p.required ? "required" : ""),
    h("td", {}, p.personal ? badge(h, `personal: ${p.personal}`, "warn") : "", p.consent ? ` consent: ${p.consent}` : ""),
    h("td", {}, p.description || h("span", { class: "muted" }, "no description"))));
  if (!rows.length) return h("div", { class: "muted" }, "no declared properties");
  return grid(h, ["property", "type", "", "personal data", "description"], rows, { class: "plan-properties" });
}

function violations(h, seen) {
  if (!seen || !seen.violations.length) return "";
  return h("div", { class: "muted" }, "most frequent violations: ",
    seen.violations.flatMap((v, i) => [i ? " · " : "", h("code", {}, v.path), ` ${v.rule} (${count(v.count)})`]));
}

export async function planPage(app) {
  const { view, h, api, can } = app;
  const picker = h("select", { name: "plan-version" });
  const fromSel = h("select", { name: "plan-diff-a" });
  const toSel = h("select", { name: "plan-diff-b" });
  const source = h("input", { name: "plan-source", value: "*", size: 12, title: "a source name, or * for every source" });
  const summary = h("div", { class: "muted", id: "plan-active" });
  const error = h("div", { class: "error" });
  const events = h("div", { id: "plan-events" });
  const diffOut = h("div", { id: "plan-diff" });
  const planned = h("div", { id: "plan-catalog-planned" });
  const unplanned = h("div", { id: "plan-catalog-unplanned" });
  const note = h("div", { class: "muted", id: "plan-note" });
  let catalog = null;
  let listing = null;
  let current = null;

  const seenOf = (name) => (catalog ? catalog.events.find((e) => e.event === name) : null);

  const drawEvents = (plan) => {
    const rows = [];
    for (const event of plan.events) {
      const seen = seenOf(event.name);
      const detail = h("tr", { class: "plan-detail", style: "display:none" },
        h("td", { colspan: 7 }, event.description ? h("div", {}, event.description) : "", properties(h, event), violations(h, seen)));
      const row = h("tr", { class: "plan-event", "data-event": event.name, style: "cursor:pointer",
        onclick: () => { detail.style.display = detail.style.display === "none" ? "" : "none"; } },
      h("td", {}, h("strong", {}, event.name)),
      h("td", {}, badge(h, event.mode, event.mode === "quarantine" ? "bad" : event.mode === "allow" ? "off" : "warn")),
      h("td", {}, String(event.properties.length)),
      h("td", {}, seen && seen.sources.length ? seen.sources.map((s) => s.source).join(", ") : h("span", { class: "muted" }, "not seen")),
      h("td", {}, count(seen ? seen.events + seen.quarantined : 0)),
      h("td", { class: "rate" }, percent(seen ? seen.violation_rate : null)),
      h("td", { class: "muted" }, event.file || ""));
      rows.push(row, detail);
    }
    events.replaceChildren(
      h("div", {}, h("strong", {}, plan.ref), plan.description ? ` — ${plan.description}` : "",
        h("span", { class: "muted" }, `  · default mode ${plan.enforcement} · unplanned events ${plan.unplanned}${plan.naming ? ` · naming ${plan.naming}` : ""}`)),
      grid(h, ["event", "mode", "properties", "sources", `events (${DAYS} d)`, "violation rate", "file"], rows, { class: "plan-events" }),
      h("div", { class: "muted" }, "Click an event for its properties."));
  };

  const showVersion = async () => {
    error.textContent = "";
    if (!picker.value) return;
    const [name, version] = picker.value.split("@");
    try {
      current = await api(`/api/plans/${encodeURIComponent(name)}/${encodeURIComponent(version)}`);
      drawEvents(current);
    } catch (err) { error.textContent = err.message; }
  };

  const drawCatalog = () => {
    if (!catalog) return;
    const plannedRows = catalog.events.filter((e) => e.status !== "not planned").map((e) => h("tr", { "data-event": e.event, "data-status": e.status },
      h("td", {}, e.event), h("td", {}, badge(h, e.status, STATUS[e.status])),
      h("td", {}, e.sources.map((s) => `${s.source}${s.planned ? "" : " (not planned there)"}`).join(", ")),
      h("td", {}, count(e.events + e.quarantined)), h("td", {}, count(e.flagged)), h("td", {}, count(e.quarantined)),
      h("td", { class: "rate" }, percent(e.violation_rate))));
    const unplannedRows = catalog.events.filter((e) => e.status === "not planned").map((e) => h("tr", { "data-event": e.event },
      h("td", {}, e.event), h("td", {}, e.sources.map((s) => s.source).join(", ")), h("td", {}, count(e.events + e.quarantined)),
      h("td", {}, e.last_seen ? String(e.last_seen).slice(0, 19) : "")));
    planned.replaceChildren(plannedRows.length
      ? grid(h, ["event", "status", "sources", "events", "flagged", "quarantined", "violation rate"], plannedRows, { class: "plan-catalog" })
      : h("div", { class: "muted" }, "no active plan"));
    unplanned.replaceChildren(unplannedRows.length
      ? grid(h, ["event", "sources", "events", "last seen"], unplannedRows, { class: "plan-catalog" })
      : h("div", { class: "muted" }, "every event seen is planned"));
    note.textContent = catalog.violations_table ? "" : "Violation details appear once a plan is enforced (the plan_violations table).";
  };

  const compare = async () => {
    error.textContent = "";
    try {
      const d = await api(`/api/plans/diff?a=${encodeURIComponent(fromSel.value)}&b=${encodeURIComponent(toSel.value)}`);
      const rows = d.changes.map((c) => h("tr", { "data-level": c.level }, h("td", {}, badge(h, c.level, LEVELS[c.level])),
        h("td", {}, c.event ?? "plan"), h("td", {}, h("code", {}, c.path)), h("td", {}, c.change)));
      const verdict = d.level ? `highest class ${d.level}: ${d.b} needs version ${d.needs} or later` : "no change";
      diffOut.replaceChildren(h("div", { class: d.version_ok ? "muted" : "error", id: "plan-diff-verdict" }, d.problem || verdict),
        rows.length ? grid(h, ["class", "event", "path", "change"], rows, { class: "plan-diff" }) : "");
    } catch (err) { error.textContent = err.message; }
  };

  const activate = async () => {
    error.textContent = "";
    try {
      await api("/api/plans/activate", { method: "POST", body: { plan: picker.value, source: source.value.trim() || "*" } });
      await load();
    } catch (err) { error.textContent = err.message; }
  };

  const load = async () => {
    listing = await api("/api/plans");
    const keep = picker.value;
    const active = Object.entries(listing.active);
    summary.replaceChildren(...(active.length
      ? ["Active: ", ...active.flatMap(([src, v], i) => [i ? " · " : "", h("strong", {}, src === "*" ? "every source" : src), ` → ${refOf(v)}`])]
      : ["No plan is active: events are not checked."]));
    const options = (sel) => sel.replaceChildren(...listing.versions.map((v) => h("option", { value: refOf(v) },
      `${refOf(v)}${v.active_for.length ? ` (active for ${v.active_for.join(", ")})` : ""}`)));
    [picker, fromSel, toSel].forEach(options);
    const star = listing.active["*"];
    picker.value = keep || (star ? refOf(star) : listing.versions[0] ? refOf(listing.versions[0]) : "");
    if (listing.versions.length > 1) fromSel.selectedIndex = 1;
    toSel.selectedIndex = 0;
  };

  picker.addEventListener("change", showVersion);
  try {
    await load();
  } catch (err) { view.replaceChildren(h("div", { class: "card error" }, err.message)); return; }
  if (!listing.versions.length) {
    view.replaceChildren(h("div", { class: "card", id: "plan-empty" }, h("h2", {}, "Tracking plan"),
      h("p", {}, "No plan pushed yet. A plan is a directory of JSON Schemas in your repository (see examples/plan):"),
      h("pre", {}, "headwater plan check plan/ --against samples.ndjson   # in CI\nheadwater plan push plan/ --activate '*'")));
    return;
  }
  view.replaceChildren(
    h("div", { class: "card" }, h("h2", {}, "Tracking plan"), summary,
      h("label", {}, "Version", picker),
      can("manage") ? h("span", {}, h("label", {}, "Source", source), h("button", { id: "plan-activate", class: "ghost", onclick: activate }, "Activate this version")) : "",
      error, events),
    h("div", { class: "card" }, h("h2", {}, "Compare versions"), h("label", {}, "From", fromSel), h("label", {}, "To", toSel),
      h("button", { id: "plan-compare", onclick: compare }, "Compare"), diffOut),
    h("div", { class: "card" }, h("h2", {}, `Catalog (last ${DAYS} days)`),
      h("h3", {}, "Planned"), planned, h("h3", {}, "Seen but not planned"), unplanned, note));
  await showVersion();
  try {
    catalog = await api(`/api/plans/catalog?days=${DAYS}`);
    drawCatalog();
    if (current) drawEvents(current);
  } catch (err) { note.textContent = `catalog unavailable: ${err.message}`; }
}
