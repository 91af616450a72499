// FlashAttention tile stepper: the score matrix is filled one (query block, key block) tile at a time, and each
// query row keeps only its running maximum m, running sum l and unnormalised output acc. Every step was
// recorded by attnlib.numpy.flash_attention in Python; this file shows them one by one.

import { formatNumber, html, mount, stepper, svg, table, viridis } from "./_shared.js";

const PLAY_INTERVAL_MS = 900;

// The n_q x n_k score grid: tiles visited so far are coloured by their scores, the current one outlined.
function scoreGrid(model, upTo) {
  const steps = model.get("steps");
  const nQ = model.get("n_q");
  const nK = model.get("n_k");
  const blockQ = model.get("block_q");
  const blockK = model.get("block_k");
  const cell = Math.max(12, Math.min(36, Math.floor(320 / Math.max(nQ, nK))));
  const margin = 30;
  const root = svg("svg", { width: margin + nK * cell + 4, height: margin + nQ * cell + 4,
    class: "attnlib-score-grid", role: "img", "aria-label": "score matrix, tile by tile" });
  root.dataset.role = "score-grid";

  // One colour scale for the whole run, so a cell keeps its colour from step to step.
  let low = Infinity;
  let high = -Infinity;
  for (const step of steps) for (const row of step.scores) for (const s of row) {
    if (s !== null) { low = Math.min(low, s); high = Math.max(high, s); }
  }
  const span = high > low ? high - low : 1;

  for (let r = 0; r < nQ; r++) {
    svg("text", { x: margin - 4, y: margin + (r + 0.5) * cell, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": 10, class: "attnlib-label" }, root).textContent = `q${r}`;
  }
  for (let c = 0; c < nK; c++) {
    svg("text", { x: margin + (c + 0.5) * cell, y: margin - 6, "text-anchor": "middle", "font-size": 10,
      class: "attnlib-label" }, root).textContent = `k${c}`;
  }
  const cells = svg("g", {}, root);
  for (let r = 0; r < nQ; r++) {
    for (let c = 0; c < nK; c++) {
      svg("rect", { x: margin + c * cell, y: margin + r * cell, width: cell, height: cell, fill: "#fff",
        stroke: "#ddd", "stroke-width": 0.5, "data-r": r, "data-c": c }, cells);
    }
  }
  const paint = (r, c, fill, title) => {
    const rect = cells.children[r * nK + c];
    rect.setAttribute("fill", fill);
    svg("title", {}, rect).textContent = title;
  };
  for (const [i, j] of model.get("skipped")) {
    for (let r = i * blockQ; r < Math.min(nQ, (i + 1) * blockQ); r++) {
      for (let c = j * blockK; c < Math.min(nK, (j + 1) * blockK); c++) {
        paint(r, c, "#ececec", "skipped: every score in this tile is masked (causal), so it is never computed");
      }
    }
  }
  for (let s = 0; s <= upTo; s++) {
    const step = steps[s];
    step.scores.forEach((row, a) => row.forEach((score, b) => {
      const r = step.q_range[0] + a;
      const c = step.k_range[0] + b;
      if (score === null) paint(r, c, "#d5d5d5", `q${r}·k${c}: masked (−∞)`);
      else paint(r, c, viridis((score - low) / span), `q${r}·k${c} × scale = ${formatNumber(score)}`);
    }));
  }
  // Tile boundaries.
  for (let r = 0; r <= nQ; r += blockQ) {
    svg("line", { x1: margin, x2: margin + nK * cell, y1: margin + r * cell, y2: margin + r * cell,
      class: "attnlib-tick" }, root);
  }
  for (let c = 0; c <= nK; c += blockK) {
    svg("line", { y1: margin, y2: margin + nQ * cell, x1: margin + c * cell, x2: margin + c * cell,
      class: "attnlib-tick" }, root);
  }
  svg("rect", { x: margin, y: margin, width: nK * cell, height: nQ * cell, class: "attnlib-frame" }, root);
  const current = steps[upTo];
  svg("rect", { x: margin + current.k_range[0] * cell, y: margin + current.q_range[0] * cell,
    width: (current.k_range[1] - current.k_range[0]) * cell, height: (current.q_range[1] - current.q_range[0]) * cell,
    class: "attnlib-tile-highlight" }, root);
  return root;
}

function render({ model, el }) {
  const steps = stepper(model, { interval: PLAY_INTERVAL_MS, count: () => model.get("steps").length });

  function draw(root, redraw) {
    const allSteps = model.get("steps");
    const last = allSteps.length - 1;
    const index = Math.min(model.get("step"), last);
    const step = allSteps[index];

    const controls = html("div", "attnlib-controls", root);
    steps.controls(controls, index, redraw);
    const counter = html("span", "attnlib-step-counter", controls,
      `step ${index + 1} of ${allSteps.length}: query block ${step.i} (rows ${step.q_range[0]}–${step.q_range[1] - 1})` +
      ` × key block ${step.j} (keys ${step.k_range[0]}–${step.k_range[1] - 1})`);
    counter.dataset.role = "counter";

    const body = html("div", "attnlib-body", root);
    const left = html("div", "attnlib-map", body);
    left.appendChild(scoreGrid(model, index));
    const legend = html("div", "attnlib-legend", left);
    for (const [colour, text] of [["#d5d5d5", "masked (−∞)"], ["#ececec", "skipped tile"], ["#fff", "not reached yet"]]) {
      const item = html("span", "attnlib-legend-item", legend);
      html("span", "attnlib-swatch", item).style.background = colour;
      item.append(text);
    }
    const panel = html("div", "attnlib-panel", body);

    const firstTile = step.m_old.every((m) => m === null);
    html("div", "attnlib-note", panel, firstTile
      ? "First key block for these rows: nothing seen yet (m = −∞, l = 0), so the rescale factor is 0."
      : "Where this tile raised a row's maximum, the old l and acc are multiplied by exp(m_old − m_new) < 1.");
    const stateRows = step.m_new.map((_, a) => {
      const raised = step.m_old[a] !== null && step.m_new[a] > step.m_old[a];
      const mark = raised ? "attnlib-changed" : "";
      return [
        `q${step.q_range[0] + a}`,
        { text: formatNumber(step.m_old[a]), className: "attnlib-m attnlib-m-old" },
        { text: formatNumber(step.m_new[a]), className: `attnlib-m attnlib-m-new ${mark}` },
        { text: formatNumber(step.rescale[a]), className: `attnlib-rescale ${mark}`,
          title: `exp(${formatNumber(step.m_old[a])} − ${formatNumber(step.m_new[a])})` },
        { text: formatNumber(step.l_old[a]), className: "attnlib-l attnlib-l-old" },
        { text: formatNumber(step.l_new[a]), className: "attnlib-l attnlib-l-new" },
      ];
    });
    table(panel, ["row", "m before", "m after", "exp(m_old − m_new)", "l before", "l after"], stateRows)
      .dataset.role = "state";
    html("div", "attnlib-note", panel, "acc after this tile (unnormalised output: acc · rescale + exp(s − m_new) v):");
    const accHeader = ["row", ...step.acc[0].map((_, d) => `acc[${d}]`)];
    table(panel, accHeader, step.acc.map((row, a) => [
      `q${step.q_range[0] + a}`, ...row.map((x) => ({ text: formatNumber(x), className: "attnlib-acc" })),
    ])).dataset.role = "acc";

    if (index === last) {
      const done = html("div", "attnlib-note", panel);
      done.dataset.role = "final-check";
      const maxError = model.get("max_error");
      html("span", "", done, "Every tile visited: output = acc / l, row by row. ");
      if (maxError >= 0) {
        const ok = maxError < 1e-9;
        html("span", ok ? "attnlib-ok" : "attnlib-bad", done,
          `Full softmax attention gives the same output: max |difference| = ${maxError.toExponential(1)} ` +
          (ok ? "✓" : "✗"));
      }
    }
  }

  return mount({ model, el }, "attnlib-tiles", ["steps", "step", "skipped", "n_q", "n_k", "block_q", "block_k",
    "max_error"], draw, steps.stop);
}

export default { render };
