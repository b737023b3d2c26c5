// The Live events page (#/live?event=&user=&prop=): the newest events as they arrive, over server-sent events
// (/api/live/stream, resumed from the last cursor after a reconnect). The DOM holds a bounded window of the
// newest rows (MAX_ROWS), so the page stays responsive however many events arrive; while paused, arrivals
// are counted and the newest MAX_ROWS kept, then shown on resume. Event and user filters go to the server
// (a rare event is not drowned by frequent ones); `prop` (key=value) filters the received rows here.
import { api, every, h, view as currentView } from "./ui.js";

export const MAX_ROWS = 500;
const STREAM_PAGE = 1000;  // records per server read: a backlog drains in big pages

const when = (t) => (t || "").replace("T", " ").slice(0, 19);
const who = (r) => r.user_id ?? r.anonymous_id ?? "";

// `key=value` (or `key!=value`, `key` alone: the property is set) against an event's properties and columns
export function propertyMatcher(text) {
  const view = currentView;  // this route's element
  const m = /^\s*([^=!]+?)\s*(?:(!=|=)\s*(.*?))?\s*$/.exec(text || "");
  if (!m || !m[1]) return () => true;
  const [, key, op, value] = m;
  return (row) => {
    const found = row.properties?.[key] ?? row.context?.[key] ?? row.traits?.[key] ?? row[key];
    if (!op) return found !== undefined && found !== null;
    const same = found !== undefined && found !== null && String(typeof found === "object" ? JSON.stringify(found) : found) === value;
    return op === "=" ? same : !same;
  };
}

// what the source's tracking plan finds in the event (before the lake writer enforces it)
function planCell(r) {
  if (!r.plan_version) return h("td", { class: "plan" }, "");
  const found = r.violations || [];
  const bad = found.filter((v) => v.rule !== "undeclared");
  const head = bad.length ? `${bad.length} violation${bad.length > 1 ? "s" : ""} (${r.plan_mode})` : "✓";
  return h("td", { class: "plan", title: r.plan_version }, h("div", { class: bad.length ? "rejected" : "" }, head),
    found.map((v) => v.rule === "undeclared" ? h("div", { class: "muted violation" }, `${v.path}: not in the plan`)
      : h("div", { class: "rejected violation" }, `${v.path}: ${v.rule}: expected ${v.expected}, got ${v.got}`)));
}

