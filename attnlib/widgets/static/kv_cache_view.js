// KV cache view: greedy decoding step by step. Step 0 reads the prompt; each later step reads one new token,
// computes its key and value (one new row of the cache) and reuses every row already cached. Counters compare
// the work with the cache against re-reading the whole sequence at every step. Data computed by attnlib.

import { html, mount, stepper, svg, table, viridis } from "./_shared.js";

const PLAY_INTERVAL_MS = 1000;

const cumulative = (list, upTo) => list.slice(0, upTo + 1).reduce((a, b) => a + b, 0);

// Room for the whole row of drawings (K cache, V cache, attention bars): the content column of the book is about
// 680 px wide at a laptop's window, so the three sit side by side there and the bars line up with the cache rows.
const ROW_BUDGET = 640;
const GAP = 16; // .attnlib-body's gap between drawings
const TOP = 18; // room for each drawing's heading; every drawing starts its rows here so the rows line up
const BAR_LENGTH = 96; // a weight of 1

const textWidth = (text, fontSize) => Math.ceil(text.length * fontSize * 0.6);

// The cache as rows of coloured cells, one row per cached position; rows computed at this step outlined.
// Rows are `row` px high (shared with the bars), columns `column` px wide (narrower when d_head is large).
function cacheMatrix(name, matrix, tokens, length, firstNew, { row, column, labelWidth }) {
  const columns = matrix[0].length;
  let low = Infinity;
  let high = -Infinity;
  for (const values of matrix) for (const x of values) { low = Math.min(low, x); high = Math.max(high, x); }
  const span = high > low ? high - low : 1;
  const showLabels = labelWidth > 0;
  const left = showLabels ? labelWidth : 2;
  const heading = `${name} cache (${length} × ${columns})`;
  const root = svg("svg", { width: Math.max(left + columns * column + 4, textWidth(heading, 12)),
    height: TOP + tokens.length * row + 4, class: "attnlib-cache", role: "img", "aria-label": `${name} cache` });
  root.dataset.role = `${name}-cache`;
  root.dataset.rows = length;
  svg("text", { x: left, y: 12, "font-size": 12, class: "attnlib-label" }, root).textContent = heading;
  for (let t = 0; t < length; t++) {
    const y = TOP + t * row;
    const isNew = t >= firstNew;
    if (showLabels) {
      svg("text", { x: left - 6, y: y + row / 2, "text-anchor": "end", "dominant-baseline": "middle",
        "font-size": Math.min(12, row - 1), class: isNew ? "attnlib-label attnlib-new-label" : "attnlib-label",
        "data-row": t }, root).textContent = `${tokens[t]} · ${isNew ? "new" : "reused"}`;
    }
    for (let c = 0; c < columns; c++) {
      const rect = svg("rect", { x: left + c * column, y, width: column, height: row,
        fill: viridis((matrix[t][c] - low) / span), opacity: isNew ? 1 : 0.55 }, root);
      svg("title", {}, rect).textContent = `${name}[${t}, ${c}] = ${matrix[t][c].toFixed(4)}`;
    }
  }
  if (firstNew < length) {
    svg("rect", { x: left, y: TOP + firstNew * row, width: columns * column,
      height: (length - firstNew) * row, class: "attnlib-tile-highlight" }, root).dataset.role = "new-rows";
  }
  return root;
}

// Where the newest query looks: one bar per cached key, on the same rows as the cache, each named by its token.
function attentionBars(weights, tokens, length, row) {
  const fontSize = Math.min(11, row - 2);
  const labelWidth = Math.max(...tokens.map((token) => textWidth(token, fontSize))) + 8;
  const heading = `“${tokens[length - 1]}” attends to`;
  const picture = svg("svg", { width: Math.max(labelWidth + BAR_LENGTH + 36, textWidth(heading, 12)),
    height: TOP + tokens.length * row + 4, role: "img", "aria-label": "attention of the newest query over the cache" });
  picture.dataset.role = "attention";
  svg("text", { x: 0, y: 12, "font-size": 12, class: "attnlib-label" }, picture).textContent = heading;
  weights.forEach((w, t) => {
    const middle = TOP + (t + 0.5) * row;
    svg("text", { x: labelWidth - 6, y: middle, "text-anchor": "end", "dominant-baseline": "middle",
      "font-size": fontSize, class: "attnlib-label", "data-row": t }, picture).textContent = tokens[t];
    const bar = svg("rect", { x: labelWidth, y: TOP + t * row + 1, width: Math.max(1, w * BAR_LENGTH),
      height: row - 2, fill: "#21918c", "data-weight": w }, picture);
    svg("title", {}, bar).textContent = `${tokens[t]}: ${w.toFixed(4)}`;
    svg("text", { x: labelWidth + Math.max(1, w * BAR_LENGTH) + 4, y: middle, "dominant-baseline": "middle",
      "font-size": fontSize, class: "attnlib-label" }, picture).textContent = w.toFixed(2);
  });
  return picture;
}

