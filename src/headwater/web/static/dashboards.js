// Dashboards (#/dashboards, #/dashboard/<id>) and their share pages (/share/<token>).
import { parseFilters } from "./insights.js";
import { renderResult } from "./results.js";
import { processorTilePicker, stateTile, streamTile } from "./tiles.js";
import { api, can, every, h, helpers, later, stopTimers, view } from "./ui.js";

// a dashboard as the API accepts it back (GET adds results and names)
export const boardTiles = (board) => board.tiles.map(({ insight_id, live, state, x, y, w, h }) => (live ? { live, x, y, w, h } : state ? { state, x, y, w, h } : { insight_id, x, y, w, h }));
export const saveBoard = (board, changes) => api("/api/dashboards/" + board.id, { method: "PUT",
  body: { name: board.name, tiles: boardTiles(board), last_days: board.last_days, filters: board.filters, refresh_seconds: board.refresh_seconds, ...changes } });


export async function dashboardsPage() {
  const name = h("input", { name: "board-name", placeholder: "New dashboard" });
  const days = h("input", { name: "board-days", type: "number", value: 30, min: 1, style: "width:6em" });
  const list = h("ul");
  const error = h("div", { class: "error" });
  const load = async () => list.replaceChildren(...(await api("/api/dashboards")).map((b) => h("li", {}, h("a", { href: `#/dashboard/${b.id}` }, b.name))));
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

function renderBoard(board, shared, token) {
  const grid = h("div", { class: "grid" });
  board.tiles.forEach((tile, index) => {
    const body = h("div");
    grid.append(h("div", { class: "card tile", "data-kind": tile.kind, style: `grid-column: span ${tile.w}` }, h("h2", {}, tile.name), tile.error ? h("div", { class: "error" }, tile.error) : body));
    if (tile.kind === "live") {
      const feed = h("tbody");
      body.append(h("table", { class: "live-tile" }, h("thead", {}, h("tr", {}, ["received", "event", "user"].map((c) => h("th", {}, c)))), feed));
      const poll = async () => {
        const url = shared ? `/api/shared/${token}/live/${index}` : `/api/live?rejected=false&limit=${tile.live.limit}` + (tile.live.event ? "&event=" + encodeURIComponent(tile.live.event) : "");
        const page = shared ? await (await fetch(url)).json() : await api(url);
        feed.replaceChildren(...(page.events || []).map((e) => h("tr", {}, h("td", {}, (e.received_at || "").replace("T", " ").slice(0, 19)), h("td", {}, e.event), h("td", {}, e.user_id ?? e.anonymous_id ?? ""))));
      };
      poll().catch(() => {});
      every(() => poll().catch(() => {}), 2000);
    } else if (tile.error) {
      // the error is shown instead of the body
    } else if (tile.kind === "state") stateTile(helpers, body, tile);
    else if (tile.kind === "live.stream") streamTile(helpers, body, tile, index, shared, token);
    else renderResult(body, tile.kind, tile.result);
  });
  return h("div", {}, h("h2", {}, board.name, h("span", { class: "muted" }, board.last_days ? `  · last ${board.last_days} days` : "", shared ? "  · shared view" : "")), grid);
}

export async function dashboardPage(id) {
  const area = h("div");
  const links = h("div", { class: "muted" });
  const error = h("div", { class: "error" });
  let board = await api("/api/dashboards/" + id);
  const days = h("input", { name: "board-days", type: "number", min: 1, value: board.last_days ?? "", style: "width:6em" });
  const filters = h("input", { name: "board-filters", placeholder: "plan=pro", value: (board.filters || []).map((f) => `${f.property}${{ eq: "=", neq: "!=", gt: ">", gte: ">=", lt: "<", lte: "<=" }[f.op] || "="}${f.value}`).join(", ") });
  const liveEvent = h("input", { name: "live-event", placeholder: "event (optional)" });
  const draw = async () => {
    stopTimers();
    board = await api("/api/dashboards/" + id);
    area.replaceChildren(renderBoard(board, false));
    if (board.refresh_seconds) later(draw, board.refresh_seconds * 1000);
  };
  const apply = async () => {
    try { await saveBoard(board, { last_days: days.value ? Number(days.value) : null, filters: parseFilters(filters.value) }); await draw(); }
    catch (err) { error.textContent = err.message; }
  };
  const addLive = async () => {
    try {
      const tiles = boardTiles(board);
      tiles.push({ live: { title: liveEvent.value ? `Live: ${liveEvent.value}` : "Live events", event: liveEvent.value || null, limit: 10 }, x: 0, y: 0, w: 6, h: 4 });
      await saveBoard(board, { tiles });
      await draw();
    } catch (err) { error.textContent = err.message; }
  };
  const editable = can("analyze");
  const picker = editable ? processorTilePicker(helpers, async (tile) => { await saveBoard(board, { tiles: [...boardTiles(board), tile] }); await draw(); }) : null;
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
  view.replaceChildren(h("div", { class: "card" },
    editable ? h("div", {}, h("label", {}, "Last days (shared range)", days), h("label", {}, "Shared filters", filters), h("button", { class: "ghost", onclick: apply }, "Apply"), " ",
      h("label", {}, "Live widget event", liveEvent), h("button", { id: "add-live", class: "ghost", onclick: addLive }, "Add live widget"), " ",
      h("button", { id: "share", onclick: share }, "Create share link")) : "",
    editable ? h("div", { class: "processor-tile-picker" }, ...picker.fields, h("button", { id: "add-processor-tile", class: "ghost", onclick: addProcessorTile }, "Add processor tile")) : "",
    links, error), area);
  await draw();
}

export async function sharePage(token) {
  document.getElementById("top").style.display = "none";
  stopTimers();
  const response = await fetch("/api/shared/" + token);
  const board = await response.json();
  if (!response.ok) { view.replaceChildren(h("div", { class: "card error" }, board.error)); return; }
  view.replaceChildren(renderBoard(board, true, token));
  if (board.refresh_seconds) later(() => sharePage(token).catch(() => {}), board.refresh_seconds * 1000);
}
