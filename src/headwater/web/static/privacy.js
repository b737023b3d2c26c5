// The Privacy page (admins): request the deletion of people's data and follow requests to completion.
// Pages get the app's helpers: { view, h, api, every(fn, ms), can(permission) }.

const POLL_MS = 2000;
const when = (iso) => (iso || "").replace("T", " ").replace(/\.\d+Z$/, "").replace(/Z$/, "");
const ids = (text) => [...new Set(text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean))];

function removed(request) {
  const rows = Object.entries(request.rows_removed || {}).filter(([, n]) => n > 0);
  return rows.length ? rows.map(([table, n]) => `${table}: ${n}`).join(" · ") : "—";
}

export async function privacyPage(app) {
  const { view, h, api, every } = app;
  const users = h("textarea", { name: "privacy-users", rows: 4, placeholder: "user ids, one per line (or separated by commas)" });
  const anons = h("textarea", { name: "privacy-anons", rows: 2, placeholder: "anonymous ids (optional)" });
  const suppress = h("input", { name: "privacy-suppress", type: "number", min: 0, value: 0, style: "width:6em" });
  const confirm = h("input", { name: "privacy-confirm", type: "checkbox" });
  const error = h("div", { class: "error" });
  const done = h("div", { class: "muted", id: "privacy-created" });
  const body = h("tbody");

  const draw = (requests) => {
    body.replaceChildren(...requests.map((r) => h("tr", { "data-id": r.id, "data-state": r.state },
      h("td", {}, h("code", {}, r.id)),
      h("td", {}, h("span", { class: `badge ${r.state === "completed" ? "ok" : r.state === "failed" ? "bad" : "off"}` }, r.state),
        r.state === "completed" || r.state === "failed" ? "" : ` ${r.step || "queued"}`),
      h("td", { class: "when" }, when(r.created_at)),
      h("td", { class: "when" }, r.completed_at ? `${when(r.completed_at)} (${r.duration_s} s)` : r.expires_at ? `after ${when(r.expires_at)}` : ""),
      h("td", {}, String(r.ids_requested), r.ids_deleted > r.ids_requested ? ` (+${r.ids_deleted - r.ids_requested} linked)` : ""),
      h("td", {}, removed(r)),
      h("td", { class: "details" }, [r.error, ...(r.notes || [])].filter(Boolean).join(" · ")))));
  };
  const load = async () => {
    try {
      draw((await api("/api/privacy/deletions")).deletions);
    } catch (err) { error.textContent = err.message; }
  };
  const submit = async () => {
    error.textContent = "";
    done.textContent = "";
    const body = { user_ids: ids(users.value), anonymous_ids: ids(anons.value), suppress_days: Number(suppress.value || 0) };
    if (!confirm.checked) { error.textContent = "tick the box to confirm: a deletion cannot be undone"; return; }
    try {
      const created = await api("/api/privacy/deletions", { method: "POST", body });
      done.textContent = `request ${created.id} queued: ${created.ids_requested} id${created.ids_requested === 1 ? "" : "s"}`;
      users.value = anons.value = "";
      confirm.checked = false;
      await load();
    } catch (err) { error.textContent = err.message; }
  };

  view.replaceChildren(
    h("div", { class: "card" }, h("h2", {}, "Delete people's data"),
      h("div", { class: "muted intro" }, "Removes their events, quarantined payloads, log records, processor state and files everywhere Headwater keeps them; the request keeps only salted hashes of the ids. See README, \"Privacy and retention\"."),
      h("label", {}, "User ids", users), h("label", {}, "Anonymous ids", anons),
      h("label", {}, "Drop their later events for (days)", suppress),
      h("label", {}, confirm, " I understand this cannot be undone"),
      h("button", { id: "privacy-submit", onclick: submit }, "Delete"), error, done),
    h("div", { class: "card" }, h("h2", {}, "Requests"),
      h("table", { id: "privacy-requests" }, h("thead", {}, h("tr", {}, ["request", "state", "created (UTC)", "completed", "ids", "rows removed", "notes"].map((c) => h("th", {}, c)))), body)));
  await load();
  every(load, POLL_MS);
}
