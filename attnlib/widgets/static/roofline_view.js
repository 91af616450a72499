// Roofline view: standard attention and FlashAttention as points under one GPU's two roofs (HBM bandwidth and
// tensor-core peak), on log-log axes. Every number comes from the grid attnlib.traffic and attnlib.roofline
// computed in Python for each choice the controls offer; this file only picks the entry and draws it. It is a
// model: the modelled points sit on the roof. Measured points, when results were given, sit below it.

import { html, mount, share, svg, table, toggle } from "./_shared.js";

const WIDTH = 560;
const HEIGHT = 360;
const MARGIN = { left: 62, right: 14, top: 30, bottom: 46 };
const X_RANGE = [8, 2048]; // FLOP per byte
const Y_RANGE = [5e12, 2e15]; // FLOP/s
const COLOURS = { standard: "#d95f02", flash: "#1b9e77" }; // a colour-blind-safe pair (ColorBrewer Dark2)
const ALGORITHM_NAMES = { flash2: "FlashAttention-2", flash1: "FlashAttention-1" };
const PASS_NAMES = { forward: "forward", forward_backward: "forward + backward" };

// Three significant digits in a unit that keeps the number readable.
function withUnit(value, units) {
  for (const [scale, unit] of units) {
    if (Math.abs(value) >= scale) return `${(value / scale).toPrecision(3)} ${unit}`;
  }
  const [scale, unit] = units[units.length - 1];
  return `${(value / scale).toPrecision(3)} ${unit}`;
}
const bytesText = (x) => withUnit(x, [[1e12, "TB"], [1e9, "GB"], [1e6, "MB"], [1e3, "kB"], [1, "B"]]);
const flopsText = (x) => withUnit(x, [[1e15, "PFLOP"], [1e12, "TFLOP"], [1e9, "GFLOP"], [1e6, "MFLOP"], [1, "FLOP"]]);
const secondsText = (x) => withUnit(x, [[1, "s"], [1e-3, "ms"], [1e-6, "µs"], [1e-9, "ns"]]);
const kib = (bytes) => `${bytes / 1024} KiB`;

// The roofline model of one point: as attnlib.roofline.roofline_point computes it.
function modelPoint(flops, bytes, gpu) {
  const computeSeconds = flops / gpu.peak_flops;
  const memorySeconds = bytes / gpu.hbm_bandwidth;
  const seconds = Math.max(computeSeconds, memorySeconds);
  return { flops, bytes, intensity: flops / bytes, seconds, rate: flops / seconds,
    bound: memorySeconds > computeSeconds ? "memory" : "compute" };
}

// What the current choice shows: the standard point, and the flash point (or why there is none).
function choice(model) {
  const grid = model.get("grid");
  const gpu = model.get("gpus").find((g) => g.name === model.get("gpu"));
  const n = model.get("n");
  const d = model.get("d");
  const sram = model.get("sram_bytes");
  const blocks = model.get("block_sizes");
  const algorithm = model.get("algorithm");
  const pass = model.get("pass_name");
  const flashKey = (alg) => (blocks.length === 2 ? `${alg}/${n}/${d}/${blocks[0]}x${blocks[1]}`
    : `${alg}/${n}/${d}/sram${sram}`);
  const misfit = blocks.length === 2 ? grid.fits[`${d}/${sram}/${blocks[0]}x${blocks[1]}`] : "";
  const standard = modelPoint(...grid.standard[`${n}/${d}`][pass], gpu);
  const flashAt = (alg) => (misfit ? null : modelPoint(...grid.flash[flashKey(alg)][pass], gpu));
  const usedBlocks = blocks.length === 2 ? { forward: blocks, backward: blocks }
    : grid.blocks[`${algorithm}/${d}/${sram}`];
  return { grid, gpu, n, d, sram, blocks, algorithm, pass, misfit, standard, flash: flashAt(algorithm),
    flashAt, usedBlocks };
}

