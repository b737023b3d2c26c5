// One person's timeline (#/timeline/<user or anonymous id>): the ids stitched into the person, their latest
// properties and traits, and every event (newest first, up to LIMIT), each opening its full JSON. Events show
// here once the lake writer has written them (seconds); the live view follows them as they arrive.
import { api, h, view as currentView } from "./ui.js";

export const LIMIT = 1000;

const when = (t) => (t || "").replace("T", " ").slice(0, 19);
const parsed = (v) => {
  if (typeof v !== "string") return v ?? null;
  try { return JSON.parse(v); } catch { return v; }
};
const shown = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? ""));
const link = (id) => h("a", { href: "#/timeline/" + encodeURIComponent(id) }, id);

// the latest value of every trait and property over the events (rows newest first)
export function latestProperties(events) {
  const view = currentView;  // this route's element
  const found = new Map();
  for (const e of events) {
    for (const [kind, bag] of [["trait", e.traits], ["property", e.properties]]) {
      if (!bag || typeof bag !== "object") continue;
      for (const [key, value] of Object.entries(bag)) if (!found.has(key)) found.set(key, { key, value, kind, at: e.timestamp, event: e.event });
    }
  }
  return [...found.values()].sort((a, b) => (a.kind === b.kind ? a.key.localeCompare(b.key) : a.kind === "trait" ? -1 : 1));
}

function askForId() {
  const person = h("input", { name: "person", placeholder: "user id or anonymous id", size: 36 });
  const go = (e) => { e.preventDefault(); if (person.value.trim()) location.hash = "#/timeline/" + encodeURIComponent(person.value.trim()); };
  view.replaceChildren(h("form", { class: "card", onsubmit: go }, h("h2", {}, "User timeline"),
    h("p", { class: "muted" }, "Every event of one person, with their properties and the ids linked to them. Open one from a row of the live view, or type an id:"),
    h("label", {}, "Id", person), h("button", { type: "submit" }, "Open")));
}

export async function timelinePage(app, id) {
  const view = currentView;  // this route's element
  if (!id) return askForId();
  view.replaceChildren(h("div", { class: "card muted" }, `Loading the timeline of ${id}…`));
  const answer = await api("/api/insights", { method: "POST", body: { kind: "timeline", person: id, limit: LIMIT } });
  const result = answer.result;
  const events = result.rows.map((r) => {
    const e = Object.fromEntries(result.columns.map((c, i) => [c, r[i]]));
    for (const k of ["properties", "context", "traits"]) e[k] = parsed(e[k]);
    return e;
  });
  const person = result.person ?? id;
  const detail = h("div", { id: "timeline-detail", class: "card event-detail", hidden: "" });
  const open = (e) => {
    detail.hidden = false;
    detail.replaceChildren(h("div", { class: "detail-head" }, h("h2", {}, e.event ?? e.type ?? "event"),
      h("button", { class: "ghost", onclick: () => { detail.hidden = true; } }, "Close")),
    h("pre", { class: "json", id: "timeline-json" }, JSON.stringify(e, null, 2)));
  };

  const head = h("div", { class: "card" }, h("h2", { id: "timeline-person" }, "Person " + person),
    h("div", { class: "muted" }, id !== person ? `opened from the id ${id} · ` : "",
      h("a", { href: "#/live?user=" + encodeURIComponent(id) }, "follow live")));
  if (!events.length) {
    view.replaceChildren(head, h("div", { class: "card empty-state", id: "timeline-empty" }, `No events of ${id} in the lake yet.`,
      h("div", { class: "muted" }, "Events appear here a few seconds after they are received; check the id, or watch it arrive in the live view.")));
    return;
  }
  const counts = new Map();
  for (const e of events) counts.set(e.event ?? e.type, (counts.get(e.event ?? e.type) || 0) + 1);
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([n, c]) => `${n} ×${c}`).join(", ");
  head.append(h("div", { class: "timeline-facts" },
    h("span", { class: "fact" }, h("strong", { id: "timeline-count" }, String(events.length)), events.length >= LIMIT ? ` newest events (of more)` : " events"),
    h("span", { class: "fact" }, "first seen ", when(events[events.length - 1].timestamp)),
    h("span", { class: "fact" }, "last seen ", when(events[0].timestamp)),
    h("span", { class: "fact muted" }, top)));

  const ids = result.identities || [];
  const identities = h("div", { class: "card" }, h("h3", {}, "Identities"),
    ids.length ? h("table", { id: "identities" }, h("thead", {}, h("tr", {}, ["id", "linked at", "reason"].map((c) => h("th", {}, c)))),
      h("tbody", {}, ids.map((i) => h("tr", {}, h("td", {}, link(i.id)), h("td", {}, when(i.linked_at)), h("td", {}, i.reason ?? "")))))
      : h("div", { class: "muted", id: "identities" }, `only ${id}: never linked to another id`));

  const props = latestProperties(events);
  const properties = h("div", { class: "card" }, h("h3", {}, "Properties"),
    props.length ? h("table", { id: "person-properties" }, h("thead", {}, h("tr", {}, ["property", "latest value", "from", "at"].map((c) => h("th", {}, c)))),
      h("tbody", {}, props.map((p) => h("tr", {}, h("td", {}, p.key), h("td", {}, shown(p.value)), h("td", { class: "muted" }, p.kind === "trait" ? "trait" : p.event ?? ""), h("td", { class: "when" }, when(p.at))))))
      : h("div", { class: "muted" }, "no properties or traits"));

  let day = "";
  const rows = [];
  for (const e of events) {
    const d = (e.timestamp || "").slice(0, 10);
    if (d !== day) { day = d; rows.push(h("tr", { class: "day" }, h("td", { colspan: 5 }, d))); }
    rows.push(h("tr", { class: "timeline-event", onclick: () => open(e) }, h("td", { class: "when" }, when(e.timestamp).slice(11)),
      h("td", {}, e.event ?? e.type ?? ""), h("td", {}, e.user_id ?? e.anonymous_id ?? ""), h("td", {}, e.source ?? ""),
      h("td", { class: "props" }, shown(e.properties ?? e.traits ?? {}))));
  }
  const list = h("div", { class: "card" }, h("h3", {}, "Events"), h("div", { class: "live-layout" },
    h("table", { id: "timeline-events" }, h("thead", {}, h("tr", {}, ["time", "event", "id", "source", "properties"].map((c) => h("th", {}, c)))), h("tbody", {}, rows)), detail));
  view.replaceChildren(head, h("div", { class: "timeline-side" }, identities, properties), list);
}
