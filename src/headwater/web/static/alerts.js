// The Alerts page (#/alerts): alerts firing and pending now, the rules evaluated (built-in, metric rules from
// headwater.toml, trend alerts) with their last error, silences (admins add and end them), the history of
// firing/resolved notifications with their delivery per webhook, and a test notification (admins).
// Pages get the app's helpers: { view, h, api, every(fn, ms), can(permission) }.

const POLL_MS = 15000;
const HISTORY = 100;
const SEVERITY = { critical: "bad", warning: "warn", info: "off" };
const DELIVERY = { delivered: "ok", pending: "warn", failed: "bad", silenced: "off", none: "off" };

const when = (s) => (s == null ? "" : new Date(s * 1000).toISOString().replace("T", " ").slice(0, 19));
const ago = (s) => {
  if (s == null) return "";
  const d = Math.max(0, Date.now() / 1000 - s);
  return d < 60 ? `${Math.round(d)} s` : d < 3600 ? `${Math.round(d / 60)} min` : d < 86400 ? `${(d / 3600).toFixed(1)} h` : `${(d / 86400).toFixed(1)} d`;
};
const labelText = (labels) => Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
const value = (v) => (v == null ? "" : Math.abs(v) >= 100 ? Math.round(v).toLocaleString() : Number(v).toPrecision(3));

function grid(h, columns, rows, attrs = {}) {
  const cell = (v) => h("td", {}, v instanceof Node ? v : v == null ? "" : String(v));
  return h("table", attrs, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map(cell))))));
}

const badge = (h, text, cls) => h("span", { class: `badge ${cls || "off"}` }, text);

function parseLabels(text) {
  const out = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at < 1) throw new Error(`labels: write name=value pairs separated by commas, not "${part}"`);
    out[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return out;
}