function axes(root) {
  const [x0, x1] = X_RANGE.map(Math.log2);
  const [y0, y1] = Y_RANGE.map(Math.log10);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (value) => MARGIN.left + ((Math.log2(value) - x0) / (x1 - x0)) * plotWidth;
  const y = (value) => MARGIN.top + (1 - (Math.log10(value) - y0) / (y1 - y0)) * plotHeight;
  svg("rect", { x: MARGIN.left, y: MARGIN.top, width: plotWidth, height: plotHeight, fill: "none",
    class: "attnlib-frame" }, root);
  for (let power = x0; power <= x1; power++) {
    const px = x(2 ** power);
    svg("line", { x1: px, x2: px, y1: MARGIN.top, y2: MARGIN.top + plotHeight, class: "attnlib-grid" }, root);
    svg("text", { x: px, y: MARGIN.top + plotHeight + 14, "text-anchor": "middle", "font-size": 11,
      class: "attnlib-label" }, root).textContent = String(2 ** power);
  }
  for (const value of [1e13, 3e13, 1e14, 3e14, 1e15]) {
    const py = y(value);
    svg("line", { x1: MARGIN.left, x2: MARGIN.left + plotWidth, y1: py, y2: py, class: "attnlib-grid" }, root);
    svg("text", { x: MARGIN.left - 5, y: py, "text-anchor": "end", "dominant-baseline": "middle", "font-size": 11,
      class: "attnlib-label" }, root).textContent = String(value / 1e12);
  }
  svg("text", { x: MARGIN.left + plotWidth / 2, y: HEIGHT - 8, "text-anchor": "middle", "font-size": 12,
    class: "attnlib-axis-title" }, root).textContent = "arithmetic intensity (FLOP per HBM byte, log scale)";
  svg("text", { x: 14, y: MARGIN.top + plotHeight / 2, "text-anchor": "middle", "font-size": 12,
    transform: `rotate(-90 14 ${MARGIN.top + plotHeight / 2})`, class: "attnlib-axis-title" }, root)
    .textContent = "TFLOP/s (log scale)";
  return { x, y, plotWidth, plotHeight };
}

// The two roofs of a GPU: the slope bandwidth x intensity up to the ridge point, then the flat peak.
function roofPath(gpu, x, y) {
  const start = Math.max(X_RANGE[0], Y_RANGE[0] / gpu.hbm_bandwidth);
  return `M ${x(start)} ${y(start * gpu.hbm_bandwidth)} L ${x(gpu.ridge_point)} ${y(gpu.peak_flops)} ` +
    `L ${x(X_RANGE[1])} ${y(gpu.peak_flops)}`;
}

const clampX = (value) => Math.min(X_RANGE[1], Math.max(X_RANGE[0], value));
const clampY = (value) => Math.min(Y_RANGE[1], Math.max(Y_RANGE[0], value));

function marker(root, kind, cx, cy, colour, filled, role, tip) {
  const attributes = filled ? { fill: colour, stroke: "#222", "stroke-width": 1 }
    : { fill: "#fff", stroke: colour, "stroke-width": 2.5 };
  const node = kind === "standard"
    ? svg("circle", { cx, cy, r: 6, ...attributes }, root)
    : svg("rect", { x: cx - 6, y: cy - 6, width: 12, height: 12, ...attributes }, root);
  node.dataset.role = role;
  svg("title", {}, node).textContent = tip;
  return node;
}

