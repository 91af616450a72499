// What every attnlib figure's JavaScript shares: making SVG and HTML nodes, the viridis colour scale, number
// formatting, telling the kernel about the reader's choices, buttons, toggles and tables, the step-through
// controls, and drawing a figure again whenever its state changes.
//
// anywidget loads each widget's module on its own, from a string, so nothing can import this file when the page
// runs. Instead attnlib/widgets/_base.py (esm) puts it into every widget's module when Python reads it, in place
// of the widget's line `import { ... } from "./_shared.js";` and inside a function scope, so a widget sees only the
// names it imports. Each file stays a valid ES module of its own (for editors and `node --check`).

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

export function html(tag, className = "", parent = null, text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

// viridis sampled at 17 evenly spaced points: perceptually uniform and readable in grey and by most
// colour-blind readers; values in between are interpolated linearly.
export const VIRIDIS = [
  "#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
  "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725",
];

const hexToRgb = (hex) => [1, 3, 5].map((k) => parseInt(hex.slice(k, k + 2), 16));

// The colour of t in [0, 1] (clamped; not a number counts as 0).
export function viridis(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const low = Math.floor(x);
  const high = Math.min(low + 1, VIRIDIS.length - 1);
  const a = hexToRgb(VIRIDIS[low]);
  const b = hexToRgb(VIRIDIS[high]);
  return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * (x - low))).join(",")})`;
}

// Dark text on the bright (yellow-green) end of viridis, light text on the dark end.
export function textColourOn(t) {
  return t > 0.55 ? "#111" : "#fff";
}

// Four decimals, or scientific notation for very large or very small sizes. null stands for -inf (JSON has no
// infinity): a maximum before anything was seen, or a masked score.
export function formatNumber(x, exponentDigits = 2) {
  if (x === null) return "−∞";
  if (x === 0) return "0";
  const size = Math.abs(x);
  return size >= 1e4 || size < 1e-3 ? x.toExponential(exponentDigits) : x.toFixed(4);
}

// Tell the kernel about a choice made in the page. A static page has no kernel (the model has no comm and
// save_changes throws "Syncing error"); the choice then simply stays in this page, which redraws from it.
export function share(model, name, value) {
  model.set(name, value);
  try {
    model.save_changes();
  } catch (error) {
    if (!String(error).includes("no comm")) throw error;
  }
}

export function button(parent, text, role, onClick, disabled = false) {
  const node = html("button", "", parent, text);
  node.type = "button";
  node.dataset.role = role;
  node.disabled = disabled;
  node.addEventListener("click", onClick);
  return node;
}

// A labelled group of buttons, one per option [value, text, role], the current one pressed. Returns the group.
export function toggle(parent, label, options, current, onPick) {
  const wrapper = html("span", "", parent, `${label} `);
  const group = html("span", "attnlib-toggle", wrapper);
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", label);
  for (const [value, text, role] of options) {
    const node = button(group, text, role, () => onPick(value));
    node.dataset.value = value;
    node.setAttribute("aria-pressed", String(current === value));
  }
  return group;
}

// A table with a header row; each cell is a string or { text, className, title }.
export function table(parent, header, rows, className = "") {
  const node = html("table", `attnlib-table ${className}`.trim(), parent);
  const head = html("tr", "", html("thead", "", node));
  for (const text of header) html("th", "", head, text);
  const body = html("tbody", "", node);
  for (const cells of rows) {
    const row = html("tr", "", body);
    for (const cell of cells) {
      const { text, className: cellClass = "", title = "" } = typeof cell === "string" ? { text: cell } : cell;
      const td = html("td", cellClass, row, text);
      if (title) td.title = title;
    }
  }
  return node;
}

// The controls of a figure that walks through recorded steps (its synced "step" trait): start, back, play/pause,
// next, end. `count()` says how many steps there are now. The play timer outlives redraws; `stop` ends it.
export function stepper(model, { interval, count }) {
  let timer = null;
  const stop = () => {
    if (timer !== null) clearInterval(timer);
    timer = null;
  };
  const go = (index) => share(model, "step", Math.max(0, Math.min(count() - 1, index)));

  function controls(parent, index, redraw) {
    const last = count() - 1;
    button(parent, "◀◀ start", "start", () => { stop(); go(0); }, index === 0);
    button(parent, "◀ back", "back", () => { stop(); go(index - 1); }, index === 0);
    button(parent, timer === null ? "▶ play" : "‖ pause", "play", () => {
      if (timer !== null) { stop(); redraw(); return; }
      if (index === last) go(0);
      timer = setInterval(() => {
        const now = model.get("step");
        if (now >= count() - 1) { stop(); redraw(); } else go(now + 1);
      }, interval);
      redraw();
    });
    button(parent, "next ▶", "next", () => { stop(); go(index + 1); }, index === last);
    button(parent, "end ▶▶", "end", () => { stop(); go(last); }, index === last);
  }

  return { controls, stop };
}

// Draw a figure into `el`, and again whenever one of the synced traits `names` (or "error" or "title")
// changes: `draw(root, redraw)` fills the emptied root under the title; while "error" is set, its message is
// shown instead. `onRemove` runs then and when the view goes away. Returns anywidget's clean-up function.
export function mount({ model, el }, className, names, draw, onRemove = () => {}) {
  const root = html("div", `attnlib-figure ${className}`, el);

  function redraw() {
    root.replaceChildren();
    const error = model.get("error");
    if (error) {
      onRemove();
      html("div", "attnlib-error", root, error).setAttribute("role", "alert");
      return;
    }
    const title = model.get("title");
    if (title) html("div", "attnlib-title", root, title);
    draw(root, redraw);
  }

  const events = ["error", "title", ...names].map((name) => `change:${name}`);
  for (const event of events) model.on(event, redraw);
  redraw();
  return () => {
    onRemove();
    for (const event of events) model.off(event, redraw);
  };
}
