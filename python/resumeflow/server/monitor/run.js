// One run: its graph (nodes coloured by status, status as text), the selected node's
// attempts, error, timings, OOM shrink overrides, value and live items; a Gantt chart of the
// attempts and the live event log (both from GET /api/v1/runs/ID/events, followed across
// resumes); checkpoints with "resume from here"; the values; and the actions.
import { api, events } from "./api.js";
import { badge, debounce, duration, el, fill, json, time } from "./dom.js";
import { confirmAction } from "./dialogs.js";
import { feed, say, sayError, servedWorkflows } from "./main.js";
import { Graph } from "./graph.js";
import { Attempts, gantt } from "./timeline.js";

const ACTIVE = new Set(["queued", "pending", "running"]);
const LOG_SHOWN = 500;
const ITEMS_SHOWN = 200;

export class RunView {
  constructor(root, runId) {
    this.root = root;
    this.runId = runId;
    this.path = `/api/v1/runs/${encodeURIComponent(runId)}`;
    this.abort = new AbortController();
    this.run = null;
    this.selected = null;
    this.lastSeq = 0;
    this.attempts = new Attempts();
    this.items = new Map(); // node -> live items (chunk messages)
    this.values = {};
    this.wake = null; // resolves when a stopped run may have more events
    this.refreshSoon = debounce(() => this.refresh(), 150);
    this.extrasSoon = debounce(() => this.refreshExtras(), 300);
    this.ganttSoon = debounce(() => this.renderGantt(), 200);
  }

  async open() {
    this.header = el("div", { class: "runhead" });
    this.actions = el("div", { class: "actions", role: "toolbar", "aria-label": "actions" },
      this.button("resume", "Resume", () => this.act("resume")),
      (this.rerunButton = this.button("rerun", "Rerun selected node", () => this.act("rerun"))),
      this.button("interrupt", "Interrupt", () => this.act("interrupt")),
      this.button("cancel", "Cancel run", () => this.act("cancel")));
    this.graphBox = el("div");
    this.detail = el("div");
    this.nodeTable = el("tbody");
    this.ganttBox = el("div");
    this.log = el("ol", { class: "log", "aria-label": "event log", "aria-live": "off" });
    this.checkpoints = el("tbody");
    this.valuesBox = el("div");
    fill(this.root, 
      el("section", { class: "panel" }, this.header, this.actions),
      el("div", { class: "layout" },
        el("section", { class: "panel" }, el("h2", {}, "Graph"), this.graphBox),
        el("section", { class: "panel", "aria-live": "polite" }, el("h2", {}, "Selected node"), this.detail)),
      el("section", { class: "panel" }, el("h2", {}, "Nodes"),
        el("table", {}, el("thead", {}, el("tr", {}, ["node", "status", "attempts", "started", "finished", "duration", "overrides", "error"].map((h) => el("th", { scope: "col" }, h)))), this.nodeTable)),
      el("section", { class: "panel" }, el("h2", {}, "Timeline"), this.ganttBox),
      el("section", { class: "panel" }, el("h2", {}, "Events"), this.log),
      el("section", { class: "panel" }, el("h2", {}, "Checkpoints"),
        el("table", {}, el("thead", {}, el("tr", {}, ["checkpoint", "created", "kind", "completed nodes", ""].map((h) => el("th", { scope: "col" }, h)))), this.checkpoints)),
      el("section", { class: "panel" }, el("h2", {}, "Values"), this.valuesBox));
    this.unsubscribe = feed.on((kind, data) => {
      if (kind === "run" && data.run_id === this.runId) {
        this.refreshSoon();
        this.wakeUp(); // it may have more events (a resume, a rerun)
      } else if (kind === "connected") {
        this.refreshSoon();
        this.wakeUp();
      }
    });
    this.timer = setInterval(() => { if (this.run && ACTIVE.has(this.run.status)) this.renderGantt(); }, 1000);
    const run = await this.refresh();
    if (!run) return;
    let wf = null;
    try {
      wf = (await servedWorkflows()).find((w) => w.name === run.workflow);
    } catch (err) {
      sayError("workflows", err);
    }
    const nodes = wf ? wf.nodes : Object.keys(run.nodes).map((id) => ({ id, inputs: {} }));
    this.order = nodes.map((n) => n.id);
    this.graph = new Graph(nodes, (id) => this.select(id));
    fill(this.graphBox, this.graph.root, wf ? "" : el("p", { class: "muted" }, "This server does not serve the workflow: edges unknown."));
    this.render();
    this.refreshExtras();
    this.follow();
  }

  close() {
    this.abort.abort();
    this.unsubscribe?.();
    clearInterval(this.timer);
    this.wakeUp();
  }

