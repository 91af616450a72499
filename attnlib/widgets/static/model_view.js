// Model view: every head of every layer as a small heatmap (rows = layers, columns = heads) for one sentence;
// click a head (or press Enter on it, arrow keys to move) to open it large below the grid, tokens on both axes.
// A toggle switches every map between the attention weights and weight × ‖transformed value‖ (each row divided
// by its sum). Every map is in the widget state, computed by attnlib in Python: this file only draws and reacts.

import { html, mount, share, svg, textColourOn, toggle, VIRIDIS, viridis } from "./_shared.js";

const NONE = -1;
const MODES = [
  ["weights", "weights", "mode-weights"],
  ["norm", "weight × ‖value‖", "mode-norm"],
];
const MODE_NOTES = {
  weights: "Attention weights α: each row (a query) sums to 1 over the keys.",
  norm: "Weight × ‖value‖: α_ij · ‖(x_j W_v^h + b_v^h) W_o^h‖, the size of what key j really adds to query i " +
    "through this head (Kobayashi et al. 2020), each row divided by its sum: the share of what the query receives.",
};

function formatValue(w) {
  return w === 0 ? "0" : w.toFixed(4);
}

// viridis at 256 levels as [r, g, b], for the thumbnails' pixels.
const LEVELS = Array.from({ length: 256 }, (_, k) => viridis(k / 255).match(/\d+/g).map(Number));

