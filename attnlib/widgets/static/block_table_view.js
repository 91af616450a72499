// Block table view: continuous batching over a paged KV cache, one serving step at a time. Each running sequence's
// block table maps its logical blocks to physical blocks of one shared pool; the pool is coloured by the sequence
// that owns each block. Blocks taken, freed and reused in the step are marked, and the utilisation (positions
// stored / positions in allocated blocks) is shown beside it. Data replayed by attnlib from a real serving run.

import { html, mount, stepper, svg, textColourOn, viridis } from "./_shared.js";

const PLAY_INTERVAL_MS = 900;
const CELL = 24; // one block, in the tables and in the pool
const POOL_COLUMNS = 12;
const FREE = "#e4e4e4";

function colourOf(request, nRequests) {
  const t = nRequests > 1 ? 0.1 + (0.85 * request) / (nRequests - 1) : 0.5;
  return { fill: viridis(t), text: textColourOn(t) };
}

// One row per sequence that advanced in this step: logical block i -> the physical block it lives in.
function blockTables(entry, nRequests, blockSize) {
  const label = 92;
  const widest = Math.max(1, ...entry.tables.map((table) => table.length));
  const top = 18;
  const root = svg("svg", { width: Math.max(label + widest * CELL + 4, 220), // room for the heading
    height: top + entry.running.length * (CELL + 4) + 4,
    role: "img", "aria-label": "block tables of the running sequences" });
  root.dataset.role = "tables";
  svg("text", { x: 0, y: 12, "font-size": 12, class: "attnlib-label" }, root).textContent =
    "block tables (logical → physical)";
  entry.running.forEach((request, row) => {
    const y = top + row * (CELL + 4);
    const done = entry.finished.includes(request);
    svg("text", { x: label - 6, y: y + CELL / 2, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": 11, class: "attnlib-label" }, root).textContent =
      `seq ${request}: ${entry.lengths[row]}${done ? " ✓" : ""}`;
    const { fill, text } = colourOf(request, nRequests);
    entry.tables[row].forEach((block, logical) => {
      const group = svg("g", {}, root);
      group.dataset.request = request;
      group.dataset.logical = logical;
      group.dataset.physical = block;
      const filled = Math.min(blockSize, entry.lengths[row] - logical * blockSize);
      svg("rect", { x: label + logical * CELL, y, width: CELL - 2, height: CELL, fill,
        opacity: done ? 0.45 : 1 }, group);
      svg("text", { x: label + logical * CELL + (CELL - 2) / 2, y: y + CELL / 2, "text-anchor": "middle",
        "dominant-baseline": "middle", "font-size": 11, fill: text }, group).textContent = String(block);
      svg("title", {}, group).textContent = `sequence ${request}, logical block ${logical} → physical block ` +
        `${block} (${filled} of ${blockSize} positions filled)${done ? "; finished, freed after this step" : ""}`;
    });
  });
  return root;
}

// The physical pool after the step: owner's colour, or grey when free; marks for taken, freed and reused blocks.
function pool(entry, nBlocks, nRequests) {
  const rows = Math.ceil(nBlocks / POOL_COLUMNS);
  const top = 18;
  const root = svg("svg", { width: POOL_COLUMNS * CELL + 4, height: top + rows * CELL + 4, role: "img",
    "aria-label": "the pool of physical blocks" });
  root.dataset.role = "pool";
  svg("text", { x: 0, y: 12, "font-size": 12, class: "attnlib-label" }, root).textContent =
    `pool: ${nBlocks} physical blocks`;
  for (let block = 0; block < nBlocks; block++) {
    const owner = entry.owner[block];
    const x = (block % POOL_COLUMNS) * CELL;
    const y = top + Math.floor(block / POOL_COLUMNS) * CELL;
    const { fill, text } = owner >= 0 ? colourOf(owner, nRequests) : { fill: FREE, text: "#555" };
    const taken = entry.taken.includes(block);
    const freed = entry.freed.includes(block);
    const reused = entry.reused.includes(block);
    const cell = svg("rect", { x: x + 1, y: y + 1, width: CELL - 2, height: CELL - 2, fill,
      stroke: taken ? "#d62728" : freed ? "#555" : "none", "stroke-width": taken || freed ? 2 : 0,
      "stroke-dasharray": freed && !taken ? "3 2" : "none" }, root);
    cell.dataset.block = block;
    cell.dataset.owner = owner;
    svg("text", { x: x + CELL / 2, y: y + CELL / 2 + 1, "text-anchor": "middle", "dominant-baseline": "middle",
      "font-size": 10, fill: text }, root).textContent = reused ? `${block}↺` : String(block);
    const what = owner >= 0 ? `held by sequence ${owner}` : "free";
    const marks = [taken && "taken in this step", reused && "reused: an earlier sequence held it",
      freed && "freed in this step"].filter(Boolean);
    svg("title", {}, cell).textContent = `block ${block}: ${what}${marks.length ? `; ${marks.join("; ")}` : ""}`;
  }
  return root;
}

function render({ model, el }) {
  const steps = stepper(model, { interval: PLAY_INTERVAL_MS, count: () => model.get("steps").length });

  function draw(root, redraw) {
    const all = model.get("steps");
    const step = Math.min(model.get("step"), all.length - 1);
    const entry = all[step];
    const nBlocks = model.get("n_blocks");
    const blockSize = model.get("block_size");
    const nRequests = model.get("n_requests");

    const controls = html("div", "attnlib-controls", root);
    steps.controls(controls, step, redraw);
    const joined = entry.running.filter((r) => step === 0 || !all[step - 1].running.includes(r)).length;
    html("span", "attnlib-step-counter", controls,
      `step ${step} of ${all.length - 1}: ${entry.running.length} running, ${joined} joined, ` +
      `${entry.finished.length} finished`).dataset.role = "counter";

    const body = html("div", "attnlib-body", root);
    body.appendChild(blockTables(entry, nRequests, blockSize));
    body.appendChild(pool(entry, nBlocks, nRequests));

    const inUse = entry.owner.filter((owner) => owner >= 0).length;
    const allocated = inUse * blockSize;
    const readout = html("div", "attnlib-readout", root);
    readout.dataset.role = "utilisation";
    const bar = svg("svg", { width: 200, height: 14, role: "img", "aria-label": "utilisation" }, readout);
    svg("rect", { x: 0, y: 1, width: 200, height: 12, fill: FREE }, bar);
    svg("rect", { x: 0, y: 1, width: 200 * entry.utilisation, height: 12, fill: viridis(0.6) }, bar);
    html("span", "", readout,
      ` utilisation ${(100 * entry.utilisation).toFixed(1)}%: ${entry.stored} positions stored in ${inUse} ` +
      `blocks (${allocated} positions). Reserving each running sequence's whole length would set aside ` +
      `${entry.reserved}.`).dataset.role = "utilisation-text";
    html("div", "attnlib-note", root,
      `Red outline: taken in this step; dashed: freed (its sequence finished); ↺: reused, held earlier by a ` +
      `finished sequence. "seq 2: 6" = sequence 2 stores 6 positions; ✓ = it finished in this step. ` +
      `A block holds ${blockSize} positions, so each sequence leaves at most ${blockSize - 1} empty.`);
  }

  return mount({ model, el }, "attnlib-block-table", ["steps", "n_blocks", "block_size", "n_requests", "step"],
    draw, steps.stop);
}

export default { render };