export function livePage(app = {}) {
  const view = currentView;  // this route's element
  const params = app.params || new URLSearchParams();
  const eventFilter = h("input", { name: "event", placeholder: "any event", list: "live-events", value: params.get("event") || "" });
  const userFilter = h("input", { name: "user", placeholder: "any user", value: params.get("user") || "" });
  const propFilter = h("input", { name: "prop", placeholder: "plan=pro", value: params.get("prop") || "" });
  const seenEvents = h("datalist", { id: "live-events" });
  const pauseButton = h("button", { id: "pause", class: "ghost" }, "Pause");
  const stats = h("div", { id: "live-stats", class: "muted" });
  const body = h("tbody");
  const detail = h("div", { id: "event-detail", class: "card event-detail", hidden: "" });
  const status = h("div", { class: "muted", id: "live-status" }, "connecting…");

  let rows = [];            // newest first, at most MAX_ROWS: what the table shows (when not paused)
  let held = [];            // arrivals while paused (newest first, bounded)
  let paused = false;
  let received = 0;         // every event delivered since the page opened (or the filters changed)
  let heldCount = 0;
  let source = null;
  let drawQueued = false;
  let matches = propertyMatcher(propFilter.value);
  const names = new Set();
  const recent = [];        // [arrival time (ms), events] over the last 5 s, for the rate

  const row = (r) => h("tr", { class: r.rejected ? "rejected" : "", "data-offset": `${r.partition}:${r.offset}`, onclick: () => open(r) },
    h("td", { class: "when" }, when(r.received_at)), h("td", {}, r.event ?? "—"),
    h("td", {}, who(r) ? h("a", { href: "#/timeline/" + encodeURIComponent(who(r)), class: "user-link", onclick: (e) => e.stopPropagation() }, who(r)) : ""),
    h("td", {}, r.source ?? ""), h("td", { class: "props" }, r.rejected ? "rejected: " + r.rejected : JSON.stringify(r.properties ?? {})), planCell(r));

  const open = (r) => {
    detail.hidden = false;
    detail.replaceChildren(h("div", { class: "detail-head" }, h("h2", {}, r.event ?? "rejected event"),
      who(r) ? h("a", { href: "#/timeline/" + encodeURIComponent(who(r)), id: "open-timeline" }, `Timeline of ${who(r)}`) : "",
      h("button", { class: "ghost", id: "close-detail", onclick: () => { detail.hidden = true; } }, "Close")),
      h("pre", { class: "json", id: "event-json" }, JSON.stringify(r, null, 2)));
  };

  const showStats = () => {
    const now = Date.now();
    while (recent.length && recent[0][0] < now - 5000) recent.shift();
    const rate = Math.round(recent.reduce((n, [, count]) => n + count, 0) / 5);
    stats.textContent = `${received} received · ${rate}/s · showing the newest ${Math.min(rows.length, MAX_ROWS)}`
      + (paused ? ` · paused: ${heldCount} new` : "");
    stats.dataset.received = String(received);
  };
  const draw = () => {
    drawQueued = false;
    body.replaceChildren(...rows.map(row));
    showStats();
  };
  const queueDraw = () => {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(draw);
  };

  const add = (fresh) => {  // fresh: oldest first
    const kept = fresh.filter(matches);
    for (const r of fresh) if (r.event && !names.has(r.event) && names.size < 500) { names.add(r.event); seenEvents.append(h("option", { value: r.event })); }
    received += fresh.length;
    recent.push([Date.now(), fresh.length]);
    if (paused) {
      heldCount += kept.length;
      held = kept.slice(-MAX_ROWS).reverse().concat(held).slice(0, MAX_ROWS);
      showStats();
      return;
    }
    if (kept.length) rows = kept.slice(-MAX_ROWS).reverse().concat(rows).slice(0, MAX_ROWS);
    queueDraw();
  };

  // the stream delivers one message per event; batch them so a burst costs one DOM update per frame
  let pending = [];
  const flushPending = () => { const batch = pending; pending = []; add(batch); };

  let generation = 0;  // a newer connect() supersedes one still fetching its history
  const connect = async () => {
    const mine = ++generation;
    source?.close();
    source = null;
    rows = []; held = []; pending = []; received = 0; heldCount = 0; recent.length = 0;
    const query = new URLSearchParams();
    if (eventFilter.value.trim()) query.set("event", eventFilter.value.trim());
    if (userFilter.value.trim()) query.set("user", userFilter.value.trim());
    status.textContent = "connecting…";
    let cursor = "";
    try {
      const first = await api(`/api/live?limit=100&${query}`);  // the newest events, then what follows them
      if (mine !== generation) return;
      cursor = first.cursor;
      add(first.events.slice().reverse());
    } catch (err) {
      if (mine !== generation) return;
      status.textContent = err.message;
    }
    query.set("limit", String(STREAM_PAGE));
    if (cursor) query.set("cursor", cursor);
    const stream = new EventSource(`/api/live/stream?${query}`);
    source = stream;
    stream.onopen = () => { status.textContent = "streaming"; };
    stream.onerror = () => { if (source === stream) status.textContent = "reconnecting…"; };
    stream.onmessage = (message) => {
      if (source !== stream) return;
      pending.push(JSON.parse(message.data));
      if (pending.length === 1) setTimeout(flushPending, 0);
    };
  };

  const remember = () => {  // the filters live in the URL, so a link opens the same view
    const q = new URLSearchParams();
    for (const [k, el] of [["event", eventFilter], ["user", userFilter], ["prop", propFilter]]) if (el.value.trim()) q.set(k, el.value.trim());
    history.replaceState(null, "", "#/live" + (q.toString() ? "?" + q : ""));
  };
  const serverFilters = () => { remember(); connect(); };
  eventFilter.addEventListener("change", serverFilters);
  userFilter.addEventListener("change", serverFilters);
  propFilter.addEventListener("input", () => {
    remember();
    matches = propertyMatcher(propFilter.value);
    rows = rows.filter(matches);  // narrowing works on what is shown; widening shows what arrives next
    queueDraw();
  });
  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.classList.toggle("active", paused);
    if (!paused) {
      rows = held.concat(rows).slice(0, MAX_ROWS);
      held = []; heldCount = 0;
      queueDraw();
    }
    showStats();
  });

  // the page's timers stop when the route changes; close the stream with them
  every(() => { if (!document.body.contains(body)) source?.close(); else showStats(); }, 1000);
  window.addEventListener("hashchange", () => source?.close(), { once: true });

  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Live events"),
    h("div", { class: "live-controls" }, h("label", {}, "Event", eventFilter, seenEvents), h("label", {}, "User", userFilter),
      h("label", {}, "Property", propFilter), pauseButton, status),
    stats,
    h("div", { class: "live-layout" },
      h("table", { id: "live" }, h("thead", {}, h("tr", {}, ["received", "event", "user", "source", "properties", "plan"].map((c) => h("th", {}, c)))), body),
      detail)));
  connect();
}
