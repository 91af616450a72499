// Feed-forward memory view: an FFN read as key-value memory. For the input the reader picks, each slot's match
// x·k_j + b_1j, its gate (does the slot fire?), the value it adds scaled by the gate, and the output they sum
// to; the activation can be switched off to see every match leak through. Every number was computed by attnlib
// in Python, with and without the activation, so this file only draws and reacts.

import { html, mount, share, svg, toggle } from "./_shared.js";

const POSITIVE = [84, 39, 136]; // purple for > 0 ...
const NEGATIVE = [179, 88, 6]; // ... orange for < 0: a diverging pair that reads for most colour-blind readers

// White at 0, purple towards +1, orange towards -1.
function diverging(t) {
  const x = Math.min(1, Math.max(-1, Number.isFinite(t) ? t : 0));
  const end = x >= 0 ? POSITIVE : NEGATIVE;
  return `rgb(${end.map((v) => Math.round(255 + (v - 255) * Math.abs(x))).join(",")})`;
}

const twoDecimals = (x) => (x === 0 ? "0" : x.toFixed(2));

const largest = (nested) => nested.flat(Infinity).reduce((m, x) => Math.max(m, Math.abs(x)), 0) || 1;

// One row per slot: its label, the match, the gate, and the value it adds (gate_j · v_j) as a strip of cells;
// under them the bias b_2 and the output, the sum of the strips above.
function memoryTable({ slotLabels, pre, gates, contributions, bias, output, activation, activationName, limits }) {
  const row = 22;
  const top = 34;
  const labelWidth = Math.ceil(Math.max(...slotLabels.map((t) => t.length), 10) * 6.6) + 10;
  const barWidth = 92;
  const gap = 14;
  const dModel = output.length;
  const cell = Math.max(2, Math.min(12, Math.floor(256 / dModel)));
  const matchX = labelWidth;
  const gateX = matchX + barWidth + gap;
  const stripX = gateX + barWidth + gap;
  const width = stripX + dModel * cell + 4;
  const nRows = slotLabels.length;
  const height = top + (nRows + 2) * row + 10;
  const root = svg("svg", { width, height, class: "attnlib-memory", role: "img",
    "aria-label": "memory slots: match, gate and the value each adds" });
  root.dataset.role = "slots";

  const header = (x, text, sub) => {
    svg("text", { x, y: 12, "font-size": 11, "font-weight": 600, class: "attnlib-label" }, root).textContent = text;
    svg("text", { x, y: 26, "font-size": 10, class: "attnlib-axis-title" }, root).textContent = sub;
  };
  header(0, "memory slot", "key → value");
  header(matchX, "match", "x·kⱼ + b₁ⱼ");
  header(gateX, "gate", activation ? `${activationName}(match)` : "none: = match");
  header(stripX, "what the slot adds", "gateⱼ × vⱼ (one cell per number)");

  // A bar around a zero line in the middle of its column, scaled to the largest |number| in either mode.
  const bar = (x0, value, limit, y, role) => {
    const zero = x0 + barWidth / 2;
    const length = (Math.abs(value) / limit) * (barWidth / 2);
    svg("line", { x1: zero, x2: zero, y1: y + 2, y2: y + row - 2, class: "attnlib-tick" }, root);
    const rect = svg("rect", { x: value < 0 ? zero - length : zero, y: y + 5, width: Math.max(length, 0.5),
      height: row - 10, fill: value < 0 ? diverging(-1) : diverging(1) }, root);
    rect.dataset.role = role;
    rect.dataset.value = value;
    svg("text", { x: value < 0 ? zero + 3 : zero - 3, y: y + row / 2, "text-anchor": value < 0 ? "start" : "end",
      "dominant-baseline": "middle", "font-size": 10, class: "attnlib-label" }, root).textContent = twoDecimals(value);
  };

  const strip = (values, y, role) => {
    const group = svg("g", {}, root);
    group.dataset.role = role;
    values.forEach((x, c) => {
      const rect = svg("rect", { x: stripX + c * cell, y: y + 4, width: cell, height: row - 8,
        fill: diverging(Math.sign(x) * Math.sqrt(Math.abs(x) / limits.strip)) }, group); // sqrt: small numbers show
      svg("title", {}, rect).textContent = `[${c}] = ${x.toFixed(4)}`;
    });
    svg("rect", { x: stripX, y: y + 4, width: dModel * cell, height: row - 8, class: "attnlib-frame" }, root);
  };

  slotLabels.forEach((label, j) => {
    const y = top + j * row;
    const fires = gates[j] !== 0;
    const text = svg("text", { x: labelWidth - 8, y: y + row / 2, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": 11, class: fires ? "attnlib-label attnlib-fires" : "attnlib-label attnlib-silent" }, root);
    text.textContent = label;
    text.dataset.role = fires ? "slot-fires" : "slot-silent";
    bar(matchX, pre[j], limits.match, y, "match");
    bar(gateX, gates[j], limits.match, y, "gate");
    strip(contributions[j], y, "contribution");
  });
  const biasY = top + nRows * row;
  svg("text", { x: stripX - 8, y: biasY + row / 2, "text-anchor": "end", "dominant-baseline": "middle",
    "font-size": 11, class: "attnlib-label" }, root).textContent = "+ bias b₂";
  strip(bias, biasY, "bias");
  const outputY = biasY + row;
  svg("line", { x1: stripX, x2: stripX + dModel * cell, y1: outputY + 1, y2: outputY + 1, class: "attnlib-tick" },
    root);
  svg("text", { x: stripX - 8, y: outputY + row / 2, "text-anchor": "end", "dominant-baseline": "middle",
    "font-size": 11, "font-weight": 600, class: "attnlib-label" }, root).textContent = "= output";
  strip(output, outputY, "output");
  return root;
}

// The output compared with each readout word (cosine similarity), the nearest one marked.
function readoutBars(labels, similarities) {
  const row = 18;
  const top = 20;
  const labelWidth = Math.ceil(Math.max(...labels.map((t) => t.length)) * 6.6) + 10;
  const barWidth = 160;
  const zero = labelWidth + barWidth / 2;
  const best = similarities.indexOf(Math.max(...similarities));
  const root = svg("svg", { width: Math.max(labelWidth + barWidth + 50, 300), height: top + labels.length * row + 4,
    class: "attnlib-readout-bars", role: "img", "aria-label": "cosine similarity of the output with each word" });
  root.dataset.role = "readout";
  svg("text", { x: 0, y: 12, "font-size": 11, "font-weight": 600, class: "attnlib-label" }, root)
    .textContent = "the output, compared with each word (cosine)";
  labels.forEach((label, w) => {
    const y = top + w * row;
    const value = similarities[w];
    const text = svg("text", { x: labelWidth - 6, y: y + row / 2, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": 11, class: w === best && value > 0 ? "attnlib-label attnlib-fires" : "attnlib-label" }, root);
    text.textContent = label;
    const length = Math.abs(value) * (barWidth / 2);
    const rect = svg("rect", { x: value < 0 ? zero - length : zero, y: y + 3, width: Math.max(length, 0.5),
      height: row - 6, fill: diverging(value < 0 ? -1 : 1) }, root);
    rect.dataset.word = label;
    svg("text", { x: value < 0 ? zero + 3 : zero - 3, y: y + row / 2, "text-anchor": value < 0 ? "start" : "end",
      "dominant-baseline": "middle", "font-size": 10, class: "attnlib-label" }, root).textContent = twoDecimals(value);
  });
  svg("line", { x1: zero, x2: zero, y1: top, y2: top + labels.length * row, class: "attnlib-tick" }, root);
  return root;
}

function render({ model, el }) {
  function draw(root) {
    const inputLabels = model.get("input_labels");
    const slotLabels = model.get("slot_labels");
    const readoutLabels = model.get("readout_labels");
    const activationName = model.get("activation_name");
    const activation = model.get("activation");
    const index = Math.min(model.get("input_index"), inputLabels.length - 1);
    const withActivation = model.get("with_activation");
    const withoutActivation = model.get("without_activation");
    const mode = activation ? withActivation : withoutActivation;
    const pre = model.get("pre_activation")[index];
    const gates = mode.gates[index];

    const controls = html("div", "attnlib-controls", root);
    const inputs = toggle(controls, "input", inputLabels.map((label, i) => [i, label, "input"]), index,
      (value) => share(model, "input_index", value));
    for (const node of inputs.children) node.dataset.index = node.dataset.value;
    toggle(controls, "activation", [[true, `${activationName} on`, "activation-on"],
      [false, "off (linear)", "activation-off"]], activation, (value) => share(model, "activation", value));

    // Bars share one scale in both modes, so switching shows real differences in size; the strips' colours are
    // scaled per mode (without the activation they grow several times larger and would wash out the rest).
    const limits = {
      match: largest(model.get("pre_activation")),
      strip: Math.max(largest(mode.outputs), largest(mode.contributions)),
    };
    const body = html("div", "attnlib-body", root);
    body.appendChild(memoryTable({ slotLabels, pre, gates, contributions: mode.contributions[index],
      bias: model.get("bias"), output: mode.outputs[index], activation, activationName, limits }));
    const similarities = mode.readout.length ? mode.readout[index] : null;
    if (similarities) body.appendChild(readoutBars(readoutLabels, similarities));

    // The same sum in words: which slots fire and what the output is closest to.
    const firing = gates.map((g, j) => [g, j]).filter(([g]) => g !== 0);
    const terms = firing.map(([g, j]) => `${twoDecimals(g)} × v(${slotLabels[j]})`).join(" + ").replace(/\+ -/g, "− ");
    const summary = html("div", "attnlib-note", root);
    summary.dataset.role = "summary";
    const lead = activation
      ? `${firing.length} of ${slotLabels.length} slots fire for “${inputLabels[index]}”. `
      : `Without the activation all ${slotLabels.length} slots pass their match on, negative ones included. `;
    summary.textContent = lead + (firing.length ? `output = ${terms} + b₂.` : "output = b₂: no slot has anything to add.");
    if (similarities && firing.length) {
      const best = similarities.indexOf(Math.max(...similarities));
      html("span", "", summary, ` Nearest word: `);
      html("strong", "", summary, readoutLabels[best]).dataset.role = "nearest";
      html("span", "", summary, ` (cosine ${twoDecimals(similarities[best])}).`);
    }
  }

  return mount({ model, el }, "attnlib-ffn", ["input_labels", "slot_labels", "readout_labels", "activation_name",
    "pre_activation", "bias", "with_activation", "without_activation", "input_index", "activation"], draw);
}

export default { render };
