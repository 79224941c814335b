// The monitor's shell: the store-wide change feed (GET /api/v1/events), the message line,
// and the two views (#/ the runs list, #/runs/ID one run).
import { api, events } from "./api.js";
import { el, fill } from "./dom.js";
import { RunsView } from "./runs.js";
import { RunView } from "./run.js";

// -- the message line: errors in words, and what an action did ---------------------------------

const message = document.getElementById("message");
export function say(text, kind = "info") {
  fill(message, el("span", {}, text),
    el("button", { type: "button", "aria-label": "dismiss message", onclick: () => { message.hidden = true; } }, "×"));
  message.dataset.kind = kind;
  message.hidden = false;
}
export function sayError(prefix, err) {
  say(`${prefix}: ${err.describe ? err.describe() : err.message}`, "error");
}

// -- the store-wide feed: counts per status and every run's status changes --------------------

export const feed = {
  listeners: new Set(),
  counts: null,
  connected: false,
  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); },
  emit(kind, data) { for (const fn of [...this.listeners]) fn(kind, data); },
};

const feedState = document.getElementById("feed-state");
async function followFeed() {
  for (;;) {
    try {
      for await (const msg of events("/api/v1/events")) {
        if (msg.event === "counts") {
          feed.counts = msg.data;
          if (!feed.connected) {
            feed.connected = true;
            feedState.textContent = "live";
            feed.emit("connected", msg.data);
          }
        }
        feed.emit(msg.event, msg.data);
      }
    } catch (err) {
      if (err.type) sayError("live updates", err);
    }
    feed.connected = false;
    feedState.textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// -- workflows (their wiring draws the graphs) -----------------------------------------------

let workflows = null;
export async function servedWorkflows() {
  if (!workflows) {
    workflows = api("/api/v1/workflows").catch((err) => { workflows = null; throw err; });
  }
  return workflows;
}

// -- views -----------------------------------------------------------------------------------

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
let current = null;

export function openRun(runId) {
  location.hash = `#/runs/${encodeURIComponent(runId)}`;
}

function route() {
  current?.close();
  message.hidden = true;
  const match = location.hash.match(/^#\/runs\/(.+)$/);
  if (match) {
    const runId = decodeURIComponent(match[1]);
    fill(crumbs, el("a", { href: "#/" }, "runs"), " / ", runId);
    current = new RunView(view, runId);
  } else {
    fill(crumbs, "runs");
    current = new RunsView(view);
  }
  current.open();
}

window.addEventListener("hashchange", route);
route();
followFeed();