// Row height and column width so that the K cache (with its row labels), the V cache and the bars fit the row.
function layout(tokens, columns, withBars) {
  const row = Math.max(10, Math.min(20, Math.floor(360 / tokens.length)));
  const fontSize = Math.min(12, row - 1);
  const labelWidth = Math.max(...tokens.map((token) => textWidth(`${token} · reused`, fontSize))) + 8;
  const barsWidth = withBars
    ? Math.max(...tokens.map((token) => textWidth(token, Math.min(11, row - 2)))) + 8 + BAR_LENGTH + 36 + GAP
    : 0;
  const room = ROW_BUDGET - labelWidth - barsWidth - GAP - 12;
  const column = Math.max(3, Math.min(row, Math.floor(room / (2 * columns))));
  return { row, column, labelWidth };
}

function render({ model, el }) {
  // Step 0 reads the prompt; then one step per generated token.
  const steps = stepper(model, { interval: PLAY_INTERVAL_MS,
    count: () => model.get("tokens").length - model.get("n_prompt") + 1 });

  function draw(root, redraw) {
    const tokens = model.get("tokens");
    const nPrompt = model.get("n_prompt");
    const last = tokens.length - nPrompt;
    const step = Math.min(model.get("step"), last);
    const length = nPrompt + step; // positions cached after this step
    const firstNew = step === 0 ? 0 : length - 1;

    const controls = html("div", "attnlib-controls", root);
    steps.controls(controls, step, redraw);
    html("span", "attnlib-step-counter", controls, step === 0
      ? `step 0 of ${last}: read the prompt (${nPrompt} tokens at once)`
      : `step ${step} of ${last}: read “${tokens[length - 1]}”, the token chosen at the previous step`,
    ).dataset.role = "counter";

    // The text so far: prompt, generated tokens, and the next token once this step has chosen it.
    const strip = html("div", "attnlib-readout", root);
    strip.dataset.role = "tokens";
    tokens.forEach((token, t) => {
      if (t > length) return;
      const kind = t < nPrompt ? "prompt" : t < length ? "generated" : "chosen";
      const chip = html("span", `attnlib-token attnlib-token-${kind}`, strip, token);
      chip.title = { prompt: "prompt", generated: "generated earlier, now in the cache",
        chosen: "chosen by this step (greedy), read at the next step" }[kind];
    });

    const body = html("div", "attnlib-body", root);
    const weights = model.get("weights");
    const keys = model.get("cache_keys");
    const sizes = layout(tokens, keys[0].length, weights.length > 0);
    body.appendChild(cacheMatrix("K", keys, tokens, length, firstNew, sizes));
    body.appendChild(cacheMatrix("V", model.get("cache_values"), tokens, length, firstNew,
      { ...sizes, labelWidth: 0 }));
    if (weights.length) body.appendChild(attentionBars(weights[step], tokens, length, sizes.row));

    // The work counters, cumulative up to this step.
    const work = model.get("work");
    const rows = [["with the cache", "with_cache"], ["without (re-read everything)", "without_cache"]].map(
      ([label, key]) => [label,
        { text: String(cumulative(work[key].kv_rows, step)), className: `attnlib-work-rows-${key}` },
        { text: String(cumulative(work[key].scores, step)), className: `attnlib-work-scores-${key}` }]);
    table(root, ["so far", "key/value rows computed", "attention scores computed"], rows).dataset.role = "work";
    const saved = cumulative(work.without_cache.kv_rows, step) / cumulative(work.with_cache.kv_rows, step);
    const note = html("div", "attnlib-note", root,
      `Without the cache, this decoding would have computed ${saved.toFixed(2)}× as many key/value rows so far: ` +
      "the keys and values of earlier tokens never change, so recomputing them is wasted work.");
    const gap = model.get("logit_gap");
    if (gap >= 0 && step === last) {
      html("span", gap < 1e-4 ? "attnlib-ok" : "attnlib-bad", note,
        ` Same predictions either way: max |logit difference| = ${gap.toExponential(1)} ${gap < 1e-4 ? "✓" : "✗"}`);
    }
  }

  return mount({ model, el }, "attnlib-kv", ["tokens", "n_prompt", "cache_keys", "cache_values", "weights", "work",
    "step", "logit_gap"], draw, steps.stop);
}

export default { render };
