// Dashboards (#/dashboards, #/dashboard/<id>?days=&from=&to=&filters=) and their share pages (/share/<token>).
// A board is a 12-column grid of tiles (w columns × h rows of ROW_PX); an analyst resizes a tile by its corner
// handle (saved), switches a trend between chart and number (its change vs the previous period), and sets the
// board's date range, filters and auto-refresh (saved). A viewer's range and filters go to the URL instead
// (the API runs the board with them, nothing is saved).
import { filterRows } from "./pickers.js";
import { renderResult } from "./results.js";
import { processorTilePicker, stateTile, streamTile } from "./tiles.js";
import { api, can, every, h, helpers, later, stopTimers, view as currentView } from "./ui.js";

export const ROW_PX = 80;  // one grid row (app.css .grid grid-auto-rows)
const GAP_PX = 16;
const RANGES = [["", "each insight's own"], ["1", "last 24 hours"], ["7", "last 7 days"], ["30", "last 30 days"], ["90", "last 90 days"], ["custom", "custom…"]];
const REFRESH = [[0, "off"], [30, "every 30 s"], [60, "every minute"], [300, "every 5 minutes"], [900, "every 15 minutes"], [3600, "every hour"]];

// a dashboard as the API accepts it back (GET adds results and names)
export const boardTiles = (board) => board.tiles.map(({ insight_id, live, state, x, y, w, h, display }) =>
  (live ? { live, x, y, w, h } : state ? { state, x, y, w, h } : { insight_id, x, y, w, h, display: display || "chart" }));
export const saveBoard = (board, changes) => api("/api/dashboards/" + board.id, { method: "PUT",
  body: { name: board.name, tiles: boardTiles(board), last_days: board.last_days ?? null, date_from: board.date_from ?? null,
    date_to: board.date_to ?? null, filters: board.filters || [], refresh_seconds: board.refresh_seconds || 0, ...changes } });
// add a tile to a saved board without running it (the insight builder's "save to dashboard")
export async function addToBoard(boardId, tile) {
  const view = currentView;  // this route's element
  const board = await api(`/api/dashboards/${boardId}?run=0`);
  return saveBoard(board, { tiles: [...boardTiles(board), { x: 0, y: 0, w: 6, h: 4, ...tile }] });
}

export async function dashboardsPage() {
  const view = currentView;  // this route's element
  const name = h("input", { name: "board-name", placeholder: "New dashboard" });
  const days = h("input", { name: "board-days", type: "number", value: 30, min: 1, style: "width:6em" });
  const list = h("ul", { class: "board-list" });
  const error = h("div", { class: "error" });
  const load = async () => {
    const boards = await api("/api/dashboards");
    list.replaceChildren(...boards.map((b) => h("li", {}, h("a", { href: `#/dashboard/${b.id}` }, b.name))));
    if (!boards.length) list.replaceChildren(h("li", { class: "muted empty-state" }, can("analyze") ? "No dashboards yet: name one below to start it, then save insights to it from the builder." : "No dashboards yet: an analyst creates them."));
  };
  const create = async () => {
    try {
      const board = await api("/api/dashboards", { method: "POST", body: { name: name.value || "Dashboard", tiles: [], last_days: Number(days.value), refresh_seconds: 30 } });
      location.hash = `#/dashboard/${board.id}`;
    } catch (err) { error.textContent = err.message; }
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Dashboards"), list,
    can("analyze") ? h("div", {}, h("label", {}, "Name", name), h("label", {}, "Last days", days), h("button", { onclick: create }, "Create")) : "", error));
  await load();
}

