// The Live events page (#/live): the newest events as they arrive.
import { api, every, h, view } from "./ui.js";

export function livePage() {
  const filter = h("input", { placeholder: "event or user", name: "filter" });
  const body = h("tbody");
  let cursor = null;
  const rows = [];
  const draw = () => {
    const f = filter.value.trim();
    body.replaceChildren(...rows.filter((r) => !f || r.event === f || r.user_id === f || r.anonymous_id === f).slice(0, 200).map((r) =>
      h("tr", { class: r.rejected ? "rejected" : "" }, h("td", {}, (r.received_at || "").replace("T", " ").slice(0, 19)),
        h("td", {}, r.event ?? "—"), h("td", {}, r.user_id ?? r.anonymous_id ?? ""), h("td", {}, r.source),
        h("td", {}, r.rejected ? "rejected: " + r.rejected : JSON.stringify(r.properties ?? {})), planCell(r))));
  };
  // what the source's tracking plan finds in the event (before the lake writer enforces it)
  const planCell = (r) => {
    if (!r.plan_version) return h("td", { class: "plan" }, "");
    const found = r.violations || [];
    const bad = found.filter((v) => v.rule !== "undeclared");
    const head = bad.length ? `${bad.length} violation${bad.length > 1 ? "s" : ""} (${r.plan_mode})` : "✓";
    return h("td", { class: "plan", title: r.plan_version }, h("div", { class: bad.length ? "rejected" : "" }, head),
      found.map((v) => v.rule === "undeclared" ? h("div", { class: "muted violation" }, `${v.path}: not in the plan`)
        : h("div", { class: "rejected violation" }, `${v.path}: ${v.rule}: expected ${v.expected}, got ${v.got}`)));
  };
  const poll = async () => {
    try {
      const page = await api("/api/live" + (cursor ? "?limit=200&cursor=" + encodeURIComponent(cursor) : "?limit=100"));
      const fresh = cursor ? page.events.slice().reverse() : page.events;
      rows.unshift(...fresh);
      rows.length = Math.min(rows.length, 1000);
      cursor = page.cursor;
      draw();
    } catch (err) { /* transient: try again on the next tick */ }
  };
  filter.addEventListener("input", draw);
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Live events"), h("label", {}, "Filter", filter),
    h("table", { id: "live" }, h("thead", {}, h("tr", {}, ["received", "event", "user", "source", "properties", "plan"].map((c) => h("th", {}, c)))), body)));
  poll();
  every(poll, 1000);
}
