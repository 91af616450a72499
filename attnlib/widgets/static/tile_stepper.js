// FlashAttention tile stepper: the score matrix is filled one (query block, key block) tile at a time, and each
// query row keeps only its running maximum m, running sum l and unnormalised output acc. Every step was
// recorded by attnlib.numpy.flash_attention in Python; this file shows them one by one.

import { formatNumber, html, mount, stepper, svg, table, VIRIDIS, viridis } from "./_shared.js";

const PLAY_INTERVAL_MS = 900;

// Three kinds of cell without a score colour, told apart at a glance (and in grey): a masked score is a solid
// mid grey, a skipped tile is hatched, a tile not reached yet is white.
const MASKED = "#8f8f8f";
const NOT_REACHED = "#fff";
const HATCH_CSS = "repeating-linear-gradient(45deg, #fff 0 3px, #b5b5b5 3px 4px)";

// The score range over the whole run, so a cell keeps its colour from step to step.
function scoreRange(steps) {
  let low = Infinity;
  let high = -Infinity;
  for (const step of steps) for (const row of step.scores) for (const s of row) {
    if (s !== null) { low = Math.min(low, s); high = Math.max(high, s); }
  }
  return high > low ? { low, high } : { low, high: low + 1 };
}

// A horizontal colour scale under the grid: what a cell's colour says about its score.
function scoreScale({ low, high }, width) {
  const root = svg("svg", { width: width + 40, height: 34, class: "attnlib-colorbar", role: "img",
    "aria-label": `score colours, from ${low.toFixed(2)} to ${high.toFixed(2)}` });
  root.dataset.role = "score-scale";
  const gradient = svg("linearGradient", { id: `attnlib-scores-${Math.random().toString(36).slice(2)}`,
    x1: 0, y1: 0, x2: 1, y2: 0 }, svg("defs", {}, root));
  VIRIDIS.forEach((colour, k) => {
    svg("stop", { offset: k / (VIRIDIS.length - 1), "stop-color": colour }, gradient);
  });
  svg("rect", { x: 20, y: 2, width, height: 10, fill: `url(#${gradient.id})`, class: "attnlib-frame" }, root);
  for (const fraction of [0, 0.5, 1]) {
    const x = 20 + width * fraction;
    svg("line", { x1: x, x2: x, y1: 12, y2: 16, class: "attnlib-tick" }, root);
    svg("text", { x, y: 27, "text-anchor": "middle", "font-size": 10, class: "attnlib-label" }, root)
      .textContent = (low + (high - low) * fraction).toFixed(2);
  }
  return root;
}

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

  const { low, high } = scoreRange(steps);
  const span = high - low;
  const hatch = svg("pattern", { id: `attnlib-hatch-${Math.random().toString(36).slice(2)}`,
    patternUnits: "userSpaceOnUse", width: 4, height: 4, patternTransform: "rotate(45)" }, svg("defs", {}, root));
  svg("rect", { width: 4, height: 4, fill: "#fff" }, hatch);
  svg("line", { x1: 0, y1: 0, x2: 0, y2: 4, stroke: "#b5b5b5", "stroke-width": 1.5 }, hatch);

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
      svg("rect", { x: margin + c * cell, y: margin + r * cell, width: cell, height: cell, fill: NOT_REACHED,
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
        paint(r, c, `url(#${hatch.id})`, "skipped: every score in this tile is masked (causal), so it is never computed");
      }
    }
  }
  for (let s = 0; s <= upTo; s++) {
    const step = steps[s];
    step.scores.forEach((row, a) => row.forEach((score, b) => {
      const r = step.q_range[0] + a;
      const c = step.k_range[0] + b;
      if (score === null) paint(r, c, MASKED, `q${r}·k${c}: masked (−∞)`);
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
    left.appendChild(scoreScale(scoreRange(allSteps), 160));
    const legend = html("div", "attnlib-legend", left);
    legend.dataset.role = "legend";
    for (const [background, text] of [[MASKED, "masked score (−∞)"], [HATCH_CSS, "skipped tile"],
      [NOT_REACHED, "not reached yet"]]) {
      const item = html("span", "attnlib-legend-item", legend);
      html("span", "attnlib-swatch", item).style.background = background;
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
    // acc before this tile: what the previous tile of the same query block left (zeros before its first tile).
    let before = null;
    for (let s = index - 1; s >= 0 && before === null; s--) if (allSteps[s].i === step.i) before = allSteps[s].acc;
    before ??= step.acc.map((row) => row.map(() => 0));
    html("div", "attnlib-note", panel,
      "acc before and after this tile (unnormalised output): after = before × exp(m_old − m_new) + Σ exp(s − m_new) v");
    const accHeader = ["row", "", ...step.acc[0].map((_, d) => `acc[${d}]`)];
    const accRows = [];
    step.acc.forEach((row, a) => {
      const name = `q${step.q_range[0] + a}`;
      accRows.push([name, "before", ...before[a].map((x) => ({ text: formatNumber(x), className: "attnlib-acc-old" }))]);
      accRows.push(["", "after", ...row.map((x) => ({ text: formatNumber(x), className: "attnlib-acc" }))]);
    });
    table(panel, accHeader, accRows).dataset.role = "acc";

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
