// Ring attention, step by step. P ranks sit on a ring; each holds the queries of its own chunks of the sequence.
// At every step each rank attends its queries to the key/value shard it holds, merges the result into its running
// state, and passes the shard on to the next rank. The grid shows which (query chunk, key chunk) pairs have been
// computed, by which rank; the cards show each rank's m and l per query row. Data computed by attnlib.

import { formatNumber, html, mount, stepper, svg, table } from "./_shared.js";

const PLAY_INTERVAL_MS = 1400;
// Okabe-Ito colours: told apart by most colour-blind readers.
const RANK_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#555555"];
const colour = (rank) => RANK_COLOURS[rank % RANK_COLOURS.length];

const chunkRange = (chunk, size) => `${chunk * size}–${(chunk + 1) * size - 1}`;

// The ranks around a circle, each with its query chunks and the key/value shard it holds at this step.
function ring(holds, ranks, worldSize) {
  const size = 330;
  const centre = size / 2;
  const radius = worldSize === 1 ? 0 : 108;
  const boxWidth = 124;
  const boxHeight = 50;
  const root = svg("svg", { width: size, height: size, role: "img", "aria-label": "the ranks on a ring" });
  root.dataset.role = "ring";
  const defs = svg("defs", {}, root);
  const marker = svg("marker", { id: "attnlib-ring-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
  svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#666" }, marker);
  const place = (r) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * r) / worldSize;
    return [centre + radius * Math.cos(angle), centre + radius * Math.sin(angle)];
  };
  if (worldSize > 1) {
    for (let r = 0; r < worldSize; r++) {
      // An arc from rank r to rank r + 1, drawn between the boxes: the direction the shards travel.
      const [x1, y1] = place(r);
      const [x2, y2] = place((r + 1) % worldSize);
      const shrink = (a, b, t) => a + (b - a) * t;
      const t = worldSize === 2 ? 0.3 : 0.32;
      const bend = worldSize === 2 ? (r === 0 ? 60 : -60) : 0;
      svg("path", { d: `M ${shrink(x1, x2, t) + bend} ${shrink(y1, y2, t)} L ${shrink(x1, x2, 1 - t) + bend} ` +
        `${shrink(y1, y2, 1 - t)}`, stroke: "#666", "stroke-width": 1.5, fill: "none",
      "marker-end": "url(#attnlib-ring-arrow)" }, root);
    }
  }
  for (let r = 0; r < worldSize; r++) {
    const [x, y] = place(r);
    const group = svg("g", {}, root);
    group.dataset.rank = r;
    svg("rect", { x: x - boxWidth / 2, y: y - boxHeight / 2, width: boxWidth, height: boxHeight, rx: 6,
      fill: "#fff", stroke: colour(r), "stroke-width": 2.5 }, group);
    svg("text", { x, y: y - 10, "text-anchor": "middle", "font-size": 12, "font-weight": 600,
      fill: colour(r) }, group).textContent = `rank ${r}`;
    svg("text", { x, y: y + 5, "text-anchor": "middle", "font-size": 11, class: "attnlib-label" },
      group).textContent = `Q: chunk${holds[r].length > 1 ? "s" : ""} ${holds[r].join(", ")}`;
    const held = svg("text", { x, y: y + 19, "text-anchor": "middle", "font-size": 11, "font-weight": 600,
      fill: colour(ranks[r].source) }, group);
    held.textContent = `K/V: ${ranks[r].key_chunks.join(", ")} (rank ${ranks[r].source})`;
    held.dataset.role = "holds";
  }
  return root;
}

