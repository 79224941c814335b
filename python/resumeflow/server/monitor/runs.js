// The runs list: newest first, filtered by status and workflow, counts per status, pages of
// PAGE runs (GET /api/v1/runs?limit&offset), kept live by the store-wide feed: rows change in
// place, new runs appear on the first page, runs that leave the filter leave the page.
import { api } from "./api.js";
import { activate, badge, el, fill, time } from "./dom.js";
import { feed, openRun, sayError, servedWorkflows } from "./main.js";

const PAGE = 50;
const STATUSES = ["queued", "pending", "running", "paused", "completed", "failed", "cancelled"];

export class RunsView {
  constructor(root) {
    this.root = root;
    this.filter = { status: sessionStorage.getItem("rf.filter.status") ?? "", workflow: sessionStorage.getItem("rf.filter.workflow") ?? "" };
    this.offset = 0;
    this.rows = new Map(); // run_id -> summary shown
    this.loading = null;
  }

  open() {
    this.statusSelect = el("select", { id: "filter-status", "data-filter": "status" },
      el("option", { value: "" }, "any status"), STATUSES.map((s) => el("option", { value: s }, s)));
    this.workflowSelect = el("select", { id: "filter-workflow", "data-filter": "workflow" }, el("option", { value: "" }, "any workflow"));
    this.statusSelect.value = this.filter.status;
    this.statusSelect.addEventListener("change", () => this.setFilter({ status: this.statusSelect.value }));
    this.workflowSelect.addEventListener("change", () => this.setFilter({ workflow: this.workflowSelect.value }));
    this.countsBox = el("div", { class: "counts", role: "group", "aria-label": "runs per status" });
    this.tbody = el("tbody");
    this.pageInfo = el("span", { class: "muted", role: "status" });
    this.newer = el("button", { type: "button", onclick: () => this.page(-1) }, "← newer");
    this.older = el("button", { type: "button", onclick: () => this.page(1) }, "older →");
    fill(this.root, 
      el("section", { class: "panel" },
        el("div", { class: "toolbar" },
          el("label", { for: "filter-status" }, "Status "), this.statusSelect,
          el("label", { for: "filter-workflow" }, "Workflow "), this.workflowSelect),
        this.countsBox,
        el("table", { "aria-label": "runs, newest first" },
          el("thead", {}, el("tr", {}, ["run", "workflow", "status", "progress", "created", "updated", "error"].map((h) => el("th", { scope: "col" }, h)))),
          this.tbody),
        el("div", { class: "pager" }, this.newer, this.older, this.pageInfo)));
    servedWorkflows().then((wfs) => {
      for (const wf of wfs) this.workflowSelect.append(el("option", { value: wf.name }, wf.name));
      if (this.filter.workflow && !wfs.some((w) => w.name === this.filter.workflow)) {
        this.workflowSelect.append(el("option", { value: this.filter.workflow }, this.filter.workflow));
      }
      this.workflowSelect.value = this.filter.workflow;
    }).catch((err) => sayError("workflows", err));
    this.unsubscribe = feed.on((kind, data) => this.onFeed(kind, data));
    // The feed first, then the list: a change between the two is applied on top of the list.
    if (feed.connected) this.load();
    this.renderCounts();
  }

  close() {
    this.unsubscribe?.();
  }

  setFilter(change) {
    Object.assign(this.filter, change);
    sessionStorage.setItem("rf.filter.status", this.filter.status);
    sessionStorage.setItem("rf.filter.workflow", this.filter.workflow);
    this.offset = 0;
    this.statusSelect.value = this.filter.status;
    this.renderCounts();
    this.load();
  }

  page(direction) {
    this.offset = Math.max(0, this.offset + direction * PAGE);
    this.load();
  }

  async load() {
    const params = new URLSearchParams({ limit: PAGE, offset: this.offset });
    if (this.filter.status) params.set("status", this.filter.status);
    if (this.filter.workflow) params.set("workflow", this.filter.workflow);
    const loading = (this.loading = api(`/api/v1/runs?${params}`));
    let doc;
    try {
      doc = await loading;
    } catch (err) {
      sayError("runs", err);
      return;
    }
    if (loading !== this.loading) return; // a later load replaced this one
    this.rows = new Map(doc.runs.map((run) => [run.run_id, summarize(run)]));
    this.render();
  }

