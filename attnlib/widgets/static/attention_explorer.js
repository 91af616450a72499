// Attention explorer: attention weights as a heatmap, queries down the side and keys along the top.
// Every map the reader can pick (layer, head, causal or not) is already in the widget state, computed by
// attnlib in Python, so this file only draws and reacts: it works the same with or without a kernel.

import { html, mount, share, svg, textColourOn, toggle, VIRIDIS, viridis } from "./_shared.js";

const ALL_HEADS = -1;
const NO_QUERY = -1;
// Room for the drawings of one row (heatmaps and colour bar): the book's content column is about 680 px wide at a
// laptop's window. Small multiples are laid out in as many columns as gives each map the largest cells.
const ROW_BUDGET = 600;
const COLORBAR_WIDTH = 72;
const MULTIPLES_GAP = 12; // .attnlib-multiples' gap
const OUTPUT_BAR = 160; // the bar of the largest |output|

function formatWeight(w) {
  return w === 0 ? "0" : w.toFixed(4);
}

const labelFontSize = (cell) => Math.max(8, Math.min(13, cell * 0.8));
const labelRoom = (texts, fontSize) => Math.ceil(Math.max(...texts.map((t) => t.length)) * fontSize * 0.62) + 8;

// Cell size and number of columns for `count` maps of nQ x nK cells, labelled, inside the row budget: the layout
// with the largest cells wins (four heads of ten tokens: two by two, not four in a row).
function multiplesLayout(count, queryLabels, keyLabels, { largest, smallest }) {
  const n = Math.max(queryLabels.length, keyLabels.length);
  let best = { cell: smallest, columns: count };
  for (let columns = 1; columns <= count; columns++) {
    const width = (ROW_BUDGET - COLORBAR_WIDTH - (columns - 1) * MULTIPLES_GAP) / columns;
    let cell = largest;
    while (cell > smallest && labelRoom(queryLabels, labelFontSize(cell)) + n * cell + 2 > width) cell -= 1;
    const rows = Math.ceil(count / columns);
    if (rows > 1 && rows * (labelRoom(keyLabels, labelFontSize(cell)) + n * cell + 30) > 900) continue;
    if (cell > best.cell || (cell === best.cell && columns < best.columns)) best = { cell, columns };
  }
  return best;
}

// One heatmap: rows are queries, columns are keys. Returns the <svg>.
function heatmap(matrix, queryLabels, keyLabels, { cell, labels, vmax }) {
  const nQ = queryLabels.length;
  const nK = keyLabels.length;
  const fontSize = labelFontSize(cell);
  const labelWidth = (texts) => labelRoom(texts, fontSize);
  const left = labels ? labelWidth(queryLabels) : 2;
  const top = labels ? labelWidth(keyLabels) : 2;
  const width = left + nK * cell;
  const height = top + nQ * cell;
  const root = svg("svg", {
    width: width + 2, height: height + 2, viewBox: `0 0 ${width + 2} ${height + 2}`,
    class: "attnlib-heatmap", role: "img", "aria-label": "attention weights heatmap",
  });
  if (labels) {
    // Which axis is which: each row is a query (what is looking), each column a key (what is looked at).
    svg("title", {}, root).textContent = "rows: queries (what is looking); columns: keys (what is looked at)";
    if (left >= 56 && top >= 30) {
      for (const [text, dy] of [["keys →", -20], ["queries ↓", -6]]) {
        svg("text", { x: left - 6, y: top + dy, "text-anchor": "end", "font-size": 11,
          class: "attnlib-axis-title" }, root).textContent = text;
      }
    }
    queryLabels.forEach((label, i) => {
      svg("text", { x: left - 4, y: top + (i + 0.5) * cell, "text-anchor": "end", "dominant-baseline": "middle",
        "font-size": fontSize, class: "attnlib-label", "data-row": i }, root).textContent = label;
    });
    keyLabels.forEach((label, j) => {
      svg("text", { x: 0, y: 0, "text-anchor": "start", "dominant-baseline": "middle",
        "font-size": fontSize, class: "attnlib-label", "data-column": j,
        transform: `translate(${left + (j + 0.5) * cell},${top - 4}) rotate(-90)` }, root).textContent = label;
    });
  }
  const cells = svg("g", { class: "attnlib-cells" }, root);
  const numbers = labels && cell >= 30; // room to print each weight inside its cell
  for (let i = 0; i < nQ; i++) {
    for (let j = 0; j < nK; j++) {
      const t = matrix[i][j] / vmax;
      svg("rect", { x: left + j * cell, y: top + i * cell, width: cell, height: cell,
        fill: viridis(t), "data-i": i, "data-j": j }, cells);
      if (numbers) {
        svg("text", { x: left + (j + 0.5) * cell, y: top + (i + 0.5) * cell, "text-anchor": "middle",
          "dominant-baseline": "middle", "font-size": 10, fill: textColourOn(t), class: "attnlib-cell-value" },
        cells).textContent = matrix[i][j].toFixed(2);
      }
    }
  }
  svg("rect", { x: left, y: top, width: nK * cell, height: nQ * cell, class: "attnlib-frame" }, root);
  const highlight = svg("rect", { x: left, y: top, width: nK * cell, height: cell,
    class: "attnlib-row-highlight", visibility: "hidden" }, root);
  root.dataset.top = top;
  root.dataset.height = nQ * cell;
  root.showRow = (i) => {
    highlight.setAttribute("visibility", i === null ? "hidden" : "visible");
    if (i !== null) highlight.setAttribute("y", top + i * cell);
  };
  return root;
}

