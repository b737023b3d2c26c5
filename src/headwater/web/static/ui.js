// Shared helpers of the web app's pages: the element builder, the JSON API client, tables, charts and the
// current page's timers (stopped when the page changes).
export const session = { me: null };
// the page's element: a new one per route (freshView), so that a page answering late after the visitor moved on
// renders into a detached element instead of over the next page; modules read it when their page starts
export let view = document.getElementById("view");
export function freshView() {
  const next = view.cloneNode(false);
  view.replaceWith(next);
  view = next;
  return next;
}
let timers = [];

export const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const child of children.flat()) el.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return el;
};

export async function api(path, options = {}) {
  const headers = { "content-type": "application/json" };
  if (session.me && options.method && options.method !== "GET") headers["x-csrf-token"] = session.me.csrf;
  const response = await fetch(path, {
    method: options.method || "GET", headers, credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

export function table(columns, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((v) => h("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "")))))));
}

// dark mode follows the system: app.css switches its colours, charts take ECharts' dark theme
export const darkMode = () => Boolean(window.matchMedia?.("(prefers-color-scheme: dark)").matches);

export function chart(el, option) {
  // charts need a laid-out element: draw now if attached, else right after the caller attaches it
  const draw = () => {
    const dark = darkMode();
    echarts.getInstanceByDom(el)?.dispose();
    el.dataset.theme = dark ? "dark" : "light";
    echarts.init(el, dark ? "dark" : null).setOption({ animation: false, tooltip: { trigger: "axis" }, grid: { left: 50, right: 20, top: 30, bottom: 40 },
      ...(dark ? { backgroundColor: "transparent" } : {}), ...option });
  };
  if (el.isConnected) draw();
  else requestAnimationFrame(draw);
}


export const every = (fn, ms) => timers.push(setInterval(fn, ms));
export const later = (fn, ms) => timers.push(setTimeout(fn, ms));
export const can = (permission) => Boolean(session.me?.permissions.includes(permission));
export function stopTimers() {
  timers.forEach((t) => { clearInterval(t); clearTimeout(t); });
  timers = [];
}
// what page modules get: { view, h, api, table, chart, every, later, can }
export const helpers = { view, h, api, table, chart, every, later, can };

