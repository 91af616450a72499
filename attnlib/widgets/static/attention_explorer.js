// Attention explorer: attention weights as a heatmap, queries down the side and keys along the top.
// Every map the reader can pick (layer, head, causal or not) is already in the widget state, computed by
// attnlib in Python, so this file only draws and reacts: it works the same with or without a kernel.

const SVG_NS = "http://www.w3.org/2000/svg";
// viridis sampled at 17 evenly spaced points: perceptually uniform and readable in grey and by most
// colour-blind readers; values in between are interpolated linearly.
const VIRIDIS = [
  "#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
  "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725",
];
const ALL_HEADS = -1;

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function viridis(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const low = Math.floor(x);
  const high = Math.min(low + 1, VIRIDIS.length - 1);
  const a = hexToRgb(VIRIDIS[low]);
  const b = hexToRgb(VIRIDIS[high]);
  const f = x - low;
  return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * f)).join(",")})`;
}

// Dark text on the bright (yellow-green) end of viridis, light text on the dark end.
function textColourOn(t) {
  return t > 0.55 ? "#111" : "#fff";
}

function svg(tag, attributes = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function html(tag, className = "", parent = null, text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function formatWeight(w) {
  return w === 0 ? "0" : w.toFixed(4);
}

// Tell the kernel about a choice made in the page. A static page has no kernel (the model has no comm and
// save_changes throws "Syncing error"); the choice then simply stays in this page.
function share(model, name, value) {
  model.set(name, value);
  try {
    model.save_changes();
  } catch (error) {
    if (!String(error).includes("no comm")) throw error;
  }
}

// One heatmap: rows are queries, columns are keys. Returns the <svg>.
function heatmap(matrix, tokens, { cell, labels, vmax }) {
  const n = tokens.length;
  const fontSize = Math.max(8, Math.min(13, cell * 0.8));
  const longest = Math.max(...tokens.map((t) => t.length));
  const margin = labels ? Math.ceil(longest * fontSize * 0.62) + 8 : 2;
  const size = margin + n * cell;
  const root = svg("svg", {
    width: size + 2, height: size + 2, viewBox: `0 0 ${size + 2} ${size + 2}`,
    class: "attnlib-heatmap", role: "img", "aria-label": "attention weights heatmap",
  });
  if (labels) {
    // Which axis is which: each row is a query (a token looking), each column a key (a token looked at).
    svg("title", {}, root).textContent = "rows: queries (the token looking); columns: keys (the token looked at)";
    if (margin >= 56) {
      for (const [text, dy] of [["keys →", -20], ["queries ↓", -6]]) {
        svg("text", { x: margin - 6, y: margin + dy, "text-anchor": "end", "font-size": 11,
          class: "attnlib-axis-title" }, root).textContent = text;
      }
    }
    for (let i = 0; i < n; i++) {
      const y = margin + (i + 0.5) * cell;
      const row = svg("text", { x: margin - 4, y, "text-anchor": "end", "dominant-baseline": "middle",
        "font-size": fontSize, class: "attnlib-label", "data-row": i }, root);
      row.textContent = tokens[i];
      const x = margin + (i + 0.5) * cell;
      const column = svg("text", { x: 0, y: 0, "text-anchor": "start", "dominant-baseline": "middle",
        "font-size": fontSize, class: "attnlib-label", "data-column": i,
        transform: `translate(${x},${margin - 4}) rotate(-90)` }, root);
      column.textContent = tokens[i];
    }
  }
  const cells = svg("g", { class: "attnlib-cells" }, root);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      svg("rect", { x: margin + j * cell, y: margin + i * cell, width: cell, height: cell,
        fill: viridis(matrix[i][j] / vmax), "data-i": i, "data-j": j }, cells);
    }
  }
  svg("rect", { x: margin, y: margin, width: n * cell, height: n * cell, class: "attnlib-frame" }, root);
  const highlight = svg("rect", { x: margin, y: margin, width: n * cell, height: cell,
    class: "attnlib-row-highlight", visibility: "hidden" }, root);
  root.dataset.margin = margin;
  root.dataset.side = n * cell;
  root.showRow = (i) => {
    highlight.setAttribute("visibility", i === null ? "hidden" : "visible");
    if (i !== null) highlight.setAttribute("y", margin + i * cell);
  };
  return root;
}

// A vertical colour scale from 0 (bottom) to vmax (top), its bar starting `top` pixels down.
function colorbar(vmax, height, top) {
  const width = 72;
  const root = svg("svg", { width, height: top + height + 8, class: "attnlib-colorbar", role: "img",
    "aria-label": `colour scale from 0 to ${formatWeight(vmax)}` });
  const gradient = svg("linearGradient", { id: `attnlib-viridis-${Math.random().toString(36).slice(2)}`,
    x1: 0, y1: 1, x2: 0, y2: 0 }, svg("defs", {}, root));
  VIRIDIS.forEach((colour, k) => {
    svg("stop", { offset: k / (VIRIDIS.length - 1), "stop-color": colour }, gradient);
  });
  svg("rect", { x: 4, y: top, width: 14, height, fill: `url(#${gradient.id})`, class: "attnlib-frame" }, root);
  for (const fraction of [0, 0.5, 1]) {
    const y = top + height * (1 - fraction);
    svg("line", { x1: 18, x2: 22, y1: y, y2: y, class: "attnlib-tick" }, root);
    const label = svg("text", { x: 24, y, "dominant-baseline": "middle", "font-size": 11,
      class: "attnlib-label" }, root);
    label.textContent = formatWeight(vmax * fraction);
  }
  return root;
}

