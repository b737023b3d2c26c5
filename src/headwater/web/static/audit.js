// The Audit page (admins): who changed keys, users, share links, settings and deletions, when and from where;
// newest first, filtered by action and actor, with CSV / NDJSON exports of what the filters select.
// Pages get the app's helpers: { view, h, api, every(fn, ms), can(permission) }.

const PAGE = 200;
const ACTIONS = [
  ["", "every action"], ["key", "keys"], ["user", "users"], ["share", "share links"], ["settings", "settings"],
  ["privacy", "deletions"], ["plan", "tracking plan"], ["login", "sign-ins"],
];

const when = (iso) => (iso || "").replace("T", " ").replace(/\.\d+Z$/, "");

// one line for a row's details: settings rows name what changed (their whole snapshot is in the exports)
function summary(row) {
  const d = row.details || {};
  if (row.action === "settings.started") return "first start: settings recorded";
  if (row.action === "settings.changed") return "changed: " + (d.changed || []).join(", ");
  return Object.entries(d).map(([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`).join(" · ");
}

function query(filters, extra = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...filters, ...extra })) if (v) params.set(k, v);
  const text = params.toString();
  return "/api/audit" + (text ? "?" + text : "");
}

export async function auditPage(app) {
  const { view, h, api } = app;
  const action = h("select", { name: "audit-action" }, ACTIONS.map(([value, label]) => h("option", { value }, label)));
  const actor = h("input", { name: "audit-actor", placeholder: "name, or a prefix*", title: "a user or key name, cli:user@host or system; end with * for a prefix" });
  const since = h("input", { name: "audit-since", type: "date" });
  const body = h("tbody");
  const status = h("div", { class: "muted" });
  const error = h("div", { class: "error" });
  const csv = h("a", { id: "audit-csv", class: "export" }, "Export CSV");
  const ndjson = h("a", { id: "audit-ndjson", class: "export" }, "Export NDJSON");
  const more = h("button", { id: "audit-more", class: "ghost", style: "display:none" }, "Older rows");
  let rows = [];
  let next = null;

  const filters = () => ({ action: action.value, actor: actor.value.trim(), since: since.value ? since.value + "T00:00:00Z" : "" });
  const draw = () => {
    body.replaceChildren(...rows.map((r) => h("tr", { "data-id": r.id, "data-action": r.action },
      h("td", { class: "when", title: r.at }, when(r.at)),
      h("td", {}, h("strong", {}, r.actor), " ", h("span", { class: "badge off" }, r.actor_kind)),
      h("td", {}, h("code", {}, r.action)),
      h("td", {}, r.target),
      h("td", {}, r.address),
      h("td", { class: "details", title: JSON.stringify(r.details, null, 2) }, summary(r)))));
    status.textContent = rows.length ? `${rows.length} row${rows.length === 1 ? "" : "s"}, newest first` : "no rows match";
    more.style.display = next ? "" : "none";
  };
  const load = async (older = false) => {
    error.textContent = "";
    const f = filters();
    csv.href = query(f, { format: "csv" });
    ndjson.href = query(f, { format: "ndjson" });
    try {
      const page = await api(query(f, { limit: PAGE, before_id: older ? next : "" }));
      rows = older ? rows.concat(page.rows) : page.rows;
      next = page.next_before_id;
      draw();
    } catch (err) { error.textContent = err.message; }
  };
  for (const el of [action, since]) el.addEventListener("change", () => load());
  actor.addEventListener("keydown", (e) => { if (e.key === "Enter") load(); });
  more.addEventListener("click", () => load(true));

  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Audit trail"),
    h("div", { class: "muted intro" }, "Append-only record of key, user, share-link, settings and deletion changes: who, what, when, from where."),
    h("label", {}, "Action", action), h("label", {}, "Actor", actor), h("label", {}, "Since", since),
    h("button", { id: "audit-apply", onclick: () => load() }, "Apply"), " ", csv, " ", ndjson, error),
    h("div", { class: "card" }, status,
      h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ["time (UTC)", "actor", "action", "target", "from", "details"].map((c) => h("th", {}, c)))), body),
      more));
  await load();
}
