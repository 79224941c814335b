// Small DOM and formatting helpers shared by the views.

// el("td", {class: "x", "data-status": s}, child, "text", null, …)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  return fill(node, ...children, true);
}

// Replaces node's children (or, with `keep` last, appends): arrays are flattened, and
// null, undefined and false are left out.
export function fill(node, ...children) {
  const keep = children[children.length - 1] === true;
  if (keep) children.pop();
  const flat = children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);
  if (keep) node.append(...flat);
  else node.replaceChildren(...flat);
  return node;
}

// A status as text with its colour (never colour alone).
export function badge(status) {
  return el("span", { class: "badge", "data-status": status }, status ?? "unknown");
}

export function time(ts) {
  if (ts === null || ts === undefined) return "—";
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(2)} s`;
  const m = Math.floor(seconds / 60);
  return m < 120 ? `${m} min ${Math.round(seconds % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function json(value, limit = 4000) {
  let text;
  try { text = JSON.stringify(value, null, 2); } catch { text = String(value); }
  if (text === undefined) text = String(value);
  return text.length > limit ? `${text.slice(0, limit)}\n… (${text.length - limit} more characters)` : text;
}

// Calls fn at most once per `ms`, with the latest call's effect (trailing edge).
export function debounce(fn, ms) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

// Activates on click, Enter and Space (for rows and other non-button controls).
export function activate(node, fn) {
  node.addEventListener("click", fn);
  node.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fn(e); }
  });
}
