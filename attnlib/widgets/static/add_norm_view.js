// Add & Norm view: one stack of blocks, four wirings (residual on/off x post-LN/pre-LN). For each depth, the
// size of the activations and of the gradient flowing back to them, measured by attnlib in Python, drawn on
// log scales. The wiring shown is drawn boldly; the other three stay in grey for comparison.

import { html, mount, share, svg, toggle } from "./_shared.js";

const COLOURS = { activation_scale: "#3b528b", gradient_norm: "#21918c" };

const wiringName = (p) => `residual ${p.residual ? "on" : "off"}, ${p.norm_first ? "pre-LN" : "post-LN"}`;

function formatValue(x) {
  if (x === 0) return "0";
  return Math.abs(x) >= 1e3 || Math.abs(x) < 1e-2 ? x.toExponential(1) : x.toPrecision(3);
}

// A log-scale line chart of one quantity against depth; `shown` is drawn boldly, `others` in grey.
function chart(key, heading, shown, others) {
  const width = 330;
  const height = 210;
  const left = 52;
  const right = 10;
  const top = 24;
  const bottom = 34;
  const all = [shown, ...others].flatMap((p) => p[key]).filter((v) => v > 0);
  let low = Math.floor(Math.log10(Math.min(...all)));
  let high = Math.ceil(Math.log10(Math.max(...all)));
  if (high === low) { low -= 1; high += 1; }
  const depths = shown[key].length;
  const x = (d) => left + (d / (depths - 1)) * (width - left - right);
  const y = (v) => top + (1 - (Math.log10(Math.max(v, 10 ** low)) - low) / (high - low)) * (height - top - bottom);
  const root = svg("svg", { width, height, class: "attnlib-chart", role: "img", "aria-label": heading });
  root.dataset.role = `chart-${key}`;
  svg("text", { x: left, y: 14, "font-size": 12, "font-weight": 600, class: "attnlib-label" }, root)
    .textContent = heading;
  const step = Math.max(1, Math.ceil((high - low) / 6));
  for (let e = low; e <= high; e += step) {
    svg("line", { x1: left, x2: width - right, y1: y(10 ** e), y2: y(10 ** e), class: "attnlib-grid" }, root);
    svg("text", { x: left - 4, y: y(10 ** e), "text-anchor": "end", "dominant-baseline": "middle", "font-size": 10,
      class: "attnlib-label" }, root).textContent = `1e${e}`;
  }
  const tickEvery = Math.max(1, Math.ceil((depths - 1) / 8));
  for (let d = 0; d < depths; d += tickEvery) {
    svg("text", { x: x(d), y: height - bottom + 14, "text-anchor": "middle", "font-size": 10,
      class: "attnlib-label" }, root).textContent = String(d);
  }
  svg("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle", "font-size": 11,
    class: "attnlib-label" }, root).textContent = "depth (0 = input, then after each block)";
  const path = (values) => values.map((v, d) => `${d === 0 ? "M" : "L"}${x(d).toFixed(1)},${y(v).toFixed(1)}`).join("");
  for (const other of others) {
    const line = svg("path", { d: path(other[key]), fill: "none", stroke: "#bdbdbd", "stroke-width": 1.2 }, root);
    svg("title", {}, line).textContent = wiringName(other);
  }
  const line = svg("path", { d: path(shown[key]), fill: "none", stroke: COLOURS[key], "stroke-width": 2.5 }, root);
  line.dataset.role = "shown";
  shown[key].forEach((v, d) => {
    const dot = svg("circle", { cx: x(d), cy: y(v), r: 3, fill: COLOURS[key] }, root);
    svg("title", {}, dot).textContent = `depth ${d}: ${formatValue(v)}`;
  });
  return root;
}

// How the gradient's trip back from the output to the input went, in words.
function verdict(ratio) {
  if (ratio < 0.01) return "Like a message whispered down a long line, almost nothing arrives at the far end.";
  if (ratio < 0.5) return "The gradient fades on its way back: the first layers receive a weaker signal.";
  if (ratio <= 2) return "The gradient arrives at about the size it left: the signal survives the trip.";
  return "The gradient grows on its way back: the first layers receive the strongest signal.";
}

function render({ model, el }) {
  function draw(root) {
    const profiles = model.get("profiles");
    const residual = model.get("residual");
    const normFirst = model.get("norm_first");
    const shown = profiles.find((p) => p.residual === residual && p.norm_first === normFirst);
    const others = profiles.filter((p) => p !== shown);

    const controls = html("div", "attnlib-controls", root);
    toggle(controls, "residual", [[true, "on", "residual-on"], [false, "off", "residual-off"]], residual,
      (value) => share(model, "residual", value));
    toggle(controls, "LayerNorm", [[false, "after (post-LN)", "post-ln"], [true, "before (pre-LN)", "pre-ln"]],
      normFirst, (value) => share(model, "norm_first", value));

    const body = html("div", "attnlib-body", root);
    body.appendChild(chart("activation_scale", "activation scale (RMS) at each depth", shown, others));
    body.appendChild(chart("gradient_norm", "gradient norm reaching each depth", shown, others));

    const gradients = shown.gradient_norm;
    const scales = shown.activation_scale;
    const ratio = gradients[0] / gradients[gradients.length - 1];
    const summary = html("div", "attnlib-note", root);
    summary.dataset.role = "summary";
    summary.textContent = `${wiringName(shown)}: the gradient reaching the input is ${formatValue(ratio)}× the ` +
      `gradient at the output, and the activations go from RMS ${formatValue(scales[0])} to ` +
      `${formatValue(scales[scales.length - 1])} over ${scales.length - 1} layers. ` +
      verdict(ratio);
  }

  return mount({ model, el }, "attnlib-addnorm", ["profiles", "residual", "norm_first"], draw);
}

export default { render };
