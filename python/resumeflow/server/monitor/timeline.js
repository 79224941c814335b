// Node attempts from the run's event log, and their Gantt chart.
import { duration, el } from "./dom.js";

// Folds the log's events into attempts: {node, attempt, start, end, outcome}.
export class Attempts {
  constructor() {
    this.byKey = new Map();
  }

  add(type, data) {
    const key = `${data.node}#${data.attempt}`;
    if (type === "step_start") {
      this.byKey.set(key, { node: data.node, attempt: data.attempt, start: data.ts, end: null, outcome: "running" });
      return;
    }
    const attempt = this.byKey.get(key);
    if (type === "step_complete" && attempt) Object.assign(attempt, { end: data.ts, outcome: "completed" });
    else if (type === "step_failed" && attempt) Object.assign(attempt, { end: data.ts, outcome: data.will_retry ? "retrying" : "failed", error: data.error });
    else if (type === "step_retrying" && attempt && attempt.end === null) Object.assign(attempt, { end: data.ts, outcome: "retrying" });
    else if (type.startsWith("workflow_")) {
      // Whatever is still open when the run stops was cut short (a cancel) or lost (a crash).
      for (const open of this.byKey.values()) {
        if (open.end === null && type !== "workflow_paused") Object.assign(open, { end: data.ts, outcome: type === "workflow_cancelled" ? "cancelled" : "failed" });
      }
    }
  }

  list() {
    return [...this.byKey.values()];
  }
}

// The chart: one lane per node (in `order`), one bar per attempt; open attempts reach `now`.
export function gantt(attempts, order, now) {
  const all = attempts.list();
  if (!all.length) return el("p", { class: "muted" }, "No attempt started yet.");
  const t0 = Math.min(...all.map((a) => a.start));
  const t1 = Math.max(t0 + 0.001, ...all.map((a) => a.end ?? now));
  const span = t1 - t0;
  const lanes = [];
  const nodes = [...order, ...new Set(all.map((a) => a.node).filter((n) => !order.includes(n)))];
  for (const node of nodes) {
    const mine = all.filter((a) => a.node === node);
    if (!mine.length) continue;
    const bars = mine.map((a) => {
      const end = a.end ?? now;
      const label = `attempt ${a.attempt}: ${a.outcome}, ${duration(end - a.start)}`;
      return el("div", {
        class: "bar", "data-status": a.outcome, role: "img", "aria-label": `${node} ${label}`, title: `${node} ${label}${a.error ? "\n" + a.error : ""}`,
        style: `left:${((a.start - t0) / span) * 100}%;width:${Math.max(0.4, ((end - a.start) / span) * 100)}%`,
      }, `#${a.attempt}`);
    });
    lanes.push(el("div", { class: "mono" }, node), el("div", { class: "lane" }, bars));
  }
  return el("div", { class: "gantt", "aria-label": "timeline of node attempts" }, lanes,
    el("div", { class: "axis" }, el("span", {}, "0 s"), el("span", {}, duration(span / 2)), el("span", {}, duration(span))));
}
