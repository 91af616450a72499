// RoPE view: one frequency pair of a query and a key, drawn as two arrows in a plane. The query at position m is
// turned by m·θ, the key at position n by n·θ, so the angle between them is (m − n)·θ and their dot product depends on
// the offset alone. Sliders move m and n; "shift both" moves them together, and the scores stay put. The rotated
// vectors and the whole head's scores were computed by attnlib (apply_rope) in Python for every position.

import { html, mount, share, svg, toggle, viridis } from "./_shared.js";

const PLANE = 260; // the plane's drawing, in pixels
const Q_COLOUR = "#3b528b";
const K_COLOUR = "#b35806"; // orange against blue: told apart by most colour-blind readers
const format = (x) => (Math.abs(x) < 5e-7 ? "0.000" : x.toFixed(3)); // no "−0.000"

function arrow(parent, x, y, colour, role, label) {
  const length = Math.hypot(x, y);
  const group = svg("g", {}, parent);
  group.dataset.role = role;
  group.dataset.x = x.toFixed(6);
  group.dataset.y = y.toFixed(6);
  svg("line", { x1: 0, y1: 0, x2: x, y2: -y, stroke: colour, "stroke-width": 3 }, group);
  if (length > 0) { // an arrowhead pointing along (x, y); the page's y axis points down
    const ux = x / length;
    const uy = -y / length;
    const size = 10;
    const points = [[x, -y], [x - size * ux - 5 * uy, -y - size * uy + 5 * ux],
      [x - size * ux + 5 * uy, -y - size * uy - 5 * ux]];
    svg("polygon", { points: points.map((p) => p.join(",")).join(" "), fill: colour }, group);
  }
  const away = 12 / (length || 1); // the label just beyond the tip
  svg("text", { x: x * (1 + away), y: -y * (1 + away), "text-anchor": "middle", "dominant-baseline": "middle",
    "font-size": 13, "font-weight": 700, fill: colour }, group).textContent = label;
  return group;
}

// The plane of one frequency pair: every position's tip as a faint dot, the two arrows, the arc between them.
function plane(qPlane, kPlane, m, n, theta, pairIndex) {
  const half = PLANE / 2;
  const largest = Math.max(...qPlane.map(([x, y]) => Math.hypot(x, y)), ...kPlane.map(([x, y]) => Math.hypot(x, y)));
  const unit = (half - 30) / (largest || 1); // pixels per unit of length
  const root = svg("svg", { width: PLANE, height: PLANE, role: "img",
    "aria-label": `plane of frequency pair ${pairIndex}: query and key arrows` });
  root.dataset.role = "plane";
  const world = svg("g", { transform: `translate(${half},${half})` }, root);
  svg("line", { x1: -half, y1: 0, x2: half, y2: 0, class: "attnlib-frame" }, world);
  svg("line", { x1: 0, y1: -half, x2: 0, y2: half, class: "attnlib-frame" }, world);
  for (const [points, colour] of [[qPlane, Q_COLOUR], [kPlane, K_COLOUR]]) {
    const radius = Math.hypot(...points[0]) * unit;
    svg("circle", { cx: 0, cy: 0, r: radius, fill: "none", stroke: colour, "stroke-opacity": 0.25,
      "stroke-dasharray": "3 3" }, world);
    for (const [x, y] of points) svg("circle", { cx: x * unit, cy: -y * unit, r: 2, fill: colour, opacity: 0.3 }, world);
  }
  const [qx, qy] = qPlane[m];
  const [kx, ky] = kPlane[n];
  // The arc from the key's direction to the query's, at a small radius.
  const qAngle = Math.atan2(qy, qx);
  const kAngle = Math.atan2(ky, kx);
  let between = qAngle - kAngle;
  while (between > Math.PI) between -= 2 * Math.PI;
  while (between < -Math.PI) between += 2 * Math.PI;
  const r = 28;
  const sweep = between > 0 ? 0 : 1; // counter-clockwise on the page is sweep-flag 0 (y points down)
  svg("path", { d: `M ${r * Math.cos(kAngle)} ${-r * Math.sin(kAngle)} A ${r} ${r} 0 0 ${sweep} ` +
    `${r * Math.cos(qAngle)} ${-r * Math.sin(qAngle)}`, fill: "none", stroke: "#555", "stroke-width": 1.5 }, world);
  arrow(world, kx * unit, ky * unit, K_COLOUR, "key-arrow", "k");
  arrow(world, qx * unit, qy * unit, Q_COLOUR, "query-arrow", "q");
  svg("text", { x: 6, y: 14, "font-size": 11, class: "attnlib-label" }, root).textContent =
    `pair ${pairIndex}: θ = ${theta.toPrecision(3)} rad per position`;
  return root;
}

// The whole head's score for every (query position, key position), the reader's pair outlined.
function scoreGrid(scores, m, n) {
  const size = scores.length;
  const cell = Math.max(4, Math.min(15, Math.floor(236 / size)));
  const left = 22;
  const top = 22;
  let low = Infinity;
  let high = -Infinity;
  for (const row of scores) for (const x of row) { low = Math.min(low, x); high = Math.max(high, x); }
  const span = high > low ? high - low : 1;
  const root = svg("svg", { width: left + size * cell + 4, height: top + size * cell + 4, role: "img",
    "aria-label": "the head's score for every query and key position" });
  root.dataset.role = "score-grid";
  svg("text", { x: left, y: 14, "font-size": 11, class: "attnlib-label" }, root).textContent =
    "the head's score for key position n →";
  svg("text", { x: 8, y: top, "font-size": 11, class: "attnlib-label",
    transform: `rotate(90 8 ${top})` }, root).textContent = "query position m →";
  scores.forEach((row, i) => row.forEach((x, j) => {
    const rect = svg("rect", { x: left + j * cell, y: top + i * cell, width: cell, height: cell,
      fill: viridis((x - low) / span) }, root);
    rect.dataset.i = i;
    rect.dataset.j = j;
    svg("title", {}, rect).textContent = `m = ${i}, n = ${j} (offset ${i - j}): ${format(x)}`;
  }));
  svg("rect", { x: left + n * cell, y: top + m * cell, width: cell, height: cell,
    class: "attnlib-tile-highlight" }, root).dataset.role = "current-cell";
  return root;
}