const fmt = (v) => (v == null ? "—" : Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en-US") : Number.isInteger(v) ? String(v) : v.toFixed(2));
const rangeText = (board) => (board.date_from && board.date_to ? `${board.date_from.slice(0, 10)} → ${board.date_to.slice(0, 10)}`
  : board.last_days ? (board.last_days === 1 ? "last 24 hours" : `last ${board.last_days} days`) : "each insight's own range");

// a number tile: the figure, its change vs the previous period of the same length, and what it is
function numberTile(body, tile) {
  const n = tile.number || {};
  const change = n.change;
  const direction = change == null ? "flat" : change > 0 ? "up" : change < 0 ? "down" : "flat";
  const changeText = change == null ? (n.previous === 0 ? (n.value ? "new: nothing in the previous period" : "nothing in this or the previous period") : "no previous period")
    : `${change > 0 ? "▲" : change < 0 ? "▼" : "■"} ${(Math.abs(change) * 100).toFixed(1)}% vs previous period (${fmt(n.previous)})`;
  body.append(h("div", { class: "number-tile" }, h("div", { class: "number-value" }, fmt(n.value)),
    h("div", { class: `number-change ${direction}` }, changeText),
    h("div", { class: "muted number-label" }, `${n.event ?? ""} · ${n.measure ?? ""} · ${n.label ?? ""}`)));
}

// nothing to draw: say why and what to do
function emptyResult(kind, result) {
  if (result == null) return true;
  if (kind === "trend") return !result.length || result.every((s) => s.points.every((p) => !p[1]));
  if (kind === "funnel") return !result.length || result.every((g) => !g.steps[0]?.count);
  if (kind === "retention") return !result.cohorts?.length;
  if (kind === "experiment") return !result.variants?.length;
  if (kind === "journey") return !result.paths?.length;
  return false;
}

function insightTile(body, tile) {
  if (tile.display === "number" && tile.number) numberTile(body, tile);  // 0 is a figure too
  else if (emptyResult(tile.kind, tile.result)) {
    body.append(h("div", { class: "empty-state tile-empty" }, "No events match in this range.",
      h("div", { class: "muted" }, "Widen the board's date range, remove a filter, or check that the events are being sent (Live events).")));
  } else renderResult(body, tile.kind, tile.result);
}

function liveTile(body, tile, index, shared, token) {
  const feed = h("tbody");
  body.append(h("table", { class: "live-tile" }, h("thead", {}, h("tr", {}, ["received", "event", "user"].map((c) => h("th", {}, c)))), feed));
  const poll = async () => {
    const url = shared ? `/api/shared/${token}/live/${index}` : `/api/live?rejected=false&limit=${tile.live.limit}` + (tile.live.event ? "&event=" + encodeURIComponent(tile.live.event) : "");
    const page = shared ? await (await fetch(url)).json() : await api(url);
    feed.replaceChildren(...(page.events || []).map((e) => h("tr", {}, h("td", {}, (e.received_at || "").replace("T", " ").slice(0, 19)), h("td", {}, e.event),
      h("td", {}, shared ? (e.user_id ?? e.anonymous_id ?? "") : h("a", { href: "#/timeline/" + encodeURIComponent(e.user_id ?? e.anonymous_id ?? "") }, e.user_id ?? e.anonymous_id ?? "")))));
  };
  poll().catch(() => {});
  every(() => poll().catch(() => {}), 2000);
}

const redrawCharts = (el) => el.querySelectorAll(".chart").forEach((c) => echarts.getInstanceByDom(c)?.resize());

// drag the corner handle: the tile snaps to whole columns and rows; `done(w, h)` when released
function resizable(card, handle, tile, done) {
  handle.addEventListener("pointerdown", (down) => {
    down.preventDefault();
    handle.setPointerCapture(down.pointerId);
    const grid = card.parentElement.getBoundingClientRect();
    const box = card.getBoundingClientRect();
    const column = (grid.width - 11 * GAP_PX) / 12;
    let w = tile.w, hh = tile.h;
    const move = (e) => {
      w = Math.max(1, Math.min(12, Math.round((e.clientX - box.left + GAP_PX) / (column + GAP_PX))));
      hh = Math.max(1, Math.min(40, Math.round((e.clientY - box.top + GAP_PX) / (ROW_PX + GAP_PX))));
      card.style.gridColumn = `span ${w}`;
      card.style.gridRow = `span ${hh}`;
    };
    const up = () => {
      handle.removeEventListener("pointermove", move);
      handle.removeEventListener("pointerup", up);
      redrawCharts(card);
      if (w !== tile.w || hh !== tile.h) done(w, hh);
    };
    handle.addEventListener("pointermove", move);
    handle.addEventListener("pointerup", up);
  });
}

// the grid of tiles; `edit` (analysts on the board page): { resize(index, w, h), display(index, kind), remove(index) }
function renderBoard(board, shared, token, edit = null) {
  const grid = h("div", { class: "grid board-grid" });
  board.tiles.forEach((tile, index) => {
    const body = h("div", { class: "tile-body" });
    const tools = h("span", { class: "tile-tools" });
    const card = h("div", { class: "card tile", "data-kind": tile.kind, "data-index": index, "data-w": tile.w, "data-h": tile.h,
      "data-display": tile.display || "chart", style: `grid-column: span ${tile.w}; grid-row: span ${tile.h}` },
    h("div", { class: "tile-head" }, h("h2", {}, tile.name), tools), tile.error ? h("div", { class: "error" }, tile.error) : body);
    grid.append(card);
    if (edit) {
      if (tile.kind === "trend") {
        const other = tile.display === "number" ? "chart" : "number";
        tools.append(h("button", { class: "ghost icon toggle-display", title: `show as a ${other}`, onclick: () => edit.display(index, other) }, other === "number" ? "123" : "chart"));
      }
      tools.append(h("button", { class: "ghost icon remove-tile", title: "remove this tile", onclick: () => edit.remove(index) }, "×"));
      const handle = h("div", { class: "resize-handle", title: "drag to resize" });
      card.append(handle);
      resizable(card, handle, tile, (w, hh) => edit.resize(index, w, hh));
    }
    if (tile.kind === "live") liveTile(body, tile, index, shared, token);
    else if (tile.error) { /* the error is shown instead of the body */ }
    else if (tile.kind === "state") stateTile(helpers, body, tile);
    else if (tile.kind === "live.stream") streamTile(helpers, body, tile, index, shared, token);
    else insightTile(body, tile);
  });
  const title = h("h2", { class: "board-title" }, board.name, h("span", { class: "muted" }, `  · ${rangeText(board)}`, shared ? "  · shared view" : ""));
  if (!board.tiles.length) {
    return h("div", {}, title, h("div", { class: "card empty-state empty-board" }, h("strong", {}, "This dashboard has no tiles yet."),
      h("div", {}, shared ? "Its owner has not added any insight yet." : h("span", {}, "Add an insight from the builder: open ", h("a", { href: "#/insights" }, "Insights"),
        ", build a chart, and save it to this dashboard. Live widgets and processor tiles are added above."))));
  }
  return h("div", {}, title, grid);
}

// skeleton tiles while the board's queries run
const loadingBoard = (saved) => h("div", {}, h("h2", { class: "board-title" }, saved.name), h("div", { class: "grid board-grid" },
  ...(saved.tiles.length ? saved.tiles : [{ w: 12, h: 2 }]).map((t) => h("div", { class: "card tile loading-tile", style: `grid-column: span ${t.w}; grid-row: span ${t.h}` },
    h("div", { class: "muted" }, "Loading…")))));

function rangeControls(board, onChange) {
  const preset = h("select", { name: "board-range" }, RANGES.map(([v, label]) => h("option", { value: v }, label)));
  const from = h("input", { name: "board-from", type: "date" });
  const to = h("input", { name: "board-to", type: "date" });
  const custom = h("span", { class: "custom-range" }, h("label", {}, "From", from), h("label", {}, "To", to));
  const show = () => { custom.style.display = preset.value === "custom" ? "" : "none"; };
  if (board.date_from && board.date_to) {
    preset.value = "custom";
    from.value = board.date_from.slice(0, 10);
    to.value = board.date_to.slice(0, 10);
  } else preset.value = RANGES.some(([v]) => v === String(board.last_days ?? "")) ? String(board.last_days ?? "") : "custom";
  const changed = () => {
    show();
    if (preset.value !== "custom") onChange({ last_days: preset.value ? Number(preset.value) : null, date_from: null, date_to: null });
    else if (from.value && to.value) {
      const end = new Date(to.value + "T00:00:00Z");
      end.setUTCDate(end.getUTCDate() + 1);  // the `to` day included
      onChange({ last_days: null, date_from: from.value + "T00:00:00+00:00", date_to: end.toISOString().replace(".000Z", "+00:00") });
    }
  };
  for (const el of [preset, from, to]) el.addEventListener("change", changed);
  show();
  return h("span", { class: "board-range" }, h("label", {}, "Date range", preset), custom);
}

export async function dashboardPage(id, app = helpers) {
  const view = currentView;  // this route's element
  const params = app.params || new URLSearchParams();
  const editable = can("analyze");
  const area = h("div", { class: "board-area" });
  const links = h("div", { class: "muted" });
  const error = h("div", { class: "error" });
  const updated = h("span", { id: "board-updated", class: "muted" });
  let saved = await api(`/api/dashboards/${id}?run=0`);
  let board = saved;

  // a viewer's range and filters: in the URL, sent as overrides; an analyst's: saved with the board
  const overrides = () => {
    const q = new URLSearchParams();
    for (const k of ["last_days", "date_from", "date_to", "filters"]) if (params.get(k)) q.set(k, params.get(k));
    return q.toString();
  };
  let drawing = 0;
  const draw = async ({ quiet = false } = {}) => {
    const mine = ++drawing;
    stopTimers();  // live tiles' polls and the refresh restart with the new board
    if (!quiet) area.replaceChildren(loadingBoard(saved));
    area.classList.add("refreshing");
    try {
      const fresh = await api(`/api/dashboards/${id}` + (overrides() ? "?" + overrides() : ""));
      if (mine !== drawing) return;
      board = fresh;
      area.replaceChildren(renderBoard(board, false, null, editable ? edits : null));
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      error.textContent = "";
    } catch (err) {
      if (mine !== drawing) return;
      error.textContent = err.message;
      if (!quiet) area.replaceChildren();
    } finally {
      if (mine === drawing) area.classList.remove("refreshing");
    }
    if (mine === drawing && board.refresh_seconds) later(() => draw({ quiet: true }), board.refresh_seconds * 1000);
  };
  const change = async (changes) => {
    error.textContent = "";
    try {
      saved = await saveBoard(saved, changes);
      await draw({ quiet: true });
    } catch (err) { error.textContent = err.message; }
  };
  const withTiles = (fn) => { const tiles = boardTiles(saved); fn(tiles); return change({ tiles }); };
  const edits = {
    resize: (index, w, hh) => withTiles((tiles) => Object.assign(tiles[index], { w, h: hh })),
    display: (index, display) => withTiles((tiles) => { tiles[index].display = display; }),
    remove: (index) => withTiles((tiles) => tiles.splice(index, 1)),
  };
  const explore = (changes) => {  // a viewer: the URL holds the range and filters
    for (const [k, v] of Object.entries(changes)) {
      if (v == null || (Array.isArray(v) && !v.length)) params.delete(k);
      else params.set(k, Array.isArray(v) ? JSON.stringify(v) : String(v));
    }
    history.replaceState(null, "", `#/dashboard/${id}` + (params.toString() ? "?" + params : ""));
    draw({ quiet: true });
  };
  const shown = { ...saved };
  if (!editable) {
    if (params.get("last_days")) shown.last_days = Number(params.get("last_days"));
    if (params.get("date_from")) Object.assign(shown, { date_from: params.get("date_from"), date_to: params.get("date_to") });
    if (params.get("filters")) shown.filters = JSON.parse(params.get("filters"));
  }
  const apply = editable ? change : explore;
  const range = rangeControls(shown, (r) => apply(r));
  let filterTimer = null;
  const filters = filterRows(app, { filters: shown.filters || [], onChange: (value) => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => apply({ filters: (value || []).filter(Boolean) }), 400);
  } });
  const refresh = h("select", { name: "board-refresh", disabled: editable ? undefined : "" }, REFRESH.map(([v, label]) => h("option", { value: v }, label)));
  refresh.value = String(REFRESH.some(([v]) => v === saved.refresh_seconds) ? saved.refresh_seconds : 0);
  refresh.addEventListener("change", () => change({ refresh_seconds: Number(refresh.value) }));

  const liveEvent = h("input", { name: "live-event", placeholder: "event (optional)" });
  const addLive = async () => {
    const tiles = boardTiles(saved);
    tiles.push({ live: { title: liveEvent.value ? `Live: ${liveEvent.value}` : "Live events", event: liveEvent.value || null, limit: 10 }, x: 0, y: 0, w: 6, h: 4 });
    await change({ tiles });
  };
  const picker = editable ? processorTilePicker(helpers, async (tile) => change({ tiles: [...boardTiles(saved), tile] })) : null;
  const addProcessorTile = async () => {
    error.textContent = "";
    try { await picker.add(); } catch (err) { error.textContent = err.message; }
  };
  const listShares = async () => {
    const shares = await api(`/api/dashboards/${id}/shares`);
    return shares.map((sh) => h("div", {}, `link ${sh.prefix}… by ${sh.created_by} `,
      h("button", { class: "ghost revoke", onclick: async () => { await api(`/api/dashboards/${id}/shares/${sh.prefix}`, { method: "DELETE" }); links.replaceChildren(...(await listShares())); } }, "Revoke")));
  };
  const share = async () => {
    const link = await api(`/api/dashboards/${id}/shares`, { method: "POST" });
    links.replaceChildren("Share link: ", h("a", { id: "share-link", href: link.url }, location.origin + link.url), ...(await listShares()));
  };
  if (editable) listShares().then((rows) => links.replaceChildren(...rows)).catch(() => {});
  view.replaceChildren(h("div", { class: "card board-controls" },
    h("div", { class: "board-bar" }, range, h("label", {}, "Auto-refresh", refresh),
      h("button", { id: "refresh", class: "ghost", onclick: () => draw({ quiet: true }) }, "Refresh now"), updated),
    h("div", { class: "board-filters" }, h("span", { class: "muted" }, "Filters for every tile"), filters.el),
    editable ? h("details", { class: "board-add", open: "" }, h("summary", {}, "Add live widgets, processor tiles, share"),
      h("div", {}, h("label", {}, "Live widget event", liveEvent), h("button", { id: "add-live", class: "ghost", onclick: addLive }, "Add live widget"), " ",
        h("button", { id: "share", onclick: share }, "Create share link")),
      h("div", { class: "processor-tile-picker" }, ...picker.fields, h("button", { id: "add-processor-tile", class: "ghost", onclick: addProcessorTile }, "Add processor tile"))) : "",
    links, error), area);
  await draw();
}

export async function sharePage(token) {
  const view = currentView;  // this route's element
  document.getElementById("top").style.display = "none";
  stopTimers();
  const first = !view.querySelector(".board-grid, .empty-board");
  if (first) view.replaceChildren(h("div", { class: "card muted" }, "Loading the dashboard…"));
  const response = await fetch("/api/shared/" + token);
  const board = await response.json();
  if (!response.ok) { view.replaceChildren(h("div", { class: "card error" }, board.error)); return; }
  view.replaceChildren(renderBoard(board, true, token));
  if (board.refresh_seconds) later(() => sharePage(token).catch(() => {}), board.refresh_seconds * 1000);
}
