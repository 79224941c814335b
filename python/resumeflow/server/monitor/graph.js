// The run's DAG: a layered (longest-path) layout, nodes as buttons over an SVG of edges.
// Each node button carries data-node-id and data-status, shows its status as text, and
// selects the node when activated.
import { el } from "./dom.js";

const W = 150, H = 48, GAP_X = 56, GAP_Y = 16, PAD = 8;

// nodes: [{id, inputs: {param: producer}}] in topological order -> {id: {layer, row}}.
export function layout(nodes) {
  const layer = new Map();
  for (const node of nodes) {
    const producers = Object.values(node.inputs ?? {}).filter((p) => layer.has(p));
    layer.set(node.id, producers.length ? 1 + Math.max(...producers.map((p) => layer.get(p))) : 0);
  }
  const layers = [];
  for (const node of nodes) (layers[layer.get(node.id)] ??= []).push(node);
  const row = new Map();
  layers.forEach((members) => {
    // Barycentre of the producers' rows keeps edges short and crossings few.
    const weight = (n) => {
      const rows = Object.values(n.inputs ?? {}).map((p) => row.get(p)).filter((r) => r !== undefined);
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 0;
    };
    members.map((n, i) => [n, weight(n), i]).sort((a, b) => a[1] - b[1] || a[2] - b[2])
      .forEach(([n], i) => row.set(n.id, i));
  });
  const at = {};
  for (const node of nodes) at[node.id] = { layer: layer.get(node.id), row: row.get(node.id) };
  return { at, layers: layers.length, rows: Math.max(1, ...layers.map((m) => m.length)) };
}

export class Graph {
  // nodes: [{id, inputs}], onSelect(nodeId)
  constructor(nodes, onSelect) {
    this.nodes = nodes;
    const { at, layers, rows } = layout(nodes);
    const width = PAD * 2 + layers * W + (layers - 1) * GAP_X;
    const height = PAD * 2 + rows * H + (rows - 1) * GAP_Y;
    const pos = (id) => ({ x: PAD + at[id].layer * (W + GAP_X), y: PAD + at[id].row * (H + GAP_Y) });
    // The HTML parser puts <svg> markup in the SVG namespace (node ids are plain names).
    const edges = [];
    for (const node of nodes) {
      for (const producer of new Set(Object.values(node.inputs ?? {}))) {
        if (!(producer in at)) continue;
        const a = pos(producer), b = pos(node.id);
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2, mid = (x1 + x2) / 2;
        edges.push(`<path class="edge" marker-end="url(#arrow)" d="M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}"/>`);
      }
    }
    const holder = document.createElement("div");
    holder.innerHTML = `<svg width="${width}" height="${height}" aria-hidden="true"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#9aa4b5"/></marker></defs>${edges.join("")}</svg>`;
    const svg = holder.firstElementChild;
    this.buttons = new Map();
    const buttons = nodes.map((node) => {
      const p = pos(node.id);
      const button = el("button", {
        type: "button", class: "node", "data-node-id": node.id, "data-status": "pending", "aria-pressed": "false",
        style: `left:${p.x}px;top:${p.y}px`,
        onclick: () => onSelect(node.id),
      }, el("span", { class: "id" }, node.id), el("span", { class: "st" }, "pending"));
      this.buttons.set(node.id, button);
      return button;
    });
    this.root = el("div", { class: "graph", role: "group", "aria-label": "graph of the run's nodes", style: `height:${height + 4}px` }, svg, ...buttons);
    this.root.style.minWidth = "100%";
    svg.style.minWidth = `${width}px`;
  }

  // states: {node: NodeState as the API shows it}
  update(states, selected) {
    for (const [id, button] of this.buttons) {
      const st = states[id] ?? {};
      const status = st.status ?? "pending";
      button.dataset.status = status;
      button.setAttribute("aria-pressed", String(id === selected));
      const attempt = st.attempt ? ` · #${st.attempt}` : "";
      button.lastChild.textContent = `${status}${attempt}`;
      button.title = st.error ? `${id}: ${status}\n${st.error}` : `${id}: ${status}`;
      button.setAttribute("aria-label", `node ${id}: ${status}${st.attempt ? `, attempt ${st.attempt}` : ""}${id === selected ? ", selected" : ""}`);
    }
  }
}
