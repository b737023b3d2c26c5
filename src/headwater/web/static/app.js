// Headwater web app: a small single-page app over the JSON API (no build step). Pages live in their own
// modules; this one signs in, routes, and holds the small pages (SQL, catalog, keys & users).
import { alertsPage } from "./alerts.js";
import { auditPage } from "./audit.js";
import { cohortsPage } from "./cohorts.js";
import { dashboardPage, dashboardsPage, sharePage } from "./dashboards.js";
import { insightsPage } from "./insights.js";
import { livePage } from "./live.js";
import { modelsPage } from "./models.js";
import { planPage } from "./plan.js";
import { privacyPage } from "./privacy.js";
import { processorsPage, streamLive } from "./processors.js";
import { sourcesPage } from "./sources.js";
import { timelinePage } from "./timeline.js";
import { api, chart, freshView, h, helpers, session, stopTimers, table } from "./ui.js";

// ---------- pages
function login() {
  const name = h("input", { name: "name", autocomplete: "username" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password" });
  const error = h("div", { class: "error" });
  const form = h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault();
    try {
      session.me = await api("/api/login", { method: "POST", body: { name: name.value, password: password.value } });
      session.me = await api("/api/me");
      route();  // where the visitor was going, else the home page
    } catch (err) { error.textContent = err.message; }
  } }, h("h2", {}, "Sign in"), h("label", {}, "Name", name), h("label", {}, "Password", password), h("div", {}, h("button", { type: "submit" }, "Sign in")), error);
  view.replaceChildren(form);
}

// `#/sql/<url-encoded SQL>` opens the page with that query, and runs it
function sqlPage(initial) {
  const text = h("textarea", { name: "sql" }, initial || "SELECT event, count(*) AS events, count(DISTINCT user_id) AS users\nFROM events GROUP BY event ORDER BY events DESC");
  const out = h("div");
  const error = h("div", { class: "error" });
  let last = null;
  const run = async () => {
    error.textContent = "";
    try {
      last = await api("/api/query", { method: "POST", body: { sql: text.value } });
      out.replaceChildren(h("div", { class: "muted" }, `${last.row_count} rows in ${last.elapsed_ms} ms${last.truncated ? " (truncated)" : ""}`));
      if (last.columns.length >= 2 && last.rows.length && typeof last.rows[0][1] === "number") {
        const el = h("div", { class: "chart" });
        out.append(el);
        chart(el, { xAxis: { type: "category", data: last.rows.map((r) => String(r[0])) }, yAxis: { type: "value" }, series: [{ type: "bar", data: last.rows.map((r) => r[1]) }] });
      }
      out.append(table(last.columns, last.rows));
    } catch (err) { error.textContent = err.message; }
  };
  const csv = () => {
    if (!last) return;
    const quote = (v) => `"${String(v ?? "").replaceAll('"', '""')}"`;
    const body = [last.columns, ...last.rows].map((r) => r.map(quote).join(",")).join("\n");
    const link = h("a", { href: URL.createObjectURL(new Blob([body], { type: "text/csv" })), download: "query.csv" });
    link.click();
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "SQL"), text, h("div", {}, h("button", { onclick: run }, "Run"), " ", h("button", { class: "ghost", onclick: csv }, "Download CSV")), error), h("div", { class: "card" }, out));
  if (initial) run();
}

async function catalog() {
  const data = await api("/api/insights", { method: "POST", body: { kind: "catalog" } });
  const r = data.result;
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Events"), table(["event", "events", "users", "first seen", "last seen"], r.events.map((e) => [e.event, e.events, e.users, e.first_seen, e.last_seen]))),
    h("div", { class: "card" }, h("h2", {}, "Properties"), table(["event", "property", "type", "events", "first seen", "last seen"], r.properties.map((p) => [p.event, p.property, p.type, p.events, p.first_seen, p.last_seen]))));
}