  matches(run) {
    return (!this.filter.status || run.status === this.filter.status) && (!this.filter.workflow || run.workflow === this.filter.workflow);
  }

  onFeed(kind, data) {
    if (kind === "connected") { this.load(); return; }
    if (kind === "counts") { this.renderCounts(); return; }
    if (kind !== "run") return;
    const shown = this.rows.get(data.run_id);
    if (shown) {
      if ((data.updated_at ?? 0) < (shown.updated_at ?? 0)) return;
      if (this.matches(data)) this.rows.set(data.run_id, data);
      else this.rows.delete(data.run_id);
      this.render();
      return;
    }
    if (!this.matches(data) || !this.fits(data)) return;
    this.rows.set(data.run_id, data);
    this.render();
  }

  // Whether a run not shown belongs on this page (newest first, by creation time).
  fits(run) {
    const sorted = this.sorted();
    const last = sorted[sorted.length - 1];
    if (this.offset === 0) return sorted.length < PAGE || run.created_at >= last.created_at;
    return sorted.length > 0 && run.created_at <= sorted[0].created_at && run.created_at >= last.created_at;
  }

  sorted() {
    return [...this.rows.values()].sort((a, b) => (b.created_at - a.created_at) || (a.run_id < b.run_id ? 1 : -1));
  }

  renderCounts() {
    const doc = feed.counts;
    if (!doc) return;
    const per = this.filter.workflow ? (doc.by_workflow[this.filter.workflow] ?? {}) : doc.counts;
    const total = STATUSES.reduce((n, s) => n + (per[s] ?? 0), 0);
    const chip = (status, label, n) => el("button", {
      type: "button", "data-count-status": status, "aria-pressed": String(this.filter.status === status),
      onclick: () => this.setFilter({ status }),
    }, status ? badge(status) : null, ` ${label} ${n}`);
    fill(this.countsBox, chip("", "all", total), STATUSES.map((s) => chip(s, "", per[s] ?? 0)));
    this.total = this.filter.status ? (per[this.filter.status] ?? 0) : total;
    this.renderPager();
  }

  renderPager() {
    const shown = this.rows.size;
    const total = this.total ?? shown;
    this.pageInfo.textContent = shown ? `${this.offset + 1}–${this.offset + shown} of ${total}` : `none of ${total}`;
    this.newer.disabled = this.offset === 0;
    this.older.disabled = this.offset + PAGE >= total;
  }

  render() {
    const runs = this.sorted().slice(0, PAGE);
    this.rows = new Map(runs.map((r) => [r.run_id, r]));
    // Rows are kept per run and updated in place (focus and references survive updates).
    this.elements ??= new Map();
    for (const [id, row] of this.elements) if (!this.rows.has(id)) { row.remove(); this.elements.delete(id); }
    const rows = runs.map((run) => {
      let row = this.elements.get(run.run_id);
      if (!row) {
        row = el("tr", { "data-run-id": run.run_id, tabindex: 0 });
        activate(row, () => openRun(run.run_id));
        this.elements.set(run.run_id, row);
      }
      row.dataset.status = run.status;
      row.setAttribute("aria-label", `run ${run.run_id}, ${run.status}`);
      const cells = [el("td", { class: "mono" }, run.run_id), el("td", {}, run.workflow), el("td", {}, badge(run.status)),
        el("td", {}, `${run.completed}/${run.total}`), el("td", {}, time(run.created_at)), el("td", {}, time(run.updated_at)),
        el("td", { class: "err" }, run.error ? String(run.error).slice(0, 120) : "")];
      const text = cells.map((c) => c.textContent).join("\u0000");
      if (row.shownText !== text) { row.replaceChildren(...cells); row.shownText = text; }
      return row;
    });
    this.empty ??= el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No runs match."));
    const wanted = rows.length ? rows : [this.empty];
    if (wanted.some((row, i) => this.tbody.children[i] !== row) || this.tbody.children.length !== wanted.length) {
      fill(this.tbody, ...wanted); // moves kept rows, focus included
    }
    this.renderPager();
  }
}

// A run from GET /api/v1/runs as the feed summarizes it.
export function summarize(run) {
  const nodes = Object.values(run.nodes ?? {});
  return {
    run_id: run.run_id, workflow: run.workflow, status: run.status,
    completed: nodes.filter((n) => n.status === "completed").length, total: nodes.length,
    created_at: run.created_at, updated_at: run.updated_at, error: run.error,
  };
}
