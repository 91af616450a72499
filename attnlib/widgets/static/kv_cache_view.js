// KV cache view: greedy decoding step by step. Step 0 reads the prompt; each later step reads one new token,
// computes its key and value (one new row of the cache) and reuses every row already cached. Counters compare
// the work with the cache against re-reading the whole sequence at every step. Data computed by attnlib.

import { html, mount, stepper, svg, table, viridis } from "./_shared.js";

const PLAY_INTERVAL_MS = 1000;

const cumulative = (list, upTo) => list.slice(0, upTo + 1).reduce((a, b) => a + b, 0);

// The cache as rows of coloured cells, one row per cached position; rows computed at this step outlined.
function cacheMatrix(name, matrix, tokens, length, firstNew, cell, showLabels) {
  const columns = matrix[0].length;
  let low = Infinity;
  let high = -Infinity;
  for (const row of matrix) for (const x of row) { low = Math.min(low, x); high = Math.max(high, x); }
  const span = high > low ? high - low : 1;
  const labelWidth = showLabels ? 110 : 4;
  const top = 18;
  const root = svg("svg", { width: labelWidth + columns * cell + 4, height: top + tokens.length * cell + 4,
    class: "attnlib-cache", role: "img", "aria-label": `${name} cache` });
  root.dataset.role = `${name}-cache`;
  root.dataset.rows = length;
  svg("text", { x: labelWidth + (columns * cell) / 2, y: 12, "text-anchor": "middle", "font-size": 12,
    class: "attnlib-label" }, root).textContent = `${name} cache (${length} × ${columns})`;
  for (let t = 0; t < length; t++) {
    const y = top + t * cell;
    const isNew = t >= firstNew;
    if (showLabels) {
      svg("text", { x: labelWidth - 6, y: y + cell / 2, "text-anchor": "end", "dominant-baseline": "middle",
        "font-size": Math.min(12, cell - 1), class: isNew ? "attnlib-label attnlib-new-label" : "attnlib-label" },
      root).textContent = `${tokens[t]} · ${isNew ? "new" : "reused"}`;
    }
    for (let c = 0; c < columns; c++) {
      const rect = svg("rect", { x: labelWidth + c * cell, y, width: cell, height: cell,
        fill: viridis((matrix[t][c] - low) / span), opacity: isNew ? 1 : 0.55 }, root);
      svg("title", {}, rect).textContent = `${name}[${t}, ${c}] = ${matrix[t][c].toFixed(4)}`;
    }
  }
  if (firstNew < length) {
    svg("rect", { x: labelWidth, y: top + firstNew * cell, width: columns * cell,
      height: (length - firstNew) * cell, class: "attnlib-tile-highlight" }, root).dataset.role = "new-rows";
  }
  return root;
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
    const cell = Math.max(10, Math.min(20, Math.floor(360 / tokens.length)));
    body.appendChild(cacheMatrix("K", model.get("cache_keys"), tokens, length, firstNew, cell, true));
    body.appendChild(cacheMatrix("V", model.get("cache_values"), tokens, length, firstNew, cell, false));
    const weights = model.get("weights");
    if (weights.length) {
      // Where the newest query looks: one bar per cached key, aligned with the cache rows.
      const row = weights[step];
      const width = 120;
      const top = 18;
      const picture = svg("svg", { width: width + 50, height: top + tokens.length * cell + 4, role: "img",
        "aria-label": "attention of the newest query over the cache" }, body);
      picture.dataset.role = "attention";
      svg("text", { x: 0, y: 12, "font-size": 12, class: "attnlib-label" }, picture).textContent =
        `“${tokens[length - 1]}” attends to`;
      row.forEach((w, t) => {
        const bar = svg("rect", { x: 0, y: top + t * cell + 1, width: Math.max(1, w * width), height: cell - 2,
          fill: "#21918c" }, picture);
        svg("title", {}, bar).textContent = `${tokens[t]}: ${w.toFixed(4)}`;
        svg("text", { x: Math.max(1, w * width) + 4, y: top + (t + 0.5) * cell, "dominant-baseline": "middle",
          "font-size": Math.min(11, cell - 2), class: "attnlib-label" }, picture).textContent = w.toFixed(2);
      });
    }

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