async function keys() {
  const name = h("input", { name: "key-name" });
  const role = h("select", { name: "key-role" }, ["write", "read", "admin"].map((r) => h("option", { value: r }, r)));
  const out = h("div");
  const shown = h("div", { class: "muted" });
  const load = async () => out.replaceChildren(table(["name", "role", "prefix", "status", ""], (await api("/api/keys")).map((k) => [k.name, k.role, k.prefix + "…", k.revoked ? "revoked" : "active",
    k.revoked ? "" : h("button", { class: "ghost", onclick: async () => { await api("/api/keys/" + encodeURIComponent(k.name), { method: "DELETE" }); load(); } }, "Revoke")])));
  const create = async () => {
    try {
      const made = await api("/api/keys", { method: "POST", body: { name: name.value, role: role.value } });
      shown.textContent = `New ${made.role} key (shown once): ${made.key}`;
      load();
    } catch (err) { shown.textContent = err.message; }
  };
  const userName = h("input", { name: "user-name" });
  const userRole = h("select", { name: "user-role" }, ["viewer", "analyst", "admin"].map((r) => h("option", { value: r }, r)));
  const userPassword = h("input", { name: "user-password", type: "password", placeholder: "at least 10 characters" });
  const users = h("div");
  const userMessage = h("div", { class: "muted" });
  const loadUsers = async () => users.replaceChildren(table(["user", "role", ""], (await api("/api/users")).map((u) => [u.name, u.role,
    u.name === session.me.user ? "" : h("button", { class: "ghost", onclick: async () => { await api("/api/users/" + encodeURIComponent(u.name), { method: "DELETE" }); loadUsers(); } }, "Delete")])));
  const addUser = async () => {
    try {
      await api("/api/users", { method: "POST", body: { name: userName.value, role: userRole.value, password: userPassword.value } });
      userMessage.textContent = `created ${userRole.value} ${userName.value}`;
      loadUsers();
    } catch (err) { userMessage.textContent = err.message; }
  };
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "Keys & users"), h("label", {}, "Name", name), h("label", {}, "Role", role), h("button", { onclick: create }, "Create key"), shown), h("div", { class: "card" }, out),
    h("div", { class: "card" }, h("h2", {}, "Users"), h("label", {}, "Name", userName), h("label", {}, "Role", userRole), h("label", {}, "Password", userPassword), h("button", { id: "add-user", onclick: addUser }, "Add user"), userMessage, users));
  await load();
  await loadUsers();
}

// ---------- routing: `#/<page>/<arg>?<params>` (pages read `app.params`, a URLSearchParams)
let view = document.getElementById("view");

async function route() {
  stopTimers();
  view = freshView();
  if (location.pathname.startsWith("/share/")) return sharePage(location.pathname.slice(7));
  if (!session.me) session.me = await api("/api/me").catch(() => null);
  const me = session.me;
  const who = document.getElementById("who");
  if (!me) { who.replaceChildren(); return login(); }
  who.replaceChildren(`${me.user} (${me.role}) `, h("button", { class: "ghost", onclick: async () => { await api("/api/logout", { method: "POST" }); session.me = null; route(); } }, "Sign out"));
  const [path, query] = location.hash.replace(/^#\//, "").split("?");
  for (const a of document.querySelectorAll("#nav a")) {
    a.style.display = a.dataset.needs && !me.permissions.includes(a.dataset.needs) ? "none" : "";
    a.classList.toggle("active", ("#/" + path).startsWith(a.getAttribute("href")));
  }
  const [page, arg] = path.split("/");
  if (!page) {  // home: the first dashboard (the demo's, after `make up`), else the live events
    const boards = await api("/api/dashboards").catch(() => []);
    location.replace(boards.length ? `#/dashboard/${boards[0].id}` : "#/live");
    return;
  }
  const app = { ...helpers, view, params: new URLSearchParams(query || "") };
  try {
    if (page === "insights") await insightsPage(app);
    else if (page === "sql") sqlPage(arg ? decodeURIComponent(arg) : undefined);
    else if (page === "dashboards") await dashboardsPage(app);
    else if (page === "dashboard") await dashboardPage(arg, app);
    else if (page === "cohorts") await cohortsPage(app, arg ? decodeURIComponent(arg) : undefined);
    else if (page === "timeline") await timelinePage(app, decodeURIComponent(arg || ""));
    else if (page === "catalog") await catalog();
    else if (page === "keys") await keys();
    else if (page === "processors") await processorsPage(app);
    else if (page === "sources") await sourcesPage(app);
    else if (page === "audit") await auditPage(app);
    else if (page === "privacy") await privacyPage(app);
    else if (page === "plan") await planPage(app);
    else if (page === "models") await modelsPage(app);
    else if (page === "alerts") await alertsPage(app);
    else if (page === "live" && arg) streamLive(app, decodeURIComponent(arg));
    else await livePage(app);
  } catch (err) { view.replaceChildren(h("div", { class: "card error" }, err.message)); }
}

window.addEventListener("hashchange", route);
route();
