"""Sharing keys and values: which key/value heads each query head reads, and what that does to the KV cache.

Multi-head attention (MHA) gives each of the H query heads its own key and value head. Grouped-query attention
(GQA) lets each group of H / H_kv query heads share one, query head h reading key/value head h // (H / H_kv).
Multi-query attention (MQA) is the extreme of one key/value head for all. Multi-head latent attention (MLA)
caches one latent vector per token and rebuilds every head's keys and values from it. The figure draws a small
example of each; beside it, the cache of published models under these layouts, per token and for a chosen context
length, computed by ``attnlib.sizes`` in Python and saved with the figure.
"""

from __future__ import annotations

import dataclasses
import numbers

import traitlets

from .. import _checks, sizes
from . import _validate
from ._base import Figure, esm

SCHEMES = ("MHA", "GQA", "MQA", "MLA")
MAX_DRAWN_HEADS = 16  # boxes of the drawing; more would not fit the column
MAX_CONFIGS = 12
MAX_CONTEXTS = 6
MAX_ROWS = 8


def _text(name: str, value, *, limit: int = 300) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} has {len(value)} characters; at most {limit} fit in this figure")
    return value


def _bytes(name: str, value) -> float:
    """A finite, non-negative number of bytes (sizes returns ints, or floats for fractional bytes per number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < float("inf"):
        raise ValueError(f"{name} must be a finite number of bytes >= 0, got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


def _label(layout) -> str:
    """How a layout reads in the table: its kind and what its cache holds per token and layer."""
    if layout.kind == "MLA":
        text = f"MLA: latent {layout.d_latent} + RoPE key {layout.d_rope}"
    else:
        n_kv_heads = layout.n_heads if layout.n_kv_heads is None else layout.n_kv_heads
        text = f"{layout.kind}: {n_kv_heads} kv head{'s' * (n_kv_heads != 1)}"
    return text + (f", window {layout.window}" if layout.window is not None else "")


def layout_rows(layout, context_lengths, *, bytes_per_number: int | float = 2) -> list[dict]:
    """The table rows of one published layout: its own, then the same layers, heads and head size with one
    key/value head per query head (MHA), with a group count in between (GQA, where the model's own is not one) and
    with one key/value head (MQA), and without its window if it has one. Bytes from ``attnlib.sizes``."""
    base = dataclasses.replace(layout, d_latent=None, d_rope=None, window=None)
    alternatives = [dataclasses.replace(base, n_kv_heads=None), dataclasses.replace(base, n_kv_heads=1)]
    if layout.kind != "GQA":  # a group count in between: the largest proper divisor up to 8, as in Llama 3
        groups = [n for n in range(min(8, layout.n_heads - 1), 1, -1) if layout.n_heads % n == 0]
        if groups:
            alternatives.insert(1, dataclasses.replace(base, n_kv_heads=groups[0]))
    if layout.window is not None:
        alternatives.insert(0, dataclasses.replace(layout, window=None))
    rows, seen = [], set()
    for candidate, own in [(layout, True)] + [(other, False) for other in alternatives]:
        label = _label(candidate)
        if label in seen:  # e.g. the model's own MHA layout again as the MHA alternative
            continue
        seen.add(label)
        rows.append({"label": label, "scheme": candidate.kind, "own": own,
                     "bytes_per_token": sizes.kv_cache_bytes_per_token(candidate, bytes_per_number=bytes_per_number),
                     "bytes_at_context": [sizes.layout_kv_cache_bytes(candidate, n, bytes_per_number=bytes_per_number)
                                          for n in context_lengths],
                     "note": "" if own else f"{layout.name}'s layers, heads and head size with this cache layout"})
    rows.sort(key=lambda row: (not row["own"], sizes.KINDS.index(row["scheme"])))
    return rows


def _row(name: str, row, n_contexts: int) -> dict:
    if not isinstance(row, dict):
        raise TypeError(f"{name} must be a dict, got {type(row).__name__}")
    required = {"label", "scheme", "bytes_per_token", "bytes_at_context"}
    missing = sorted(required - set(row))
    unknown = sorted(set(row) - required - {"own", "note"})
    if missing or unknown:
        raise ValueError(f"{name} must have the keys {sorted(required)} (and optionally 'own', 'note'); "
                         f"missing {missing}, unknown {unknown}")
    if row["scheme"] not in SCHEMES:
        raise ValueError(f"{name}['scheme'] must be one of {SCHEMES}, got {row['scheme']!r}")
    at_context = row["bytes_at_context"]
    if isinstance(at_context, str) or not hasattr(at_context, "__len__") or len(at_context) != n_contexts:
        raise ValueError(f"{name}['bytes_at_context'] must hold {n_contexts} numbers (one per context length), "
                         f"got {at_context!r:.100}")
    return {"label": _text(f"{name}['label']", row["label"], limit=60), "scheme": row["scheme"],
            "bytes_per_token": _bytes(f"{name}['bytes_per_token']", row["bytes_per_token"]),
            "bytes_at_context": [_bytes(f"{name}['bytes_at_context'][{i}]", value)
                                 for i, value in enumerate(at_context)],
            "own": _checks.flag(f"{name}['own']", row.get("own", False)),
            "note": _text(f"{name}['note']", row.get("note", ""))}


def _configs(configs, n_contexts: int) -> list[dict]:
    if isinstance(configs, str | bytes | dict) or not hasattr(configs, "__len__"):
        raise TypeError(f"configs must be a list of dicts (one per published model), got {type(configs).__name__}")
    if not 1 <= len(configs) <= MAX_CONFIGS:
        raise ValueError(f"configs must hold 1 to {MAX_CONFIGS} models, got {len(configs)}")
    checked = []
    for index, config in enumerate(configs):
        name = f"configs[{index}]"
        if not isinstance(config, dict) or not {"name", "rows"} <= set(config) \
                or not set(config) <= {"name", "rows", "note"}:
            raise ValueError(f"{name} must be a dict with the keys 'name', 'rows' (and optionally 'note'), got "
                             f"{config!r:.100}")
        rows = config["rows"]
        if isinstance(rows, str) or not hasattr(rows, "__len__") or not 1 <= len(rows) <= MAX_ROWS:
            raise ValueError(f"{name}['rows'] must be a list of 1 to {MAX_ROWS} cache layouts, got {rows!r:.100}")
        rows = [_row(f"{name}['rows'][{i}]", row, n_contexts) for i, row in enumerate(rows)]
        if sum(row["own"] for row in rows) > 1:
            raise ValueError(f"{name} marks {sum(row['own'] for row in rows)} rows as the model's own layout; at "
                             "most one can be")
        checked.append({"name": _text(f"{name}['name']", config["name"], limit=60), "rows": rows,
                        "note": _text(f"{name}['note']", config.get("note", ""))})
    return checked


def _context_lengths(values) -> list[int]:
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise TypeError(f"context_lengths must be a list of token counts, got {type(values).__name__}")
    if not 1 <= len(values) <= MAX_CONTEXTS:
        raise ValueError(f"context_lengths must hold 1 to {MAX_CONTEXTS} token counts, got {len(values)}")
    return [_checks.positive_int(f"context_lengths[{i}]", value) for i, value in enumerate(values)]


class KVHeadsView(Figure):
    """Query heads connected to the key/value heads they read (MHA, GQA, MQA) or to a latent (MLA), and the
    KV-cache bytes of published models under each layout.

    Plain data: ``KVHeadsView(configs, context_lengths=...)``, ``configs`` a list of ``{"name", "rows", "note"}``,
    each row ``{"label", "scheme", "bytes_per_token", "bytes_at_context", "own", "note"}`` with ``scheme`` one of
    ``SCHEMES`` and ``bytes_at_context`` one number per context length. ``KVHeadsView.from_sizes()`` fills them
    from ``attnlib.sizes``. The drawing shows ``n_heads`` query heads under ``scheme``; for GQA the reader picks
    the number of key/value heads among ``kv_options`` (divisors of ``n_heads``).
    """

    _esm = esm("kv_heads_view.js")

    n_heads = traitlets.Int(8).tag(sync=True)  # query heads drawn
    scheme = traitlets.Unicode("GQA").tag(sync=True)
    kv_options = traitlets.List(traitlets.Int()).tag(sync=True)  # key/value head counts offered for GQA
    n_kv_heads = traitlets.Int(2).tag(sync=True)  # the GQA drawing's key/value heads
    configs = traitlets.List().tag(sync=True)  # [{"name", "note", "rows": [{"label", "scheme", ...}]}]
    context_lengths = traitlets.List(traitlets.Int()).tag(sync=True)
    config = traitlets.Int(0).tag(sync=True)  # index into configs: the model in the table
    context = traitlets.Int(0).tag(sync=True)  # index into context_lengths
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, configs, *, context_lengths, n_heads: int = 8, scheme: str = "GQA", n_kv_heads: int = 2,
                 config: int = 0, context: int = 0, title: str = "", **kwargs):
        super().__init__(**kwargs)
        n_heads = _validate.at_most("n_heads", n_heads, MAX_DRAWN_HEADS, why="query-head boxes that fit the column")
        options = [n for n in range(n_heads - 1, 1, -1) if n_heads % n == 0]  # GQA: strictly between 1 and H
        if not options:
            raise ValueError(f"n_heads = {n_heads} has no divisor strictly between 1 and itself, so grouped-query "
                             "attention has no group count to draw: use 4, 6, 8, 12 or 16")
        context_lengths = _context_lengths(context_lengths)
        configs = _configs(configs, len(context_lengths))
        with self.hold_sync():
            self.n_heads, self.kv_options = n_heads, options
            self.context_lengths, self.configs = context_lengths, configs
            self.scheme, self.n_kv_heads = scheme, n_kv_heads
            self.config, self.context, self.title = config, context, str(title)

    @classmethod
    def from_sizes(cls, names=None, *, context_lengths=(4096, 32_768, 131_072), bytes_per_number: int | float = 2,
                   **options) -> KVHeadsView:
        """The published layouts of ``attnlib.sizes.CACHE_LAYOUTS`` (all, or those named), each with the
        alternatives of ``layout_rows``, priced at ``bytes_per_number`` (2: bfloat16) for ``context_lengths``."""
        context_lengths = _context_lengths(context_lengths)
        if names is None:
            names = list(sizes.CACHE_LAYOUTS)
        if isinstance(names, str) or not hasattr(names, "__iter__"):
            raise TypeError(f"names must be a list of names from attnlib.sizes.CACHE_LAYOUTS, got {names!r:.100}")
        unknown = [name for name in names if name not in sizes.CACHE_LAYOUTS]
        if unknown:
            raise ValueError(f"names {unknown} are not in attnlib.sizes.CACHE_LAYOUTS, which holds "
                             f"{list(sizes.CACHE_LAYOUTS)}")
        configs = []
        for name in names:
            layout = sizes.CACHE_LAYOUTS[name]
            note = (f"{layout.n_layers} layers, {layout.n_heads} query heads of {layout.d_head}; "
                    f"{'bfloat16' if bytes_per_number == 2 else f'{bytes_per_number} bytes per number'}. "
                    f"Source: {layout.source}.")
            configs.append({"name": name, "note": note,
                            "rows": layout_rows(layout, context_lengths, bytes_per_number=bytes_per_number)})
        return cls(configs, context_lengths=context_lengths, **options)

    @traitlets.validate("scheme")
    def _check_scheme(self, proposal):
        if proposal["value"] not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("n_kv_heads")
    def _check_n_kv_heads(self, proposal):
        value = proposal["value"]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value not in self.kv_options:
            raise ValueError(f"n_kv_heads must be one of {self.kv_options} (divisors of n_heads = {self.n_heads} "
                             f"between 1 and n_heads), got {value!r}")
        return int(value)

    @traitlets.validate("config")
    def _check_config(self, proposal):
        return _validate.index("config", proposal["value"], len(self.configs), what="models")

    @traitlets.validate("context")
    def _check_context(self, proposal):
        return _validate.index("context", proposal["value"], len(self.context_lengths), what="context lengths")