function render({ model, el }) {
  const root = html("div", "attnlib-figure attnlib-explorer", el);

  function draw() {
    root.replaceChildren();
    const error = model.get("error");
    if (error) {
      html("div", "attnlib-error", root, error).setAttribute("role", "alert");
      return;
    }
    const tokens = model.get("tokens");
    const causal = model.get("causal");
    const bidirectionalMaps = model.get("weights");
    const causalMaps = model.get("causal_weights");
    const maps = causal ? causalMaps : bidirectionalMaps;
    const layer = model.get("layer");
    const head = model.get("head");
    const heads = maps[layer];
    const n = tokens.length;

    const title = model.get("title");
    if (title) html("div", "attnlib-title", root, title);

    // Controls: layer, head (or all heads), causal or bidirectional.
    const controls = html("div", "attnlib-controls", root);
    if (maps.length > 1) {
      const label = html("label", "", controls, "layer ");
      const select = html("select", "", label);
      select.dataset.role = "layer";
      maps.forEach((_, k) => { html("option", "", select, String(k)).value = k; });
      select.value = layer;
      select.addEventListener("change", () => share(model, "layer", Number(select.value)));
    }
    if (heads.length > 1) {
      const label = html("label", "", controls, "head ");
      const select = html("select", "", label);
      select.dataset.role = "head";
      heads.forEach((_, k) => { html("option", "", select, String(k)).value = k; });
      html("option", "", select, "all heads").value = ALL_HEADS;
      select.value = head;
      select.addEventListener("change", () => share(model, "head", Number(select.value)));
    }
    if (bidirectionalMaps.length && causalMaps.length) {
      const group = html("div", "attnlib-toggle", controls);
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", "attention mask");
      for (const [value, text] of [[false, "bidirectional"], [true, "causal"]]) {
        const button = html("button", "", group, text);
        button.type = "button";
        button.dataset.role = value ? "causal" : "bidirectional";
        button.setAttribute("aria-pressed", String(causal === value));
        button.addEventListener("click", () => share(model, "causal", value));
      }
    }

    // One shared colour scale for everything on screen, so heads can be compared by colour.
    const shown = head === ALL_HEADS ? heads : [heads[head]];
    let vmax = 0;
    for (const matrix of shown) for (const row of matrix) for (const w of row) vmax = Math.max(vmax, w);
    vmax = vmax > 0 ? vmax : 1;

    const body = html("div", "attnlib-body", root);
    const gallery = html("div", head === ALL_HEADS ? "attnlib-multiples" : "attnlib-single", body);
    const tooltip = html("div", "attnlib-tooltip", root);
    tooltip.hidden = true;
    const readout = html("div", "attnlib-readout", root);
    const idle = "Hover a row of the heatmap to see where that token looks.";
    readout.textContent = idle;

    const drawn = [];
    shown.forEach((matrix, k) => {
      const headIndex = head === ALL_HEADS ? k : head;
      const holder = html("div", "attnlib-map", gallery);
      if (head === ALL_HEADS) {
        const caption = html("button", "attnlib-map-caption", holder, `head ${k}`);
        caption.type = "button";
        caption.title = `show head ${k} alone`;
        caption.addEventListener("click", () => share(model, "head", k));
      }
      const cell = head === ALL_HEADS
        ? Math.max(3, Math.min(16, Math.floor(220 / n)))
        : Math.max(8, Math.min(32, Math.floor(440 / n)));
      const picture = heatmap(matrix, tokens, { cell, labels: head !== ALL_HEADS || n <= 12, vmax });
      picture.dataset.role = "heatmap";
      picture.dataset.head = headIndex;
      holder.appendChild(picture);
      drawn.push({ picture, matrix, headIndex });
    });
    const first = drawn[0].picture;
    const captionHeight = head === ALL_HEADS ? 24 : 0; // the "head k" buttons above the small multiples
    body.appendChild(colorbar(vmax, Math.max(60, Number(first.dataset.side)),
      Number(first.dataset.margin) + captionHeight));

    function showRow(matrix, i) {
      readout.replaceChildren();
      html("span", "attnlib-readout-lead", readout, `“${tokens[i]}” (query ${i}) looks at: `);
      tokens.forEach((token, j) => {
        const w = matrix[i][j];
        const chip = html("span", "attnlib-chip", readout);
        chip.style.background = viridis(w / vmax);
        chip.style.color = textColourOn(w / vmax);
        html("span", "attnlib-chip-token", chip, token);
        html("span", "attnlib-chip-weight", chip, formatWeight(w));
      });
    }

    for (const { picture, matrix, headIndex } of drawn) {
      picture.addEventListener("mousemove", (event) => {
        const target = event.target;
        if (!target.dataset || target.dataset.i === undefined) return;
        const i = Number(target.dataset.i);
        const j = Number(target.dataset.j);
        for (const other of drawn) other.picture.showRow(i);
        showRow(matrix, i);
        const headText = heads.length > 1 ? `head ${headIndex}, ` : "";
        tooltip.textContent = `${headText}query “${tokens[i]}” → key “${tokens[j]}”: ${formatWeight(matrix[i][j])}`;
        tooltip.hidden = false;
        const box = root.getBoundingClientRect();
        tooltip.style.left = `${event.clientX - box.left + 12}px`;
        tooltip.style.top = `${event.clientY - box.top + 12}px`;
      });
      picture.addEventListener("mouseleave", () => {
        for (const other of drawn) other.picture.showRow(null);
        tooltip.hidden = true;
        readout.textContent = idle;
      });
    }
  }

  const names = ["error", "tokens", "weights", "causal_weights", "layer", "head", "causal", "title"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