export async function alertsPage(app) {
  const { view, h, api, every, can } = app;
  const admin = can("manage");
  const status = h("div", { class: "muted", id: "alerts-status" });
  const current = h("div", { id: "alerts-current" });
  const rules = h("div", { id: "alerts-rules" });
  const silences = h("div", { id: "alerts-silences" });
  const history = h("div", { id: "alerts-history" });
  const error = h("div", { class: "error" });
  const testOut = h("div", { id: "alerts-test-result" });
  const form = {
    rule: h("input", { name: "silence-rule", value: "*", size: 18, title: "a rule name, or * for every rule" }),
    labels: h("input", { name: "silence-labels", placeholder: "name=value, …", size: 22 }),
    minutes: h("input", { name: "silence-minutes", type: "number", min: 1, value: 60, style: "width:6em" }),
    comment: h("input", { name: "silence-comment", placeholder: "why", size: 24 }),
  };

  const silence = (rule, labels) => async () => {
    form.rule.value = rule;
    form.labels.value = labelText(labels).replaceAll(", ", ",");
    form.comment.focus();
  };

  const drawCurrent = (doc) => {
    const ev = doc.evaluator;
    status.replaceChildren(!ev.enabled ? "Alerting is off (alerts_enabled = false)."
      : ev.running ? `Evaluated every ${ev.interval_s} s, last ${ago(ev.evaluated_at)} ago · ${doc.webhooks} webhook${doc.webhooks === 1 ? "" : "s"}`
        : h("span", { class: "error" }, `The evaluator has not run ${ev.evaluated_at ? `for ${ago(ev.evaluated_at)}` : "yet"}: is the ops worker running (headwater up)?`));
    const rows = doc.alerts.map((a) => h("tr", { "data-rule": a.rule, "data-state": a.state },
      h("td", {}, badge(h, a.state, a.state === "firing" ? SEVERITY[a.severity] : "off")),
      h("td", {}, h("strong", {}, a.rule), a.labels && Object.keys(a.labels).length ? h("div", { class: "muted" }, labelText(a.labels)) : ""),
      h("td", {}, badge(h, a.severity, SEVERITY[a.severity])),
      h("td", {}, a.summary),
      h("td", {}, value(a.value)),
      h("td", { title: when(a.fired_at || a.active_since) }, ago(a.fired_at || a.active_since)),
      h("td", {}, admin ? h("button", { class: "ghost", onclick: silence(a.rule, a.labels) }, "Silence…") : "")));
    current.replaceChildren(rows.length
      ? grid(h, ["state", "alert", "severity", "summary", "value", "since", ""], rows, { class: "alerts-current" })
      : h("div", { class: "muted", id: "alerts-none" }, "Nothing is firing."));
    const ruleRows = doc.rules.map((r) => h("tr", { "data-rule": r.name },
      h("td", {}, h("code", {}, r.name)), h("td", {}, r.kind), h("td", {}, badge(h, r.definition.severity, SEVERITY[r.definition.severity])),
      h("td", {}, r.definition.summary || ""),
      h("td", {}, r.definition.for_s == null ? "" : `${r.definition.for_s} s`),
      h("td", { class: "muted" }, r.definition.settings ? Object.entries(r.definition.settings).map(([k, v]) => `${k} = ${v ?? "unset"}`).join(" · ") : ""),
      h("td", {}, r.error ? h("span", { class: "error" }, r.error) : "")));
    rules.replaceChildren(ruleRows.length ? grid(h, ["rule", "kind", "severity", "condition", "for", "settings", "last error"], ruleRows, { class: "alerts-rules" })
      : h("div", { class: "muted" }, "No rule evaluated yet."));
    const silenceRows = doc.silences.map((s) => h("tr", { "data-silence": s.id },
      h("td", {}, h("code", {}, s.rule)), h("td", {}, labelText(s.labels)), h("td", {}, when(s.starts_at)), h("td", {}, when(s.ends_at)),
      h("td", {}, s.created_by), h("td", {}, s.comment),
      h("td", {}, admin ? h("button", { class: "ghost", onclick: () => endSilence(s.id) }, "End") : "")));
    silences.replaceChildren(silenceRows.length ? grid(h, ["rule", "labels", "from", "until", "by", "comment", ""], silenceRows, { class: "alerts-silences" })
      : h("div", { class: "muted" }, "No active silence."));
  };

  const drawHistory = (rows) => {
    history.replaceChildren(rows.length ? grid(h, ["at", "alert", "state", "summary", "delivery"], rows.map((e) => h("tr", { "data-rule": e.rule, "data-state": e.state },
      h("td", {}, when(e.at)),
      h("td", {}, h("strong", {}, e.rule), Object.keys(e.labels).length ? h("div", { class: "muted" }, labelText(e.labels)) : ""),
      h("td", {}, badge(h, e.state, e.state === "firing" ? SEVERITY[e.severity] : "ok")),
      h("td", {}, e.summary),
      h("td", { title: Object.entries(e.deliveries).map(([u, d]) => `${u}: ${d.ok ? "ok" : d.error}`).join("\n") },
        badge(h, e.delivery, DELIVERY[e.delivery]), e.attempts > 1 ? ` (${e.attempts} attempts)` : ""))), { class: "alerts-history" })
      : h("div", { class: "muted" }, "No alert has fired yet."));
  };

  const load = async () => {
    try {
      const [doc, past] = await Promise.all([api("/api/alerts"), api(`/api/alerts/history?limit=${HISTORY}`)]);
      error.textContent = "";
      drawCurrent(doc);
      drawHistory(past.history);
    } catch (err) { error.textContent = err.message; }
  };

  const addSilence = async () => {
    error.textContent = "";
    try {
      const body = { rule: form.rule.value.trim() || "*", labels: parseLabels(form.labels.value), minutes: Number(form.minutes.value), comment: form.comment.value };
      await api("/api/alerts/silences", { method: "POST", body });
      form.comment.value = "";
      await load();
    } catch (err) { error.textContent = err.message; }
  };

  const endSilence = async (id) => {
    error.textContent = "";
    try {
      await api(`/api/alerts/silences/${id}`, { method: "DELETE" });
      await load();
    } catch (err) { error.textContent = err.message; }
  };

  const sendTest = async () => {
    testOut.replaceChildren("Sending…");
    try {
      const answer = await api("/api/alerts/test", { method: "POST", body: {} });
      testOut.replaceChildren(...answer.results.map((r) => h("div", {}, badge(h, r.ok ? "ok" : "failed", r.ok ? "ok" : "bad"), " ", h("code", {}, r.url), r.error ? ` ${r.error}` : "")));
    } catch (err) { testOut.replaceChildren(h("span", { class: "error" }, err.message)); }
  };

  view.replaceChildren(
    h("div", { class: "card" }, h("h2", {}, "Alerts"), status, error, current),
    h("div", { class: "card" }, h("h2", {}, "Silences"), silences,
      admin ? h("div", { id: "silence-form" }, h("label", {}, "Rule ", form.rule), h("label", {}, "Labels ", form.labels),
        h("label", {}, "Minutes ", form.minutes), h("label", {}, "Comment ", form.comment),
        h("button", { id: "silence-add", onclick: addSilence }, "Silence")) : ""),
    h("div", { class: "card" }, h("h2", {}, "History"), history),
    h("div", { class: "card" }, h("h2", {}, "Rules"), rules,
      admin ? h("div", {}, h("button", { id: "alerts-test", class: "ghost", onclick: sendTest }, "Send a test notification"), testOut) : ""));
  await load();
  every(load, POLL_MS);
}
