// KV heads view: which key/value heads each query head reads. Multi-head attention gives every query head its own
// key and value head; grouped-query attention lets a group of query heads share one; multi-query attention shares a
// single one among all; multi-head latent attention caches one latent vector per token, from which every head's
// keys and values are rebuilt. Beside the drawing: the KV-cache bytes of published models under each scheme, per
// token and for a chosen context length, computed by attnlib.sizes in Python.

import { html, mount, share, svg, table, toggle } from "./_shared.js";

const SCHEMES = [["MHA", "MHA", "scheme"], ["GQA", "GQA", "scheme"], ["MQA", "MQA", "scheme"], ["MLA", "MLA", "scheme"]];
const BOX = 34; // a head's box, in pixels
const GAP = 8;
// A colour per key/value group (viridis, spread out), so the reader sees which query heads share one.
const GROUP_COLOURS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#b35806", "#7a0177", "#2c728e", "#addc30"];

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value >= 100 || unit === 0 ? value.toFixed(0) : value.toPrecision(3)} ${units[unit]}`;
}

// Query heads on top, what they read below, a line from each query head to its key/value head (or to the latent).
function diagram(nHeads, scheme, nKvHeads) {
  const width = Math.max(nHeads * (BOX + GAP) + GAP, 440); // wide enough for the caption below
  const top = 22;
  const bottom = top + BOX + 70;
  const root = svg("svg", { width, height: bottom + BOX + 24, role: "img",
    "aria-label": `${scheme}: ${nHeads} query heads and what they read` });
  root.dataset.role = "heads";
  root.dataset.scheme = scheme;
  const centre = (i, count) => {
    const span = count * (BOX + GAP) - GAP;
    return (width - span) / 2 + i * (BOX + GAP) + BOX / 2;
  };
  svg("text", { x: GAP, y: 14, "font-size": 11, class: "attnlib-label" }, root).textContent =
    `${nHeads} query heads`;
  const readers = scheme === "MLA" ? 1 : scheme === "MHA" ? nHeads : scheme === "MQA" ? 1 : nKvHeads;
  const groupSize = nHeads / readers;
  for (let h = 0; h < nHeads; h++) {
    const group = scheme === "MLA" ? 0 : Math.floor(h / groupSize);
    const colour = scheme === "MLA" ? "#21918c" : GROUP_COLOURS[group % GROUP_COLOURS.length];
    const x = centre(h, nHeads);
    const target = scheme === "MLA" ? x : centre(group, readers);
    const line = svg("line", { x1: x, y1: top + BOX, x2: target, y2: bottom, stroke: colour, "stroke-width": 1.5 },
      root);
    line.dataset.role = "link";
    line.dataset.query = h;
    line.dataset.kv = group;
    const box = svg("rect", { x: x - BOX / 2, y: top, width: BOX, height: BOX, rx: 4, fill: "#fff", stroke: colour,
      "stroke-width": 2 }, root);
    box.dataset.role = "query-head";
    svg("text", { x, y: top + BOX / 2, "text-anchor": "middle", "dominant-baseline": "middle", "font-size": 11,
      class: "attnlib-label" }, root).textContent = `q${h}`;
  }
  if (scheme === "MLA") {
    // One latent vector per token is cached; each head rebuilds its own keys and values from it.
    const x0 = centre(0, nHeads) - BOX / 2;
    const latent = svg("rect", { x: x0, y: bottom, width: nHeads * (BOX + GAP) - GAP, height: BOX, rx: 4,
      fill: "#e4f1ef", stroke: "#21918c", "stroke-width": 2 }, root);
    latent.dataset.role = "latent";
    svg("text", { x: width / 2, y: bottom + BOX / 2, "text-anchor": "middle", "dominant-baseline": "middle",
      "font-size": 12, class: "attnlib-label" }, root).textContent = "cached: one latent vector c per token";
    svg("text", { x: width / 2, y: top + BOX + 38, "text-anchor": "middle", "font-size": 11, fill: "#333",
      stroke: "#fff", "stroke-width": 5, "paint-order": "stroke" }, root)
      .textContent = "each head's k and v = c × that head's own matrices";
  } else {
    for (let g = 0; g < readers; g++) {
      const x = centre(g, readers);
      const colour = GROUP_COLOURS[g % GROUP_COLOURS.length];
      const box = svg("rect", { x: x - BOX / 2, y: bottom, width: BOX, height: BOX, rx: 4, fill: colour,
        "fill-opacity": 0.15, stroke: colour, "stroke-width": 2 }, root);
      box.dataset.role = "kv-head";
      svg("text", { x, y: bottom + BOX / 2, "text-anchor": "middle", "dominant-baseline": "middle", "font-size": 10,
        class: "attnlib-label" }, root).textContent = `kv${g}`;
    }
  }
  const cached = scheme === "MLA" ? "1 latent vector (+ 1 small key for positions)"
    : `${readers} key + ${readers} value vectors`;
  svg("text", { x: GAP, y: bottom + BOX + 18, "font-size": 11, class: "attnlib-label" }, root).textContent =
    `cached per token and layer: ${cached}`;
  return root;
}

function render({ model, el }) {
  function draw(root) {
    const nHeads = model.get("n_heads");
    const scheme = model.get("scheme");
    const kvOptions = model.get("kv_options");
    const nKvHeads = model.get("n_kv_heads");
    const configs = model.get("configs");
    const contexts = model.get("context_lengths");
    const chosen = configs[Math.min(model.get("config"), configs.length - 1)];
    const context = Math.min(model.get("context"), contexts.length - 1);

    const controls = html("div", "attnlib-controls", root);
    toggle(controls, "scheme", SCHEMES, scheme, (value) => share(model, "scheme", value));
    if (scheme === "GQA") {
      toggle(controls, "key/value heads", kvOptions.map((n) => [n, String(n), "kv-heads"]), nKvHeads,
        (value) => share(model, "n_kv_heads", value));
    }

    const body = html("div", "attnlib-body", root);
    body.appendChild(diagram(nHeads, scheme, nKvHeads));

    const side = html("div", "", body);
    const pickers = html("div", "attnlib-controls", side);
    const label = html("label", "", pickers, "model ");
    const select = html("select", "", label);
    select.dataset.role = "config";
    configs.forEach((config, index) => {
      const option = html("option", "", select, config.name);
      option.value = String(index);
      option.selected = config === chosen;
    });
    select.addEventListener("change", () => share(model, "config", Number(select.value)));
    toggle(pickers, "context", contexts.map((n, index) => [index, `${n.toLocaleString("en-US")} tokens`,
      "context"]), context, (value) => share(model, "context", value));

    const rows = chosen.rows.map((row) => {
      const here = row.scheme === scheme;
      const className = here ? "attnlib-changed" : "";
      return [{ text: `${row.label}${row.own ? " (its own)" : ""}`, className, title: row.note || "" },
        { text: formatBytes(row.bytes_per_token), className: `${className} attnlib-bytes-per-token`.trim() },
        { text: formatBytes(row.bytes_at_context[context]), className: `${className} attnlib-bytes-at-context`.trim() }];
    });
    const sizes = table(side, ["cache layout", "per token", `${contexts[context].toLocaleString("en-US")} tokens`],
      rows);
    sizes.dataset.role = "bytes";
    html("div", "attnlib-note", side, chosen.note).dataset.role = "config-note";
  }

  return mount({ model, el }, "attnlib-kvheads", ["n_heads", "scheme", "kv_options", "n_kv_heads", "configs",
    "context_lengths", "config", "context"], draw);
}

export default { render };