const outputBarsWidth = (valueLabels, queryLabel) => Math.max(
  Math.ceil(Math.max(...valueLabels.map((t) => t.length)) * 7) + 8 + OUTPUT_BAR + 60,
  `output for “${queryLabel}” = Σ weight × value`.length * 7.2);

// What one query gets back: its weighted sum of the values, one bar per output column. `limit` is the
// largest |value| over every temperature, so the bars keep their scale while the reader changes it.
function outputBars(output, valueLabels, limit, queryLabel) {
  const labelWidth = Math.ceil(Math.max(...valueLabels.map((t) => t.length)) * 7) + 8;
  const barWidth = OUTPUT_BAR;
  const row = 20;
  const top = 22;
  const negative = output.some((x) => x < 0) || limit.negative;
  const zero = labelWidth + (negative ? barWidth / 2 : 0);
  const scale = (negative ? barWidth / 2 : barWidth) / (limit.size || 1);
  const heading = `output for “${queryLabel}” = Σ weight × value`;
  const root = svg("svg", { width: outputBarsWidth(valueLabels, queryLabel),
    height: top + valueLabels.length * row + 4,
    class: "attnlib-output", role: "img", "aria-label": `output for ${queryLabel}` });
  root.dataset.role = "output";
  svg("text", { x: 0, y: 13, "font-size": 12, "font-weight": 600, class: "attnlib-label" }, root)
    .textContent = heading;
  output.forEach((x, c) => {
    const y = top + c * row;
    svg("text", { x: labelWidth - 6, y: y + row / 2, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": 12, class: "attnlib-label" }, root).textContent = valueLabels[c];
    const length = Math.abs(x) * scale;
    const bar = svg("rect", { x: x < 0 ? zero - length : zero, y: y + 3, width: Math.max(length, 0.5),
      height: row - 6, fill: "#21918c", "data-column": c }, root);
    svg("title", {}, bar).textContent = `${valueLabels[c]}: ${formatWeight(x)}`;
    svg("text", { x: zero + (x < 0 ? 4 : length + 4), y: y + row / 2, "dominant-baseline": "middle",
      "font-size": 11, class: "attnlib-label attnlib-output-value" }, root).textContent = formatWeight(x);
  });
  svg("line", { x1: zero, x2: zero, y1: top, y2: top + valueLabels.length * row, class: "attnlib-tick" }, root);
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
    label.textContent = (vmax * fraction).toFixed(2); // the same tick format as the book's static figures
  }
  return root;
}

function render({ model, el }) {
  function draw(root) {
    const queryLabels = model.get("query_labels");
    const keyLabels = model.get("key_labels");
    const valueLabels = model.get("value_labels");
    const causal = model.get("causal");
    const bidirectionalMaps = model.get("weights");
    const causalMaps = model.get("causal_weights");
    const temperatures = model.get("temperatures");
    const temperature = model.get("temperature");
    const t = Math.max(0, temperatures.indexOf(temperature));
    const allMaps = causal ? causalMaps : bidirectionalMaps; // (temperatures, layers, heads, n_q, n_k)
    const allOutputs = model.get(causal ? "causal_outputs" : "outputs"); // (temperatures, ..., n_q, d_v) or []
    const maps = allMaps[t];
    const layer = model.get("layer");
    const head = model.get("head");
    const heads = maps[layer];
    const pinned = model.get("query");
    const n = Math.max(queryLabels.length, keyLabels.length);

    // Controls: temperature, layer, head (or all heads), causal or bidirectional, the query row.
    const controls = html("div", "attnlib-controls", root);
    if (temperatures.length > 1) {
      toggle(controls, "temperature", temperatures.map((value) => [value, `T = ${value}`, "temperature"]), temperature,
        (value) => share(model, "temperature", value));
    }
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
      toggle(controls, "mask", [[false, "bidirectional", "bidirectional"], [true, "causal", "causal"]], causal,
        (value) => share(model, "causal", value));
    }
    if (allOutputs.length) {
      const label = html("label", "", controls, "query ");
      const select = html("select", "", label);
      select.dataset.role = "query";
      html("option", "", select, "(hover a row)").value = NO_QUERY;
      queryLabels.forEach((text, i) => { html("option", "", select, text).value = i; });
      select.value = pinned;
      select.addEventListener("change", () => share(model, "query", Number(select.value)));
    }

    // One shared colour scale for everything on screen, so heads can be compared by colour; and the same at
    // every temperature, so a flatter map looks flatter.
    const shown = head === ALL_HEADS ? heads : [heads[head]];
    let vmax = 0;
    for (const atTemperature of allMaps) {
      const layerMaps = atTemperature[layer];
      for (const matrix of head === ALL_HEADS ? layerMaps : [layerMaps[head]]) {
        for (const row of matrix) for (const w of row) vmax = Math.max(vmax, w);
      }
    }
    vmax = vmax > 0 ? vmax : 1;

    const body = html("div", "attnlib-body", root);
    const gallery = html("div", head === ALL_HEADS ? "attnlib-multiples" : "attnlib-single", body);
    const tooltip = html("div", "attnlib-tooltip", root);
    tooltip.hidden = true;
    const readout = html("div", "attnlib-readout", root);
    const idle = allOutputs.length
      ? "Hover a row of the heatmap, or click one to keep it, to see its weights and what it gets back."
      : "Hover a row of the heatmap to see where it looks; click a row to keep it.";
    const outputHolder = html("div", "attnlib-output-holder", body);
    if (allOutputs.length) { // the same room with or without a query picked, so nothing jumps when it changes
      outputHolder.style.minWidth = `${Math.max(...queryLabels.map((label) => outputBarsWidth(valueLabels, label)))}px`;
      outputHolder.style.minHeight = `${22 + valueLabels.length * 20 + 4}px`;
    }

    const drawn = [];
    const sizes = head === ALL_HEADS
      ? multiplesLayout(shown.length, queryLabels, keyLabels, { largest: 22, smallest: 8 })
      : multiplesLayout(1, queryLabels, keyLabels, { largest: 32, smallest: 8 });
    if (head === ALL_HEADS) gallery.style.gridTemplateColumns = `repeat(${sizes.columns}, max-content)`;
    shown.forEach((matrix, k) => {
      const headIndex = head === ALL_HEADS ? k : head;
      const holder = html("div", "attnlib-map", gallery);
      if (head === ALL_HEADS) {
        const caption = html("button", "attnlib-map-caption", holder, `head ${k}`);
        caption.type = "button";
        caption.title = `show head ${k} alone`;
        caption.addEventListener("click", () => share(model, "head", k));
      }
      const picture = heatmap(matrix, queryLabels, keyLabels, { cell: sizes.cell, labels: true, vmax });
      picture.dataset.role = "heatmap";
      picture.dataset.head = headIndex;
      holder.appendChild(picture);
      drawn.push({ picture, matrix, headIndex });
    });
    const first = drawn[0].picture;
    const captionHeight = head === ALL_HEADS ? 24 : 0; // the "head k" buttons above the small multiples
    gallery.after(colorbar(vmax, Math.max(60, Number(first.dataset.height)),
      Number(first.dataset.top) + captionHeight));

    // The largest |output| over every temperature, for bars that keep their scale.
    const limit = { size: 0, negative: false };
    if (allOutputs.length) {
      for (const atTemperature of allOutputs) {
        for (const rows of atTemperature[layer]) {
          for (const row of rows) {
            for (const x of row) { limit.size = Math.max(limit.size, Math.abs(x)); limit.negative ||= x < 0; }
          }
        }
      }
    }

    // Spell out row i of one head: its weight on every key and, with outputs, the weighted sum it gets back.
    function showRow(matrix, headIndex, i) {
      for (const other of drawn) other.picture.showRow(i === NO_QUERY ? null : i);
      readout.replaceChildren();
      outputHolder.replaceChildren();
      if (i === NO_QUERY) {
        readout.textContent = idle;
        return;
      }
      html("span", "attnlib-readout-lead", readout, `“${queryLabels[i]}” (query ${i}) looks at: `);
      keyLabels.forEach((label, j) => {
        const w = matrix[i][j];
        const chip = html("span", "attnlib-chip", readout);
        chip.style.background = viridis(w / vmax);
        chip.style.color = textColourOn(w / vmax);
        html("span", "attnlib-chip-token", chip, label);
        html("span", "attnlib-chip-weight", chip, formatWeight(w));
      });
      if (allOutputs.length) {
        outputHolder.appendChild(outputBars(allOutputs[t][layer][headIndex][i], valueLabels, limit, queryLabels[i]));
      }
    }

    const pinnedHead = drawn[0];
    const rest = () => showRow(pinnedHead.matrix, pinnedHead.headIndex, pinned);
    rest();

    for (const { picture, matrix, headIndex } of drawn) {
      picture.addEventListener("mousemove", (event) => {
        const target = event.target;
        if (!target.dataset || target.dataset.i === undefined) return;
        const i = Number(target.dataset.i);
        const j = Number(target.dataset.j);
        showRow(matrix, headIndex, i);
        const headText = heads.length > 1 ? `head ${headIndex}, ` : "";
        tooltip.textContent = `${headText}query “${queryLabels[i]}” → key “${keyLabels[j]}”: ` +
          formatWeight(matrix[i][j]);
        tooltip.hidden = false;
        const box = root.getBoundingClientRect();
        tooltip.style.left = `${event.clientX - box.left + 12}px`;
        tooltip.style.top = `${event.clientY - box.top + 12}px`;
      });
      picture.addEventListener("click", (event) => {
        const target = event.target;
        if (!target.dataset || target.dataset.i === undefined) return;
        const i = Number(target.dataset.i);
        share(model, "query", i === pinned ? NO_QUERY : i); // a second click on the kept row lets it go
      });
      picture.addEventListener("mouseleave", () => {
        tooltip.hidden = true;
        rest();
      });
    }
  }

  return mount({ model, el }, "attnlib-explorer", ["query_labels", "key_labels", "weights", "causal_weights",
    "outputs", "causal_outputs", "value_labels", "temperatures", "temperature", "layer", "head", "causal", "query"],
  draw);
}

export default { render };