  button(action, label, onclick) {
    return el("button", { type: "button", "data-action": action, onclick }, label);
  }

  // -- reading --------------------------------------------------------------------------------

  async refresh() {
    try {
      this.run = await api(this.path, { signal: this.abort.signal });
    } catch (err) {
      if (err.name !== "AbortError") sayError(`run ${this.runId}`, err);
      return null;
    }
    if (this.graph) this.render();
    return this.run;
  }

  async refreshExtras() {
    const signal = this.abort.signal;
    const [history, results] = await Promise.allSettled([
      api(`${this.path}/history`, { signal }), api(`${this.path}/results`, { signal })]);
    if (signal.aborted) return;
    if (history.status === "fulfilled") this.renderCheckpoints(history.value);
    if (results.status === "fulfilled") {
      this.values = results.value.values ?? {};
      this.renderValues();
      this.renderDetail();
    }
  }

  // The run's log from the start, then live; after the run stops, again once it runs again
  // (a resume continues the same log after the last seq seen).
  async follow() {
    const signal = this.abort.signal;
    while (!signal.aborted) {
      let received = 0;
      try {
        for await (const msg of events(`${this.path}/events?after=${this.lastSeq}`, { signal })) {
          if (msg.event === "chunk") { this.addItem(msg.data); continue; }
          if (msg.id) this.lastSeq = Math.max(this.lastSeq, Number(msg.id));
          received += 1;
          this.addEvent(msg.event, msg.data);
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err.type) sayError("event stream", err);
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (received) continue; // ended at a terminal event: read on, more may follow it
      const run = await this.refresh();
      if (signal.aborted) return;
      if (run && ACTIVE.has(run.status)) continue;
      await new Promise((resolve) => { this.wake = resolve; });
    }
  }

  wakeUp() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  addEvent(type, data) {
    this.attempts.add(type, data);
    const line = el("li", { "data-event": type },
      el("span", { class: "muted" }, `${time(data.ts)} `), el("span", { class: "type" }, type),
      data.node ? ` ${data.node} #${data.attempt}` : "",
      data.delay_s !== undefined ? ` retry in ${duration(data.delay_s)}` : "",
      data.error ? el("span", { class: "err" }, ` ${data.error}`) : "");
    this.log.append(line);
    while (this.log.childElementCount > LOG_SHOWN) this.log.firstElementChild.remove();
    this.log.scrollTop = this.log.scrollHeight;
    this.ganttSoon();
    this.refreshSoon();
    if (type === "step_complete" || type.startsWith("workflow_")) this.extrasSoon();
  }

  addItem(data) {
    const list = this.items.get(data.node) ?? [];
    list.push(data.item);
    if (list.length > ITEMS_SHOWN) list.shift();
    this.items.set(data.node, list);
    if (this.selected === data.node) this.renderDetail();
  }

  // -- actions --------------------------------------------------------------------------------

  async act(kind, checkpointId) {
    const run = this.runId;
    let question, path = "resume", body = {};
    if (kind === "resume" && checkpointId !== undefined) {
      question = `Resume run ${run} from checkpoint ${checkpointId}?`;
      body = { checkpoint_id: checkpointId };
    } else if (kind === "resume") {
      question = `Resume run ${run}?`;
    } else if (kind === "rerun") {
      if (!this.selected) {
        say("Select a node in the graph first: rerun executes it and its dependants again.", "error");
        return;
      }
      question = `Rerun node ${this.selected} and its dependants in run ${run}?`;
      body = { rerun: [this.selected] };
    } else {
      question = kind === "cancel" ? `Cancel run ${run}? In-flight nodes are abandoned.` : `Interrupt run ${run}? In-flight nodes finish, then it pauses.`;
      path = kind;
      body = undefined;
    }
    if (!(await confirmAction(question))) return;
    try {
      this.run = await api(`${this.path}/${path}`, { method: "POST", body, signal: this.abort.signal });
      say(`${question.replace(/\?.*$/, "")}: requested (the run is ${this.run.status}).`, "info");
      this.render();
      this.wakeUp();
      this.refreshSoon();
      this.extrasSoon();
    } catch (err) {
      if (err.name !== "AbortError") sayError(`${kind} refused`, err);
    }
  }

  select(nodeId) {
    this.selected = nodeId;
    this.render();
  }

  // -- rendering ------------------------------------------------------------------------------

  render() {
    const run = this.run;
    if (!run) return;
    const done = Object.values(run.nodes).filter((n) => n.status === "completed").length;
    fill(this.header, 
      el("h1", {}, run.run_id),
      el("span", { "data-run-status": run.status }, "status ", badge(run.status)),
      el("span", {}, `workflow ${run.workflow}`),
      el("span", {}, `${done}/${Object.keys(run.nodes).length} nodes completed`),
      el("span", { class: "muted" }, `created ${time(run.created_at)} · updated ${time(run.updated_at)}`),
      run.checkpoint_id ? el("span", { class: "muted" }, `checkpoint ${run.checkpoint_id}`) : null,
      run.error ? el("div", { class: "err", style: "flex-basis:100%" }, `error: ${run.error}`) : null);
    this.rerunButton.textContent = this.selected ? `Rerun ${this.selected}` : "Rerun selected node";
    this.graph?.update(run.nodes, this.selected);
    fill(this.nodeTable, ...(this.order ?? Object.keys(run.nodes)).map((id) => {
      const n = run.nodes[id] ?? {};
      const row = el("tr", { "data-row-node": id, "data-row-status": n.status ?? "pending" },
        el("td", { class: "mono" }, id), el("td", {}, badge(n.status ?? "pending")), el("td", {}, String(n.attempt ?? 0)),
        el("td", {}, time(n.started_at)), el("td", {}, time(n.finished_at)),
        el("td", {}, n.started_at && n.finished_at ? duration(n.finished_at - n.started_at) : "—"),
        el("td", { class: "mono" }, overrides(n) ?? ""), el("td", { class: "err" }, n.error ?? ""));
      return row;
    }));
    this.renderDetail();
  }

  renderDetail() {
    const id = this.selected;
    if (!id || !this.run) {
      fill(this.detail, el("p", { class: "muted" }, "Click a node in the graph to select it (rerun acts on it)."));
      return;
    }
    const n = this.run.nodes[id] ?? {};
    const tries = this.attempts.list().filter((a) => a.node === id);
    const items = this.items.get(id);
    fill(this.detail, 
      el("dl", { class: "kv", "data-detail-node": id },
        el("dt", {}, "node"), el("dd", { class: "mono" }, id),
        el("dt", {}, "status"), el("dd", {}, badge(n.status ?? "pending")),
        el("dt", {}, "attempts"), el("dd", {}, String(n.attempt ?? 0)),
        el("dt", {}, "retryable"), el("dd", {}, n.retryable === null || n.retryable === undefined ? "—" : String(n.retryable)),
        el("dt", {}, "started"), el("dd", {}, time(n.started_at)),
        el("dt", {}, "finished"), el("dd", {}, time(n.finished_at)),
        el("dt", {}, "duration"), el("dd", {}, n.started_at && n.finished_at ? duration(n.finished_at - n.started_at) : "—"),
        overrides(n) ? [el("dt", {}, "OOM overrides"), el("dd", { class: "mono" }, overrides(n))] : null,
        n.peak_memory ? [el("dt", {}, "peak memory"), el("dd", { class: "mono" }, json(n.peak_memory, 400))] : null,
        n.error ? [el("dt", {}, "error"), el("dd", { class: "err" }, n.error)] : null),
      tries.length ? el("ul", {}, tries.map((a) => el("li", {}, `attempt ${a.attempt}: ${a.outcome}, ${a.end ? duration(a.end - a.start) : "running"}${a.error ? ` — ${a.error}` : ""}`))) : null,
      id in this.values ? [el("h3", {}, "value"), el("pre", {}, json(this.values[id]))] : null,
      items?.length ? [el("h3", {}, `live items (${items.length})`), el("pre", { class: "items" }, items.map((i) => json(i, 300)).join("\n"))] : null);
  }

  renderGantt() {
    fill(this.ganttBox, gantt(this.attempts, this.order ?? [], Date.now() / 1000));
  }

  renderCheckpoints(history) {
    fill(this.checkpoints, ...history.map((cp) => el("tr", { "data-checkpoint-id": cp.checkpoint_id },
      el("td", { class: "mono" }, String(cp.checkpoint_id)), el("td", {}, time(cp.created_at)), el("td", {}, cp.kind ?? ""),
      el("td", { class: "mono" }, cp.completed.join(", ") || "—"),
      el("td", {}, el("button", {
        type: "button", "data-action": "resume", "data-checkpoint-id": cp.checkpoint_id,
        "aria-label": `resume from checkpoint ${cp.checkpoint_id}`, onclick: () => this.act("resume", cp.checkpoint_id),
      }, "Resume from here")))));
    if (!history.length) this.checkpoints.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No checkpoint yet.")));
  }

  renderValues() {
    const names = Object.keys(this.values);
    fill(this.valuesBox, names.length
      ? el("dl", { class: "kv" }, names.map((k) => [el("dt", { class: "mono" }, k), el("dd", {}, el("pre", {}, json(this.values[k])))]))
      : el("p", { class: "muted" }, "No completed node yet."));
  }
}

function overrides(node) {
  const o = node.inputs_override;
  return o && Object.keys(o).length ? Object.entries(o).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ") : null;
}
