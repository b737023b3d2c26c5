// The Alerts page (#/alerts): alerts firing and pending now, the rules evaluated (built-in, metric rules from
// headwater.toml, trend alerts) with their last error, silences (admins add and end them), the history of
// firing/resolved notifications with their delivery per webhook, and a test notification (admins); trend alerts
// (rules on saved trends: list with state, create — `#/alerts?insight=<id>` preselects the trend —, dry run, history).
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

// ---------- Trend alerts: rules on saved trends (threshold or anomaly per interval), evaluated by the ops worker
const OPS = { threshold: [">", ">=", "<", "<="], anomaly: ["outside", "above", "below"] };
const STATE = { firing: "bad", pending: "warn", ok: "ok", disabled: "off" };

function condition(r) {
  const per = r.interval ? `per ${r.interval}` : "per interval";
  return r.mode === "threshold" ? `value ${r.op} ${r.threshold} ${per}` : `${r.op} its expected band ${per}`;
}

export function trendAlerts(app, { onChange }) {
  const { h, api, can, params } = app;
  const writer = can("analyze");
  const list = h("div", { id: "trend-alerts-list" });
  const detail = h("div", { id: "trend-alert-detail" });
  const error = h("div", { class: "error", id: "trend-alert-error" });
  let trends = [];
  const f = {
    insight: h("select", { name: "trend-insight" }),
    series: h("select", { name: "trend-series" }),
    breakdown: h("input", { name: "trend-breakdown", placeholder: "every line", size: 14, title: "one breakdown value, or empty: one alert per line" }),
    mode: h("select", { name: "trend-mode" }, h("option", { value: "threshold" }, "threshold"), h("option", { value: "anomaly" }, "anomaly")),
    op: h("select", { name: "trend-op" }),
    threshold: h("input", { name: "trend-threshold", type: "number", step: "any", style: "width:7em" }),
    interval: h("select", { name: "trend-interval" }, h("option", { value: "" }, "the trend's"), ...["hour", "day", "week", "month"].map((i) => h("option", { value: i }, i))),
    name: h("input", { name: "trend-name", placeholder: "e.g. Orders dropped", size: 22 }),
    webhook: h("input", { name: "trend-webhook", placeholder: "https://… (optional)", size: 30 }),
    severity: h("select", { name: "trend-severity" }, ...["warning", "critical", "info"].map((s) => h("option", { value: s }, s))),
  };
  const syncOps = () => {
    f.op.replaceChildren(...OPS[f.mode.value].map((o) => h("option", { value: o }, o)));
    f.threshold.disabled = f.mode.value !== "threshold";
  };
  const syncSeries = () => {
    const saved = trends.find((t) => String(t.id) === f.insight.value);
    const series = saved ? saved.query.series : [];
    f.series.replaceChildren(...series.map((s, i) => h("option", { value: i }, `${i + 1}. ${s.measure || "count"} of ${s.event}`)));
    f.breakdown.disabled = !saved?.query.breakdown;
    f.breakdown.placeholder = saved?.query.breakdown ? `every ${saved.query.breakdown}` : "no breakdown";
    if (saved && !f.name.value) f.name.value = saved.name;
  };
  f.mode.addEventListener("change", syncOps);
  f.insight.addEventListener("change", syncSeries);
  syncOps();

  const act = (fn) => async () => {
    error.textContent = "";
    try { await fn(); } catch (err) { error.textContent = err.message; }
  };
  const create = act(async () => {
    const body = {
      name: f.name.value.trim(), insight_id: Number(f.insight.value), series: Number(f.series.value || 0), mode: f.mode.value,
      op: f.op.value, interval: f.interval.value || null, severity: f.severity.value, webhook: f.webhook.value.trim(),
    };
    if (f.breakdown.value.trim()) body.breakdown = f.breakdown.value.trim();
    if (f.mode.value === "threshold") body.threshold = f.threshold.value === "" ? null : Number(f.threshold.value);
    await api("/api/trend-alerts", { method: "POST", body });
    f.name.value = "";
    await load();
    onChange?.();
  });
  const spec = (r) => Object.fromEntries(["name", "insight_id", "series", "breakdown", "mode", "op", "threshold", "interval", "severity", "enabled"].map((k) => [k, r[k]]));
  const toggle = (r) => act(async () => {
    // the webhook is sent back only when shown (admins): without it, the server keeps the rule's
    const body = { ...spec(r), enabled: !r.enabled, ...(typeof r.webhook === "string" ? { webhook: r.webhook } : {}) };
    await api(`/api/trend-alerts/${r.id}`, { method: "PUT", body });
    await load();
  });
  const remove = (r) => act(async () => {
    if (!confirm(`Delete the trend alert "${r.name}"?`)) return;
    await api(`/api/trend-alerts/${r.id}`, { method: "DELETE" });
    await load();
  });
  const dryRun = (r) => act(async () => {
    detail.replaceChildren("Evaluating…");
    const seen = await api(`/api/trend-alerts/${r.id}/evaluate`, { method: "POST", body: {} });
    const rows = seen.lines.map((l) => [l.breakdown ?? "", when(Date.parse(l.interval_start + "Z") / 1000) + (l.in_progress ? " (in progress)" : ""),
      value(l.value), l.expected == null ? "" : `${value(l.low)} – ${value(l.high)} (expected ${value(l.expected)})`,
      badge(h, l.holds ? "holds" : "no", l.holds ? "bad" : "ok")]);
    detail.replaceChildren(h("h3", {}, `Dry run of ${r.name}: ${seen.would_fire ? "would fire" : "would not fire"}`),
      rows.length ? grid(h, ["line", "interval", "value", "band", "condition"], rows, { class: "trend-dry-run" }) : h("div", { class: "muted" }, "No line to judge."));
  });
  const showHistory = (r) => act(async () => {
    const past = await api(`/api/alerts/history?limit=50&rule=${encodeURIComponent(r.rule)}`);
    detail.replaceChildren(h("h3", {}, `History of ${r.name}`), past.history.length
      ? grid(h, ["at", "state", "summary", "delivery"], past.history.map((e) => [when(e.at), badge(h, e.state, e.state === "firing" ? SEVERITY[e.severity] : "ok"), e.summary, badge(h, e.delivery, DELIVERY[e.delivery])]), { class: "trend-history" })
      : h("div", { class: "muted" }, "It has not fired yet."));
  });

  const draw = (rules) => {
    const names = Object.fromEntries(trends.map((t) => [t.id, t.name]));
    const rows = rules.map((r) => h("tr", { "data-trend-alert": r.id, "data-state": r.state },
      h("td", {}, h("strong", {}, r.name), h("div", { class: "muted" }, h("code", {}, r.rule))),
      h("td", {}, names[r.insight_id] || `insight ${r.insight_id}`, r.breakdown ? h("div", { class: "muted" }, `line ${r.breakdown}`) : ""),
      h("td", {}, condition(r)),
      h("td", {}, badge(h, r.state, STATE[r.state]), ...r.alerts.filter((a) => a.state === "firing").map((a) => h("div", { class: "muted" }, a.summary))),
      h("td", {}, r.error ? h("span", { class: "error" }, r.error) : r.evaluated_at ? `${ago(r.evaluated_at)} ago` : "not yet"),
      h("td", {}, h("button", { class: "ghost", onclick: dryRun(r) }, "Evaluate"), h("button", { class: "ghost", onclick: showHistory(r) }, "History"),
        writer ? h("button", { class: "ghost", onclick: toggle(r) }, r.enabled ? "Disable" : "Enable") : "",
        writer ? h("button", { class: "ghost", onclick: remove(r) }, "Delete") : "")));
    list.replaceChildren(rows.length ? grid(h, ["alert", "trend", "condition", "state", "evaluated", ""], rows, { class: "trend-alerts" })
      : h("div", { class: "muted", id: "trend-alerts-none" }, trends.length ? "No trend alert yet: pick a saved trend below." : "Save a trend in Insights first, then alert on it here."));
  };

  let filled = false;
  const load = async () => {
    try {
      const [saved, rules] = await Promise.all([api("/api/saved-insights"), api("/api/trend-alerts")]);
      trends = saved.filter((s) => s.query?.kind === "trend");
      if (!filled) { // the form's choices once (the page polls: a half-filled form keeps its values)
        filled = true;
        const wanted = params?.get("insight") || "";
        f.insight.replaceChildren(...trends.map((t) => h("option", { value: t.id }, t.name)));
        if (trends.some((t) => String(t.id) === wanted)) f.insight.value = wanted;
        syncSeries();
      }
      draw(rules.trend_alerts);
    } catch (err) { error.textContent = err.message; }
  };

  const form = writer ? h("div", { id: "trend-alert-form", class: "form-row" },
    h("label", {}, "Trend ", f.insight), h("label", {}, "Series ", f.series), h("label", {}, "Line ", f.breakdown),
    h("label", {}, "Mode ", f.mode), h("label", {}, "When ", f.op), h("label", {}, "Threshold ", f.threshold), h("label", {}, "Interval ", f.interval),
    h("label", {}, "Name ", f.name), h("label", {}, "Webhook ", f.webhook), h("label", {}, "Severity ", f.severity),
    h("button", { id: "trend-alert-create", onclick: create }, "Create alert")) : "";
  const el = h("div", { class: "card", id: "trend-alerts" }, h("h2", {}, "Trend alerts"),
    h("div", { class: "muted" }, "Threshold: the value of the last complete interval (or the one in progress, once a count is over it). Anomaly: outside the expected band (the same slot in the four previous weeks). One notification when it fires, one when it resolves."),
    error, list, form, detail);
  return { el, load };
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

  const trends = trendAlerts(app, { onChange: () => load() });
  const load = async () => {
    trends.load();
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
    trends.el,
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