// One head as an n × n canvas of pixels (scaled up by CSS, kept sharp), colour 0 → 1.
function thumbnail(matrix) {
  const n = matrix.length;
  const canvas = html("canvas", "attnlib-mv-thumb");
  canvas.width = n;
  canvas.height = n;
  const context = canvas.getContext("2d");
  const image = context.createImageData(n, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const t = Math.min(1, Math.max(0, matrix[i][j]));
      const [r, g, b] = LEVELS[Math.round(t * 255)];
      const p = 4 * (i * n + j);
      image.data[p] = r;
      image.data[p + 1] = g;
      image.data[p + 2] = b;
      image.data[p + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// The opened head: queries down the side, keys along the top, every cell hoverable. Returns the <svg>.
function largeMap(matrix, labels) {
  const n = labels.length;
  const cell = Math.max(12, Math.min(30, Math.floor(520 / n)));
  const fontSize = Math.max(9, Math.min(13, cell * 0.6));
  const labelSize = Math.ceil(Math.max(...labels.map((t) => t.length)) * fontSize * 0.62) + 8;
  const left = Math.max(labelSize, 64);
  const top = Math.max(labelSize, 36);
  const width = left + n * cell + 2;
  const height = top + n * cell + 2;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "attnlib-heatmap",
    role: "img", "aria-label": "the opened head's map: rows are queries, columns are keys" });
  root.dataset.role = "head-map";
  svg("title", {}, root).textContent = "rows: queries (what is looking); columns: keys (what is looked at)";
  for (const [text, dy] of [["keys →", -22], ["queries ↓", -8]]) {
    svg("text", { x: left - 6, y: top + dy, "text-anchor": "end", "font-size": 11, class: "attnlib-axis-title" },
      root).textContent = text;
  }
  labels.forEach((label, i) => {
    svg("text", { x: left - 4, y: top + (i + 0.5) * cell, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": fontSize, class: "attnlib-label", "data-row": i }, root).textContent = label;
    svg("text", { x: 0, y: 0, "text-anchor": "start", "dominant-baseline": "middle", "font-size": fontSize,
      class: "attnlib-label", "data-column": i, transform: `translate(${left + (i + 0.5) * cell},${top - 4}) rotate(-90)` },
    root).textContent = label;
  });
  const cells = svg("g", { class: "attnlib-cells" }, root);
  const numbers = cell >= 28; // room to print each value inside its cell
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const t = matrix[i][j];
      svg("rect", { x: left + j * cell, y: top + i * cell, width: cell, height: cell, fill: viridis(t),
        "data-i": i, "data-j": j }, cells);
      if (numbers) {
        svg("text", { x: left + (j + 0.5) * cell, y: top + (i + 0.5) * cell, "text-anchor": "middle",
          "dominant-baseline": "middle", "font-size": 9, fill: textColourOn(t), class: "attnlib-cell-value" },
        cells).textContent = t.toFixed(2);
      }
    }
  }
  svg("rect", { x: left, y: top, width: n * cell, height: n * cell, class: "attnlib-frame" }, root);
  const highlight = svg("rect", { x: left, y: top, width: n * cell, height: cell, class: "attnlib-row-highlight",
    visibility: "hidden" }, root);
  root.showRow = (i) => {
    highlight.setAttribute("visibility", i === null ? "hidden" : "visible");
    if (i !== null) highlight.setAttribute("y", top + i * cell);
  };
  root.dataset.top = top;
  root.dataset.height = n * cell;
  return root;
}

// A vertical colour scale from 0 (bottom) to 1 (top), its bar starting `top` pixels down.
function colorbar(height, top) {
  const root = svg("svg", { width: 64, height: top + height + 8, class: "attnlib-colorbar", role: "img",
    "aria-label": "colour scale from 0 to 1" });
  const gradient = svg("linearGradient", { id: `attnlib-mv-viridis-${Math.random().toString(36).slice(2)}`,
    x1: 0, y1: 1, x2: 0, y2: 0 }, svg("defs", {}, root));
  VIRIDIS.forEach((colour, k) => {
    svg("stop", { offset: k / (VIRIDIS.length - 1), "stop-color": colour }, gradient);
  });
  svg("rect", { x: 4, y: top, width: 14, height, fill: `url(#${gradient.id})`, class: "attnlib-frame" }, root);
  for (const fraction of [0, 0.5, 1]) {
    const y = top + height * (1 - fraction);
    svg("line", { x1: 18, x2: 22, y1: y, y2: y, class: "attnlib-tick" }, root);
    svg("text", { x: 24, y, "dominant-baseline": "middle", "font-size": 11, class: "attnlib-label" }, root)
      .textContent = String(fraction);
  }
  return root;
}

function render({ model, el }) {
  let focusAt = null; // [layer, head] of the grid cell to keep the keyboard focus on after a redraw, or null

  function open(layer, head, focus = [layer, head]) {
    focusAt = focus;
    model.set("layer", layer);
    share(model, "head", head);
  }

  function draw(root) {
    const sentences = model.get("sentences");
    const s = Math.min(model.get("sentence"), sentences.length - 1);
    const labels = model.get("tokens")[s];
    const mode = model.get("mode") === "norm" ? "norm" : "weights";
    const maps = model.get(mode === "norm" ? "norm_weights" : "weights")[s]; // (layers, heads, n, n)
    const other = model.get(mode === "norm" ? "weights" : "norm_weights")[s];
    const nLayers = maps.length;
    const nHeads = maps[0].length;
    const layer = model.get("layer");
    const head = model.get("head");
    const opened = layer >= 0 && layer < nLayers && head >= 0 && head < nHeads;

    // Controls: the sentence, and what the maps show.
    const controls = html("div", "attnlib-controls", root);
    if (sentences.length > 1) {
      const label = html("label", "", controls, "sentence ");
      const select = html("select", "", label);
      select.dataset.role = "sentence";
      sentences.forEach((text, k) => {
        const option = html("option", "", select, text.length > 70 ? `${text.slice(0, 69)}…` : text);
        option.value = k;
      });
      select.value = s;
      select.addEventListener("change", () => { focusAt = null; share(model, "sentence", Number(select.value)); });
    }
    toggle(controls, "show", MODES, mode, (value) => { focusAt = null; share(model, "mode", value); });
    html("div", "attnlib-note attnlib-mv-note", root, MODE_NOTES[mode]);

    // The grid: one small map per head, a row per layer.
    const grid = html("div", "attnlib-mv-grid", root);
    grid.dataset.role = "head-grid";
    grid.style.gridTemplateColumns = `auto repeat(${nHeads}, minmax(18px, 52px))`;
    grid.setAttribute("role", "group");
    grid.setAttribute("aria-label", `${nLayers} layers × ${nHeads} heads: pick a head to open it`);
    html("div", "attnlib-mv-corner", grid, "layer ↓ head →");
    for (let h = 0; h < nHeads; h++) html("div", "attnlib-mv-head-label", grid, String(h));
    for (let l = 0; l < nLayers; l++) {
      html("div", "attnlib-mv-layer-label", grid, `layer ${l}`);
      for (let h = 0; h < nHeads; h++) {
        const cell = html("button", "attnlib-mv-cell", grid);
        cell.type = "button";
        cell.dataset.role = "head-cell";
        cell.dataset.layer = l;
        cell.dataset.head = h;
        const picked = opened && l === layer && h === head;
        cell.setAttribute("aria-pressed", String(picked));
        cell.setAttribute("aria-label", `layer ${l}, head ${h}`);
        cell.title = `layer ${l}, head ${h}: click to open`;
        const home = focusAt ?? (opened ? [layer, head] : [0, 0]);
        cell.tabIndex = l === home[0] && h === home[1] ? 0 : -1; // one tab stop; the arrow keys move within
        cell.appendChild(thumbnail(maps[l][h]));
        cell.addEventListener("click", () => open(l, h));
      }
    }
    grid.addEventListener("keydown", (event) => {
      const target = event.target;
      if (!target.dataset || target.dataset.role !== "head-cell") return;
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      if (event.key === "Escape" && opened) {
        event.preventDefault();
        open(NONE, NONE, [Number(target.dataset.layer), Number(target.dataset.head)]);
        return;
      }
      if (!(event.key in moves)) return;
      event.preventDefault();
      const [dl, dh] = moves[event.key];
      const l = Math.max(0, Math.min(nLayers - 1, Number(target.dataset.layer) + dl));
      const h = Math.max(0, Math.min(nHeads - 1, Number(target.dataset.head) + dh));
      open(l, h);
    });

    const tooltip = html("div", "attnlib-tooltip", root);
    tooltip.hidden = true;

    if (!opened) {
      html("div", "attnlib-readout attnlib-mv-hint", root,
        "Click a head (or focus the grid and press Enter; arrow keys move) to open it with its tokens.");
    } else {
      const panel = html("div", "attnlib-mv-opened", root);
      panel.dataset.role = "opened";
      const heading = html("div", "attnlib-mv-heading", panel);
      html("span", "attnlib-mv-heading-text", heading,
        `layer ${layer}, head ${head} · ${MODES.find(([value]) => value === mode)[1]}`).dataset.role = "opened-title";
      const close = html("button", "attnlib-mv-close", heading, "close ✕");
      close.type = "button";
      close.dataset.role = "close";
      close.addEventListener("click", () => { focusAt = null; model.set("layer", NONE); share(model, "head", NONE); });
      const body = html("div", "attnlib-body", panel);
      const matrix = maps[layer][head];
      const otherMatrix = other[layer][head];
      const picture = largeMap(matrix, labels);
      body.appendChild(picture);
      body.appendChild(colorbar(Math.max(60, Number(picture.dataset.height)), Number(picture.dataset.top)));
      const readout = html("div", "attnlib-readout", panel);
      const idle = "Hover a cell to read its value; a row shows where one query looks.";
      readout.textContent = idle;
      const [thisName, otherName] = mode === "norm" ? ["weight × ‖value‖", "weight"] : ["weight", "weight × ‖value‖"];

      function showRow(i) {
        picture.showRow(i);
        readout.replaceChildren();
        if (i === null) {
          readout.textContent = idle;
          return;
        }
        html("span", "attnlib-readout-lead", readout, `“${labels[i]}” (query ${i}), strongest keys: `);
        const order = matrix[i].map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, 5);
        for (const [w, j] of order) {
          const chip = html("span", "attnlib-chip", readout);
          chip.style.background = viridis(w);
          chip.style.color = textColourOn(w);
          html("span", "attnlib-chip-token", chip, labels[j]);
          html("span", "attnlib-chip-weight", chip, formatValue(w));
        }
      }

      picture.addEventListener("mousemove", (event) => {
        const target = event.target;
        if (!target.dataset || target.dataset.i === undefined) return;
        const i = Number(target.dataset.i);
        const j = Number(target.dataset.j);
        showRow(i);
        tooltip.textContent = `“${labels[i]}” → “${labels[j]}”: ${thisName} ${formatValue(matrix[i][j])} ` +
          `(${otherName} ${formatValue(otherMatrix[i][j])})`;
        tooltip.hidden = false;
        const box = root.getBoundingClientRect();
        tooltip.style.left = `${event.clientX - box.left + 12}px`;
        tooltip.style.top = `${event.clientY - box.top + 12}px`;
      });
      picture.addEventListener("mouseleave", () => {
        tooltip.hidden = true;
        showRow(null);
      });
    }

    if (focusAt) {
      const target = grid.querySelector(`[data-layer="${focusAt[0]}"][data-head="${focusAt[1]}"]`);
      if (target) target.focus({ preventScroll: true });
    }
  }

  return mount({ model, el }, "attnlib-modelview", ["sentences", "tokens", "weights", "norm_weights", "sentence",
    "mode", "layer", "head"], draw);
}

export default { render };