function plot(parent, model, now) {
  const root = svg("svg", { width: WIDTH, height: HEIGHT, role: "img", class: "attnlib-roofline",
    "aria-label": `roofline of the ${now.gpu.name}, a model` }, parent);
  root.dataset.role = "roofline";
  const { x, y } = axes(root);
  svg("text", { x: MARGIN.left, y: 16, "font-size": 12, "font-weight": 600, class: "attnlib-label" }, root)
    .textContent = `${now.gpu.name}: a model (published peaks, attnlib.traffic's bytes)`;

  for (const gpu of model.get("gpus")) {
    if (gpu.name === now.gpu.name) continue;
    const other = svg("path", { d: roofPath(gpu, x, y), fill: "none", stroke: "#b5b5b5", "stroke-width": 1,
      "stroke-dasharray": "4 3" }, root);
    svg("title", {}, other).textContent = `${gpu.name}: ridge point ${gpu.ridge_point.toFixed(0)} FLOP/byte`;
  }
  const gpu = now.gpu;
  svg("path", { d: roofPath(gpu, x, y), fill: "none", stroke: "#3b528b", "stroke-width": 2.5 }, root)
    .dataset.role = "roof";
  const ridgeX = x(gpu.ridge_point);
  svg("line", { x1: ridgeX, x2: ridgeX, y1: y(gpu.peak_flops), y2: y(Y_RANGE[0]), stroke: "#3b528b",
    "stroke-dasharray": "2 3" }, root);
  const ridge = svg("text", { x: ridgeX + 4, y: y(Y_RANGE[0]) - 6, "font-size": 11, class: "attnlib-label" }, root);
  ridge.textContent = `ridge ${gpu.ridge_point.toFixed(0)} FLOP/byte`;
  ridge.dataset.role = "ridge";
  // Below the flat roof, so that a point's label above it stays clear.
  svg("text", { x: x(X_RANGE[1]) - 4, y: y(gpu.peak_flops) + 14, "text-anchor": "end", "font-size": 11,
    class: "attnlib-label" }, root).textContent = `peak ${(gpu.peak_flops / 1e12).toFixed(1)} TFLOP/s`;
  const slopeAt = X_RANGE[0] * 1.6;
  svg("text", { x: x(slopeAt) + 4, y: y(slopeAt * gpu.hbm_bandwidth) - 8, "font-size": 11,
    class: "attnlib-label" }, root).textContent = `HBM ${(gpu.hbm_bandwidth / 1e12).toFixed(2)} TB/s`;

  const shown = [["standard", now.standard, "standard attention"]];
  if (now.flash) shown.push(["flash", now.flash, ALGORITHM_NAMES[now.algorithm]]);
  if (now.flash) {
    svg("line", { x1: x(clampX(now.standard.intensity)), y1: y(clampY(now.standard.rate)),
      x2: x(clampX(now.flash.intensity)), y2: y(clampY(now.flash.rate)), stroke: "#555",
      "stroke-dasharray": "5 4" }, root);
  }
  for (const [kind, point, name] of shown) {
    const cx = x(clampX(point.intensity));
    const cy = y(clampY(point.rate));
    marker(root, kind, cx, cy, COLOURS[kind], true, `model-${kind}`,
      `${name} (model): ${point.intensity.toFixed(1)} FLOP/byte, ${(point.rate / 1e12).toFixed(1)} TFLOP/s, ` +
      `${secondsText(point.seconds)}`);
    svg("text", { x: cx + 9, y: cy + (kind === "standard" ? 16 : -9), "font-size": 12, "font-weight": 600,
      fill: COLOURS[kind] }, root).textContent = name;
  }

  // Measured points of this GPU and shape: at the intensity of the algorithm they run, at the rate they reached.
  const measured = model.get("measured").filter((m) => m.gpu === gpu.name && m.n === now.n && m.d === now.d
    && m.pass === now.pass);
  for (const point of measured) {
    const kind = point.algorithm === "standard" ? "standard" : "flash";
    const at = kind === "standard" ? now.standard : now.flashAt(point.algorithm);
    if (!at) continue; // the chosen blocks do not fit: no modelled intensity to place it at
    marker(root, kind, x(clampX(at.intensity)), y(clampY(point.flops_per_second)), COLOURS[kind], false,
      "measured", `measured on ${point.device}: ${point.line}, ${point.ms.toPrecision(3)} ms, ` +
      `${(point.flops_per_second / 1e12).toFixed(1)} TFLOP/s`);
  }
  return measured;
}

