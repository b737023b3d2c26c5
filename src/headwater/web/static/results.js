// Rendering of insight results, shared by the builder, dashboards and share pages.
import { chart, h, table } from "./ui.js";

const seriesName = (s) => `${s.event} ${s.measure}${s.breakdown != null ? " · " + s.breakdown : ""}${s.period === "previous" ? " (previous)" : ""}`;
const PALETTE = ["#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#c2255c", "#5c940d", "#364fc7", "#868e96"];
const label = (iso) => String(iso).slice(0, 16).replace("T", " ").replace(/ 00:00$/, "");

// a trend chart: one line per series; when asked, the expected band (shaded), anomalies (marked points)
// and the forecast (dashed, with its interval shaded) after the last point
export function trendOption(result) {
  const base = result.find((s) => s.period !== "previous") || result[0];
  const xs = base.points.map((p) => p[0]);
  const future = [...new Set(result.flatMap((s) => (s.forecast?.points || []).map((p) => p[0])))].filter((x) => !xs.includes(x)).sort();
  const all = [...xs, ...future];
  const at = new Map(all.map((x, i) => [x, i]));
  const blank = () => all.map(() => null);
  const series = [];
  const bandOf = (rows, name, color, stack) => {
    const low = blank(), width = blank();
    for (const [x, , lo, hi] of rows) {
      const i = at.get(x);
      if (i === undefined || lo == null || hi == null) continue;
      low[i] = lo; width[i] = hi - lo;
    }
    series.push({ type: "line", name, stack, data: low, lineStyle: { opacity: 0 }, symbol: "none", silent: true, tooltip: { show: false }, legendHoverLink: false },
      { type: "line", name, stack, data: width, lineStyle: { opacity: 0 }, symbol: "none", silent: true, areaStyle: { color, opacity: 0.15 }, tooltip: { show: false } });
  };
  result.forEach((s, index) => {
    const name = seriesName(s);
    const color = PALETTE[index % PALETTE.length];
    const line = blank();
    s.points.forEach((p, i) => { line[s.period === "previous" ? i : at.get(p[0]) ?? i] = p[1]; });
    series.push({ type: "line", name, data: line, color, showSymbol: s.points.length < 60, lineStyle: s.period === "previous" ? { type: "dotted" } : undefined });
    if (s.band && index < 5) bandOf(s.band, name, color, "band" + index);
    if (s.anomalies?.length) {
      series.push({ type: "scatter", name, color: "#d92d20", symbolSize: 11, z: 5,
        data: s.anomalies.filter((a) => at.has(a[0])).map((a) => ({ value: [at.get(a[0]), a[1]], direction: a[2] })),
      });
    }
    if (s.forecast?.points?.length) {
      const dashed = blank();
      const last = s.points[s.points.length - 1];
      if (last && at.has(last[0])) dashed[at.get(last[0])] = last[1];
      for (const [x, yhat] of s.forecast.points) if (at.has(x)) dashed[at.get(x)] = yhat;
      series.push({ type: "line", name: name + " (forecast)", data: dashed, color, lineStyle: { type: "dashed" }, showSymbol: false, connectNulls: false });
      bandOf(s.forecast.points, name + " (forecast)", color, "forecast" + index);
    }
  });
  const names = [...new Set(series.map((x) => x.name))];
  return { legend: { data: names, type: "scroll", top: 0 }, grid: { left: 50, right: 20, top: 40, bottom: 40 }, xAxis: { type: "category", data: all.map(label) }, yAxis: { type: "value" }, series,
    tooltip: { trigger: "axis", formatter: (items) => {
      const list = Array.isArray(items) ? items : [items];
      const rows = list.filter((i) => i.seriesType === "line" && i.value != null && series[i.seriesIndex]?.lineStyle?.opacity !== 0)
        .map((i) => `${i.marker}${i.seriesName}: ${i.value}`);
      const marks = list.filter((i) => i.seriesType === "scatter").map((i) => `⚠ ${i.seriesName}: unusually ${i.data.direction}`);
      return rows.length || marks.length ? [list[0].axisValue, ...rows, ...marks].join("<br>") : "";
    } } };
}

// "3: 2026-11-13 high, 2026-11-15 high, 2026-11-16 low, … (+2)" (the first ones of a line's anomalies)
const anomalyText = (list) => (list.length ? `${list.length}: ${list.slice(0, 3).map((a) => `${label(a[0])} ${a[2]}`).join(", ")}${list.length > 3 ? `, … (+${list.length - 3})` : ""}` : "none");

// "Forecast …: backtest error ±x %" per forecast series (or why there is none)
export function forecastCaptions(result) {
  return result.filter((s) => s.forecast).map((s) => {
    const f = s.forecast;
    if (f.error) return h("div", { class: "forecast-caption muted" }, `${seriesName(s)}: no forecast (${f.error})`);
    const b = f.backtest || {};
    const mape = b.mape == null ? null : Number(b.mape);  // in % (insights/forecast.py)
    return h("div", { class: "forecast-caption" }, h("strong", {}, `${seriesName(s)}: forecast ${f.points.length} intervals`),
      ` (${f.model || "model"}), `, h("span", { class: "backtest" }, mape == null ? "backtest error n/a" : `backtest error ±${mape.toFixed(mape < 10 ? 1 : 0)} %`),
      b.mae != null ? h("span", { class: "muted" }, ` · MAE ${Number(b.mae).toFixed(1)} at ${b.horizon} intervals ahead over ${b.origins} origins`) : "");
  });
}

export function renderResult(container, kind, result) {
  container.replaceChildren();
  if (!result) return;
  if (kind === "trend") {
    if (!result.length) { container.append(h("div", { class: "empty" }, "No matching events in this range: widen the dates or remove a filter.")); return; }
    const el = h("div", { class: "chart" });
    container.append(el);
    chart(el, trendOption(result));
    const captions = forecastCaptions(result);
    if (captions.length) container.append(h("div", { class: "forecast-captions" }, captions));
    const anomalies = result.reduce((n, s) => n + (s.anomalies?.length || 0), 0);
    const banded = result.some((s) => s.band);
    if (banded) container.append(h("div", { class: "muted band-caption" }, `Shaded: the expected band (same slot in the previous 4 weeks: median ± 3 robust deviations). ${anomalies} point${anomalies === 1 ? "" : "s"} outside it.`));
    container.append(table(["series", "period", "breakdown", "total", ...(banded ? ["anomalies"] : [])], result.map((s) => [seriesName(s), s.period, s.breakdown ?? "", s.total ?? (s.measure === "sum" ? s.points.reduce((t, p) => t + (p[1] ?? 0), 0) : ""),
      ...(banded ? [anomalyText(s.anomalies || [])] : [])])));
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