// Every (query chunk, key chunk) pair of the sequence: filled in the colour of the rank that computed it (solid at
// this step, faded before), a triangle where only the causal part is visible, empty where nothing was computed.
function pairGrid(steps, step, holds, worldSize, causal) {
  const nChunks = holds.flat().length;
  const cell = Math.max(14, Math.min(28, Math.floor(224 / nChunks)));
  const left = 44;
  const top = 40;
  const root = svg("svg", { width: left + nChunks * cell + 8, height: top + nChunks * cell + 8, role: "img",
    "aria-label": "which chunk pairs have been computed" });
  root.dataset.role = "pairs";
  svg("text", { x: left + (nChunks * cell) / 2, y: 12, "text-anchor": "middle", "font-size": 12,
    class: "attnlib-axis-title" }, root).textContent = "key chunk";
  svg("text", { x: 10, y: top + (nChunks * cell) / 2, "text-anchor": "middle", "font-size": 12,
    class: "attnlib-axis-title", transform: `rotate(-90 10 ${top + (nChunks * cell) / 2})` },
  root).textContent = "query chunk";
  for (let c = 0; c < nChunks; c++) {
    svg("text", { x: left + (c + 0.5) * cell, y: top - 6, "text-anchor": "middle", "font-size": 10,
      class: "attnlib-label" }, root).textContent = String(c);
    svg("text", { x: left - 5, y: top + (c + 0.5) * cell, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": 10, class: "attnlib-label" }, root).textContent = String(c);
  }
  for (let i = 0; i < nChunks; i++) {
    for (let j = 0; j < nChunks; j++) {
      svg("rect", { x: left + j * cell, y: top + i * cell, width: cell, height: cell, fill: "#fff",
        class: "attnlib-grid" }, root);
    }
  }
  let computed = 0;
  for (let s = 0; s <= step; s++) {
    steps[s].forEach((rank, r) => {
      for (const [qChunk, kChunk, kind] of rank.pairs) {
        if (kind === "skipped") continue;
        const x = left + kChunk * cell;
        const y = top + qChunk * cell;
        const current = s === step;
        const shape = kind === "diagonal"
          ? svg("polygon", { points: `${x},${y} ${x + cell},${y + cell} ${x},${y + cell}` }, root)
          : svg("rect", { x, y, width: cell, height: cell }, root);
        shape.setAttribute("fill", colour(r));
        shape.setAttribute("opacity", current ? 1 : 0.35);
        shape.setAttribute("stroke", "#fff"); // keeps neighbouring pairs of one rank apart
        shape.dataset.pair = `${qChunk},${kChunk}`;
        shape.dataset.current = String(current);
        svg("title", {}, shape).textContent = `query chunk ${qChunk} × key chunk ${kChunk}: rank ${r} at step ${s}` +
          (kind === "diagonal" ? " (causal: the lower triangle only)" : "");
        computed += 1;
      }
    });
  }
  root.dataset.computed = computed;
  if (causal) {
    svg("text", { x: left + nChunks * cell - 2, y: top + 12, "text-anchor": "end", "font-size": 10,
      class: "attnlib-axis-title" }, root).textContent = "future: skipped";
  }
  return root;
}

function rankCard(parent, r, rank, holds, chunk, work, totalWork, gap, last) {
  const card = html("div", "attnlib-panel attnlib-sticky", parent);
  card.dataset.role = "rank";
  card.dataset.rank = r;
  card.style.borderColor = colour(r);
  card.style.background = "#fff";
  card.style.flex = "0 0 auto"; // cards sit side by side and wrap, each as wide as its table
  const heading = html("div", "", card);
  html("span", "", heading, `rank ${r}`).style.cssText = `color: ${colour(r)}; font-weight: 600`;
  html("span", "", heading, ` · queries ${holds[r].map((c) => chunkRange(c, chunk)).join(", ")}`);
  const positions = holds[r].flatMap((c) => Array.from({ length: chunk }, (_, i) => c * chunk + i));
  const rows = positions.map((position, i) => [
    String(position), formatNumber(rank.m[i]), formatNumber(rank.l[i]),
    { text: formatNumber(rank.running_m[i]), className: "attnlib-changed" },
    { text: formatNumber(rank.running_l[i]), className: "attnlib-changed" },
  ]);
  const state = table(card, ["query", "m (step)", "l (step)", "m merged", "l merged"], rows);
  state.dataset.role = "state";
  state.style.width = "auto"; // the book's theme stretches tables to the column
  html("div", "", card, `score entries this step: ${work} (so far ${totalWork})`).dataset.role = "work";
  const gapLine = html("div", "", card, `max |output − final| = ${formatNumber(gap)}`);
  gapLine.dataset.role = "gap";
  if (last) gapLine.className = gap === 0 ? "attnlib-ok" : "attnlib-bad";
}

function render({ model, el }) {
  const steps = stepper(model, { interval: PLAY_INTERVAL_MS, count: () => model.get("steps").length });

  function draw(root, redraw) {
    const recorded = model.get("steps");
    const worldSize = model.get("world_size");
    const holds = model.get("holds");
    const chunk = model.get("chunk");
    const causal = model.get("causal");
    const step = Math.min(model.get("step"), recorded.length - 1);
    const last = step === recorded.length - 1;
    const ranks = recorded[step];

    const controls = html("div", "attnlib-controls", root);
    steps.controls(controls, step, redraw);
    html("span", "attnlib-step-counter", controls, `step ${step} of ${recorded.length - 1}: rank r holds the ` +
      `keys and values of rank (r − ${step}) mod ${worldSize}`).dataset.role = "counter";

    const body = html("div", "attnlib-body", root);
    body.appendChild(ring(holds, ranks, worldSize));
    body.appendChild(pairGrid(recorded, step, holds, worldSize, causal));

    const cards = html("div", "attnlib-multiples", root);
    const totals = Array.from({ length: worldSize }, (_, r) =>
      recorded.slice(0, step + 1).reduce((sum, stepRanks) => sum + stepRanks[r].work, 0));
    ranks.forEach((rank, r) => rankCard(cards, r, rank, holds, chunk, rank.work, totals[r], rank.output_gap, last));

    const balance = Math.max(...totals) / Math.max(1, Math.min(...totals));
    const note = html("div", "attnlib-note", root,
      `${model.get("shard_layout")} layout, ${causal ? "causal" : "bidirectional"}, n = ${model.get("n")}: ` +
      `work so far, largest rank over smallest: ${balance.toFixed(2)}. `);
    note.dataset.role = "note";
    if (last) {
      const error = model.get("max_abs_error");
      html("span", error < 1e-12 ? "attnlib-ok" : "attnlib-bad", note,
        `Every rank has now seen every key: gathered output vs attention on the whole sequence, ` +
        `max |difference| = ${error.toExponential(1)} ${error < 1e-12 ? "✓" : "✗"}`);
    } else {
      html("span", "", note, "The merged m and l change only where this step's keys brought a larger score or " +
        "more weight; “m (step)” is −∞ where every key of this step lies in the row's future.");
    }
  }

  return mount({ model, el }, "attnlib-ring", ["steps", "step", "holds", "world_size", "causal", "shard_layout",
    "max_abs_error"], draw, steps.stop);
}

export default { render };