function render({ model, el }) {
  let refocus = null; // the control the reader was using, focused again after the redraw

  function draw(root) {
    const now = choice(model);
    const pick = (name, value, role) => { refocus = role; share(model, name, value); };

    const first = html("div", "attnlib-controls", root);
    toggle(first, "GPU", model.get("gpus").map((g) => [g.name, g.name, "gpu"]), now.gpu.name,
      (value) => pick("gpu", value, null));
    toggle(first, "pass", Object.entries(PASS_NAMES).map(([value, text]) => [value, text, "pass"]), now.pass,
      (value) => pick("pass_name", value, null));
    toggle(first, "flash", Object.entries(ALGORITHM_NAMES).map(([value, text]) => [value, text, "algorithm"]),
      now.algorithm, (value) => pick("algorithm", value, null));

    const second = html("div", "attnlib-controls", root);
    const slider = (label, name, options, value, format, role) => {
      const wrapper = html("label", "", second, `${label} = `);
      const shownValue = html("b", "", wrapper, format(value));
      shownValue.dataset.role = `${role}-value`;
      const input = html("input", "", wrapper);
      Object.assign(input, { type: "range", min: 0, max: options.length - 1, step: 1,
        value: options.indexOf(value) });
      input.dataset.role = role;
      input.setAttribute("aria-label", label);
      input.setAttribute("aria-valuetext", format(value));
      input.style.verticalAlign = "middle";
      input.addEventListener("input", () => { shownValue.textContent = format(options[Number(input.value)]); });
      input.addEventListener("change", () => pick(name, options[Number(input.value)], role));
      return input;
    };
    slider("n", "n", model.get("lengths"), now.n, String, "n-slider");
    toggle(second, "d", model.get("head_dims").map((d) => [d, String(d), "d"]), now.d,
      (value) => pick("d", value, null));
    slider("SRAM", "sram_bytes", model.get("sram_sizes"), now.sram, kib, "sram-slider");
    const label = html("label", "", second, "blocks ");
    const select = html("select", "", label);
    select.dataset.role = "blocks";
    html("option", "", select, "the paper's, from the SRAM size").value = "";
    for (const q of model.get("block_choices")) {
      for (const k of model.get("block_choices")) html("option", "", select, `${q} × ${k}`).value = `${q}x${k}`;
    }
    select.value = now.blocks.length === 2 ? `${now.blocks[0]}x${now.blocks[1]}` : "";
    select.addEventListener("change", () => pick("block_sizes",
      select.value ? select.value.split("x").map(Number) : [], "blocks"));

    const body = html("div", "attnlib-body", root);
    const measured = plot(body, model, now);

    const grid = now.grid;
    const batch = grid.tokens / now.n;
    const heads = grid.hidden / now.d;
    const side = html("div", "attnlib-panel", body);
    const row = (kind, name, point) => (point ? [name,
      { text: bytesText(point.bytes), className: `attnlib-rl-bytes-${kind}` },
      { text: flopsText(point.flops), className: `attnlib-rl-flops-${kind}` },
      { text: point.intensity.toFixed(1), className: `attnlib-rl-intensity-${kind}` },
      { text: point.bound, className: `attnlib-rl-bound-${kind}` },
      { text: secondsText(point.seconds), className: `attnlib-rl-time-${kind}` }]
      : [name, { text: "blocks do not fit", className: `attnlib-rl-bytes-${kind}` }, "", "", "", ""]);
    const blocksText = now.pass === "forward" ? `${now.usedBlocks.forward.join(" × ")}`
      : `${now.usedBlocks.forward.join(" × ")}, backward ${now.usedBlocks.backward.join(" × ")}`;
    table(side, ["", "HBM bytes", "FLOPs", "FLOP/byte", "bound by", "time (model)"], [
      row("standard", "standard", now.standard),
      row("flash", `${ALGORITHM_NAMES[now.algorithm]}`, now.flash),
    ]).dataset.role = "numbers";
    const facts = html("div", "attnlib-note", side);
    facts.dataset.role = "facts";
    html("div", "", facts, `${PASS_NAMES[now.pass]}, float16: batch × heads = ${batch} × ${heads} ` +
      `(${grid.tokens} tokens, hidden size ${grid.hidden}), n = ${now.n}, d = ${now.d}.`);
    html("div", "", facts, `Flash blocks (block_q × block_k): ${blocksText}.`);
    if (now.flash) {
      const fewer = now.standard.bytes / now.flash.bytes;
      const right = now.flash.intensity / now.standard.intensity;
      html("div", "", facts, `${ALGORITHM_NAMES[now.algorithm]} moves ${fewer.toFixed(1)}× fewer bytes; ` +
        `its point sits ${right.toFixed(1)}× further right` +
        (now.pass === "forward" ? " (the same FLOPs)." : " (7/6 of the FLOPs: the backward recomputes S).") +
        ` The model's time: ${(now.standard.seconds / now.flash.seconds).toFixed(1)}× shorter.`)
        .dataset.role = "ratio";
    } else {
      html("div", "attnlib-bad", facts, now.misfit).dataset.role = "misfit";
    }
    const measuredNote = html("div", "", facts);
    measuredNote.dataset.role = "measured-note";
    const all = model.get("measured");
    if (!all.length) {
      measuredNote.textContent = "No measured points: attnlib's kernel has not been timed on a GPU for this book " +
        "yet. Both points are the model, on the roof: the fastest each could run.";
    } else if (!measured.length) {
      const devices = [...new Set(all.map((m) => `${m.device} (${m.gpu})`))].join(", ");
      measuredNote.textContent = `Measured on ${devices}; nothing at this GPU, n, d and pass.`;
    } else {
      measuredNote.textContent = `Hollow markers: measured on ${measured[0].device}, at the model's intensity, ` +
        "at the FLOP rate the kernel reached (FLOPs of the model over the measured time).";
    }
    html("div", "", facts, "Faint dashed lines: the roofs of the other two GPUs.");
    for (const sentence of model.get("measured_skipped")) html("div", "", facts, sentence);
    html("div", "", facts, `Peaks: ${now.gpu.source}.`).style.color = "#666";

    if (refocus) {
      const again = root.querySelector(`[data-role="${refocus}"]`);
      if (again) again.focus();
      refocus = null;
    }
  }

  return mount({ model, el }, "attnlib-roofline-view", ["grid", "gpus", "measured", "measured_skipped", "gpu", "n",
    "d", "sram_bytes", "block_sizes", "algorithm", "pass_name", "lengths", "head_dims", "sram_sizes",
    "block_choices"], draw);
}

export default { render };
