// Small DOM and formatting helpers shared by the views.

/** Creates an element: h("a", {href: "#/", class: "x", onclick: fn}, "text", child). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const STATUSES = [
  "pending",
  "queued",
  "running",
  "paused",
  "completed",
  "failed",
  "cancelled",
];
const FINISHED = new Set(["completed", "failed", "cancelled"]);
export const isFinished = (status) => FINISHED.has(status);

export function badge(status) {
  return h("span", { class: `badge s-${status}`, dataset: { status } }, status);
}

export function num(value, digits = 4) {
  return value == null || Number.isNaN(value) ? "—" : Number(value).toFixed(digits);
}

export function percent(value, digits = 1) {
  return value == null ? "—" : `${(100 * value).toFixed(digits)} %`;
}

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function progressBar(percentValue, label) {
  const p = Math.max(0, Math.min(100, percentValue ?? 0));
  return h(
    "div",
    {
      class: "progress",
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": p.toFixed(1),
    },
    h("div", { class: "progress-fill", style: `width:${p}%` }),
    h("span", { class: "progress-label" }, label ?? `${p.toFixed(1)} %`),
  );
}

/** An error box; `error` may be an ApiError, an Error or a string. */
export function errorBox(error) {
  return h("div", { class: "error-box", role: "alert" }, error?.message ?? String(error));
}