function slider(parent, label, role, value, max, onInput) {
  const wrapper = html("label", "", parent, `${label} `);
  const input = html("input", "", wrapper);
  input.type = "range";
  input.min = "0";
  input.max = String(max);
  input.step = "1";
  input.value = String(value);
  input.dataset.role = role;
  input.setAttribute("aria-label", label);
  const shown = html("span", "attnlib-cell-value", wrapper, ` ${value}`);
  shown.dataset.role = `${role}-value`;
  input.addEventListener("input", () => onInput(Number(input.value)));
  return { input, shown };
}

function render({ model, el }) {
  // The sliders stay in place while the reader drags them: moving a position redraws only the drawing below them.
  let update = null;
  const onPosition = () => update && update();
  model.on("change:query_position", onPosition);
  model.on("change:key_position", onPosition);

  function draw(root) {
    const pairs = model.get("pairs");
    const frequencies = model.get("frequencies");
    const last = model.get("n_positions") - 1;
    const pairIndex = Math.min(model.get("pair"), pairs.length - 1);
    const controls = html("div", "attnlib-controls", root);
    const m0 = model.get("query_position");
    const n0 = model.get("key_position");
    const query = slider(controls, "query position m", "query-position", m0, last,
      (value) => share(model, "query_position", value));
    const key = slider(controls, "key position n", "key-position", n0, last,
      (value) => share(model, "key_position", value));
    const shifts = html("span", "attnlib-toggle", controls);
    shifts.setAttribute("role", "group");
    shifts.setAttribute("aria-label", "shift both positions");
    const shiftButtons = [[-1, "◀ shift both", "shift-left"], [1, "shift both ▶", "shift-right"]].map(
      ([step, text, role]) => {
        const node = html("button", "", shifts, text);
        node.type = "button";
        node.dataset.role = role;
        node.addEventListener("click", () => {
          const m = model.get("query_position") + step;
          const n = model.get("key_position") + step;
          if (Math.min(m, n) < 0 || Math.max(m, n) > last) return;
          model.set("query_position", m);
          share(model, "key_position", n); // one save: both positions reach the kernel together
        });
        return [step, node];
      });
    if (pairs.length > 1) {
      toggle(controls, "plane", pairs.map((p, index) => [index, `pair ${p}`, "pair"]), pairIndex,
        (value) => share(model, "pair", value));
    }

    const body = html("div", "attnlib-body", root);
    const drawing = html("div", "", body);
    const grid = html("div", "", body);
    const note = html("div", "attnlib-note", root);
    note.dataset.role = "scores";

    update = () => {
      const m = Math.min(model.get("query_position"), last);
      const n = Math.min(model.get("key_position"), last);
      query.input.value = String(m);
      key.input.value = String(n);
      query.shown.textContent = ` ${m}`;
      key.shown.textContent = ` ${n}`;
      for (const [step, node] of shiftButtons) node.disabled = Math.min(m, n) + step < 0 || Math.max(m, n) + step > last;
      const qPlane = model.get("q_planes")[pairIndex];
      const kPlane = model.get("k_planes")[pairIndex];
      const theta = frequencies[pairIndex];
      const planeScore = qPlane[m][0] * kPlane[n][0] + qPlane[m][1] * kPlane[n][1];
      const headScore = model.get("scores")[m][n];
      drawing.replaceChildren(plane(qPlane, kPlane, m, n, theta, pairs[pairIndex]));
      grid.replaceChildren(scoreGrid(model.get("scores"), m, n));
      note.replaceChildren();
      const line = (parts) => {
        const p = html("div", "", note);
        for (const [text, role] of parts) {
          const span = html("span", "", p, text);
          if (role) span.dataset.role = role;
        }
      };
      line([["Query turned by m·θ = ", ""], [`${(m * theta).toFixed(3)}`, "query-angle"],
        [" rad, key by n·θ = ", ""], [`${(n * theta).toFixed(3)}`, "key-angle"],
        [` rad; the angle between them is (m − n)·θ = ${m - n} × ${theta.toPrecision(3)} = `, ""],
        [`${((m - n) * theta).toFixed(3)}`, "offset-angle"], [" rad.", ""]]);
      line([["q·k in this plane = ", ""], [format(planeScore), "plane-score"],
        [`; over all ${model.get("d") / 2} planes (the head's score) = `, ""], [format(headScore), "head-score"],
        [".", ""]]);
      line([["Shift both positions: both arrows turn by the same angle and neither score moves. In the map, m − n " +
        "is fixed along each diagonal, and so is the colour.", ""]]);
    };
    update();
  }

  const unmount = mount({ model, el }, "attnlib-rope", ["d", "pairs", "frequencies", "q_planes", "k_planes",
    "scores", "n_positions", "pair", "base"], draw, () => { update = null; });
  return () => {
    unmount();
    model.off("change:query_position", onPosition);
    model.off("change:key_position", onPosition);
  };
}

export default { render };
