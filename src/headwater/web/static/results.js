// Rendering of insight results, shared by the builder, dashboards and share pages.
import { chart, h, table } from "./ui.js";

export function renderResult(container, kind, result) {
  container.replaceChildren();
  if (!result) return;
  if (kind === "trend") {
    const el = h("div", { class: "chart" });
    container.append(el);
    chart(el, {
      legend: {}, xAxis: { type: "category", data: (result[0]?.points || []).map((p) => p[0].slice(0, 16)) }, yAxis: { type: "value" },
      series: result.map((s) => ({ type: "line", name: `${s.event} ${s.measure}${s.breakdown ? " · " + s.breakdown : ""}${s.period === "previous" ? " (previous)" : ""}`, data: s.points.map((p) => p[1]) })),
    });
    container.append(table(["series", "period", "breakdown", "total"], result.map((s) => [s.event + " " + s.measure, s.period, s.breakdown ?? "", s.total ?? ""])));
  } else if (kind === "funnel") {
    for (const group of result) {
      const el = h("div", { class: "chart" });
      container.append(h("div", { class: "muted" }, group.breakdown ? `breakdown: ${group.breakdown}` : ""), el);
      chart(el, { xAxis: { type: "category", data: group.steps.map((s) => s.event) }, yAxis: { type: "value" },
        series: [{ type: "bar", data: group.steps.map((s) => s.count), label: { show: true, position: "top" } }] });
      container.append(table(["step", "event", "users", "conversion", "from previous", "drop-off", "median time (s)"],
        group.steps.map((s) => [s.step + 1, s.event, s.count, (100 * s.conversion).toFixed(1) + "%", (100 * s.conversion_from_previous).toFixed(1) + "%", s.drop_off, s.median_seconds ?? ""])));
    }
  } else if (kind === "retention") {
    const el = h("div", { class: "chart" });
    container.append(el);
    chart(el, { xAxis: { type: "category", data: result.curve.map((p) => "period " + p.period) }, yAxis: { type: "value", max: 1 },
      series: [{ type: "line", data: result.curve.map((p) => p.rate) }] });
    container.append(table(["cohort", "size", ...result.curve.map((p) => "P" + p.period)],
      result.cohorts.map((c) => [c.cohort.slice(0, 10), c.size, ...c.rates.map((r) => (100 * r).toFixed(1) + "%")])));
  } else if (kind === "journey") {
    const nodes = new Map();
    const links = result.edges.map((e) => {
      const source = `${e.step - 1}: ${e.source}`, target = `${e.step}: ${e.target}`;
      nodes.set(source, 1); nodes.set(target, 1);
      return { source, target, value: e.users };
    });
    const el = h("div", { class: "chart" });
    container.append(el);
    chart(el, { tooltip: {}, series: [{ type: "sankey", data: [...nodes.keys()].map((name) => ({ name })), links }] });
    container.append(table(["path", "users"], result.paths.map((p) => [p.path, p.users])));
  } else if (kind === "experiment") {
    container.append(table(["variant", "exposed", "converted", "rate", "95% interval", "p-value", "significant"],
      result.variants.map((v) => [v.variant + (v.control ? " (control)" : ""), v.exposed, v.converted, (100 * v.rate).toFixed(2) + "%",
        `${(100 * v.ci_low).toFixed(1)}–${(100 * v.ci_high).toFixed(1)}%`, v.p_value?.toFixed(4) ?? "", v.significant ?? ""])));
  } else if (result.columns) {
    if (result.identities) {  // a user's timeline: the person and every id stitched into it
      container.append(h("h3", {}, "Person " + result.person),
        table(["id", "linked at", "reason"], result.identities.map((i) => [i.id, i.linked_at, i.reason])));
    }
    container.append(table(result.columns, result.rows));
  } else {
    container.append(h("pre", {}, JSON.stringify(result, null, 2)));
  }
}
