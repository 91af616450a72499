// Exam grader: the online softmax of one row, batch by batch. A teacher keeps the best mark so far (m) and the
// running total l of exp(mark − m) on a sticky note; when a batch beats the best mark, the old total is
// corrected by one rescale factor, exp(m_old − m_new). The notes were computed by attnlib in Python.

import { formatNumber, html, mount, stepper, svg, table } from "./_shared.js";

const PLAY_INTERVAL_MS = 1200;
const format = (x) => formatNumber(x, 3); // l and the factors span many decades here: one more digit

// A mark in the reader's units (m is kept as mark / temperature).
function formatMark(x, temperature) {
  if (x === null) return "−∞";
  const mark = x * temperature;
  return Number.isInteger(Math.round(mark * 1e9) / 1e9) ? String(Math.round(mark)) : mark.toFixed(2);
}

// One bar per paper, grouped by batch: graded batches in colour, the current one outlined, the rest grey.
function papers(marks, batches, index) {
  const bar = 14;
  const gap = 10;
  const height = 90;
  const top = 16;
  const highest = Math.max(...marks);
  const lowest = Math.min(0, ...marks);
  const width = marks.length * bar + (batches.length - 1) * gap + 2;
  const root = svg("svg", { width, height: top + height + 18, class: "attnlib-papers", role: "img",
    "aria-label": "exam marks, batch by batch" });
  root.dataset.role = "papers";
  batches.forEach((batch, b) => {
    const x0 = batch.start * bar + b * gap;
    for (let p = batch.start; p < batch.end; p++) {
      const x = x0 + (p - batch.start) * bar;
      const h = Math.max(1, ((marks[p] - lowest) / (highest - lowest || 1)) * height);
      const state = b < index ? "graded" : b === index ? "current" : "waiting";
      const fill = { graded: "#3b528b", current: "#21918c", waiting: "#cfcfcf" }[state];
      const isBest = marks[p] === batch.batch_best && state !== "waiting";
      const rect = svg("rect", { x: x + 1, y: top + height - h, width: bar - 2, height: h, fill }, root);
      svg("title", {}, rect).textContent = `paper ${p + 1}: ${marks[p]}`;
      if (isBest || marks.length <= 30) {
        svg("text", { x: x + bar / 2, y: top + height - h - 3, "text-anchor": "middle", "font-size": isBest ? 10 : 8,
          "font-weight": isBest ? 700 : 400, class: "attnlib-label" }, root).textContent = String(marks[p]);
      }
    }
    svg("text", { x: x0 + ((batch.end - batch.start) * bar) / 2, y: top + height + 13, "text-anchor": "middle",
      "font-size": 11, class: "attnlib-label" }, root).textContent = `batch ${b + 1}`;
    if (b === index) {
      svg("rect", { x: x0, y: 1, width: (batch.end - batch.start) * bar, height: top + height - 1,
        class: "attnlib-tile-highlight" }, root);
    }
  });
  return root;
}

function render({ model, el }) {
  const steps = stepper(model, { interval: PLAY_INTERVAL_MS, count: () => model.get("batches").length });

  function draw(root, redraw) {
    const marks = model.get("marks");
    const batches = model.get("batches");
    const temperature = model.get("temperature");
    const last = batches.length - 1;
    const index = Math.min(model.get("step"), last);
    const batch = batches[index];

    const controls = html("div", "attnlib-controls", root);
    steps.controls(controls, index, redraw);
    html("span", "attnlib-step-counter", controls,
      `batch ${index + 1} of ${batches.length} (papers ${batch.start + 1}–${batch.end})`).dataset.role = "counter";

    const body = html("div", "attnlib-body", root);
    body.appendChild(papers(marks, batches, index));

    const temperatureText = temperature === 1 ? "" : ` / ${temperature}`;
    const note = html("div", "attnlib-note attnlib-sticky", root);
    note.dataset.role = "note";
    const line = (parent, parts) => {
      const p = html("div", "", parent);
      for (const [text, className] of parts) html("span", className || "", p, text);
      return p;
    };
    const best = (m) => formatMark(m, temperature);
    line(note, [["Best mark so far: m = ", ""], [best(batch.m_old), "attnlib-m attnlib-m-old"], [" → ", ""],
      [best(batch.m_new), "attnlib-m attnlib-m-new"], [`  (this batch's best: ${batch.batch_best})`, ""]]);
    if (batch.m_old === null) {
      line(note, [["First batch: nothing to correct yet (the running total starts at 0).", ""]]);
    } else if (batch.m_new > batch.m_old) {
      const difference = `${best(batch.m_old)} − ${best(batch.m_new)}`;
      const exponent = temperature === 1 ? difference : `(${difference})${temperatureText}`;
      line(note, [[`A new best! Every term already on the note was measured against ${best(batch.m_old)}. ` +
        `One rescale factor fixes all of them: exp(${exponent}) = `, ""], [format(batch.rescale), "attnlib-rescale attnlib-changed"],
      [" — no paper is graded again.", ""]]);
    } else {
      line(note, [["The best mark did not change, so the rescale factor is exp(0) = ", ""],
        [format(batch.rescale), "attnlib-rescale"], [".", ""]]);
    }
    line(note, [[`Running total: l = ${format(batch.l_old)} × ${format(batch.rescale)} + ` +
      `${format(batch.batch_sum)} (this batch, against ${best(batch.m_new)}) = `, ""],
    [format(batch.l_new), "attnlib-l attnlib-l-new"]]);

    const history = batches.slice(0, index + 1).map((b, k) => [String(k + 1), String(b.batch_best), best(b.m_new),
      format(b.rescale), format(b.l_new)].map((text) => ({ text, className: k === index ? "attnlib-changed" : "" })));
    table(root, ["batch", "batch best", "m after", "rescale of old l", "l after"], history);

    if (index === last) {
      const shares = model.get("shares");
      const top = shares.indexOf(Math.max(...shares));
      const done = html("div", "attnlib-note", root);
      done.dataset.role = "final-check";
      html("span", "", done, `All papers graded. Each share is exp(x − m) / l with the final note; ` +
        `the top paper (${marks[top]}) gets ${format(shares[top])}. `);
      const maxError = model.get("max_error");
      const ok = maxError < 1e-12;
      html("span", ok ? "attnlib-ok" : "attnlib-bad", done,
        `Softmax of the whole row at once gives the same shares: max |difference| = ${maxError.toExponential(1)} ` +
        (ok ? "✓" : "✗"));
    }
  }

  return mount({ model, el }, "attnlib-exams", ["marks", "batches", "step", "temperature", "shares", "max_error"],
    draw, steps.stop);
}

export default { render };
