"""What every attnlib figure shares: its data is computed in Python, its drawing runs in JavaScript.

A figure's synced traits hold plain numbers and strings, so the widget state saved into a notebook (and from
there into the static site) is everything the browser needs: hovering, stepping and toggling work with no
kernel. Traits marked as *inputs* (a sentence, a seed, a block size...) are different: changing one in a live
kernel recomputes the data in Python, and the front end redraws from the new state.

The JavaScript lives in ``static/``: one file per figure, plus ``_shared.js`` with the helpers they all use
(nodes, colours, buttons, step controls, redrawing on change). ``esm`` joins the two into the one module
anywidget sends to the browser.
"""

from __future__ import annotations

import re
from pathlib import Path

import anywidget
import numpy as np
import traitlets

STATIC = Path(__file__).parent / "static"
SHARED = STATIC / "_shared.js"

# A widget's one line that asks for shared helpers, e.g. `import { html, svg } from "./_shared.js";`
_SHARED_IMPORT = re.compile(r'^import \{([^}]*)\} from "\./_shared\.js";$', re.MULTILINE)
_EXPORT = re.compile(r"^export (function|const|let|class) (\w+)", re.MULTILINE)

# Six decimals keep a page small (a 64-token heatmap would otherwise cost ~20 characters per weight) while
# every value stays within 5e-7 of what attnlib computed.
DECIMALS = 6


def to_json_array(array, decimals: int = DECIMALS) -> list:
    """A NumPy array or torch tensor as nested lists of rounded Python floats (JSON-ready).

    -inf (a masked score, or a maximum before anything was seen) becomes None, JSON's null, which the front
    end shows as −∞; JSON itself has no infinity.
    """
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().double().numpy()
    array = np.asarray(array, dtype=np.float64)
    rounded = np.round(array, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0, so masked weights read as plain zeros
    if np.isneginf(array).any():
        return np.where(np.isneginf(array), None, rounded).tolist()
    return rounded.tolist()


def esm(name: str) -> str:
    """The JavaScript of widget ``static/<name>`` as one standalone ES module, for its ``_esm``.

    anywidget hands each widget's module to the browser on its own, as a string, so an
    ``import ... from "./_shared.js"`` has nothing to load from. Instead, the widget's import line is replaced
    here by the source of ``static/_shared.js`` wrapped in a function, which returns the exported names the widget
    asked for: the helpers are written once, every figure gets its own copy, and a widget sees only what it
    imports (its own names never clash with the shared file's).
    """
    source = (STATIC / name).read_text()
    found = _SHARED_IMPORT.search(source)
    if found is None:
        return source
    shared = SHARED.read_text()
    exported = [match.group(2) for match in _EXPORT.finditer(shared)]
    wanted = [word.strip() for word in found.group(1).split(",") if word.strip()]
    unknown = [word for word in wanted if word not in exported]
    if unknown:
        raise ImportError(f"static/{name} imports {unknown} from _shared.js, which exports only {exported}")
    body = _EXPORT.sub(r"\1 \2", shared)  # plain declarations inside the function
    inlined = (f"const {{ {', '.join(wanted)} }} = (() => {{  // static/_shared.js, inlined by _base.esm\n"
               f"{body}\nreturn {{ {', '.join(exported)} }};\n}})();")
    return source[:found.start()] + inlined + source[found.end():]


class Figure(anywidget.AnyWidget):
    """Base class: shared stylesheet, an ``error`` message the front end shows instead of a blank figure,
    and the recompute-on-input machinery."""

    _css = STATIC / "widgets.css"

    error = traitlets.Unicode("").tag(sync=True)
    """Empty when the figure is fine; otherwise a sentence the front end shows in place of the drawing."""

    _input_names: tuple[str, ...] = ()  # traits whose change triggers a recompute in Python

    def __init__(self, **kwargs):
        # A misspelt option (``heads=2`` for ``head=2``) would otherwise be dropped with only a warning.
        unknown = sorted(set(kwargs) - set(self.class_trait_names()))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {unknown}")
        super().__init__(**kwargs)
        if self._input_names:
            self.observe(self._on_input_change, names=list(self._input_names))

    def _recompute(self) -> dict | None:
        """Return the new values of the data traits for the current inputs (subclasses override), or None
        when this figure was built from plain data and has nothing to recompute from."""
        return None

    def _on_input_change(self, change) -> None:
        # In a live notebook the change may come from a text box or a slider, where an exception would only
        # reach the kernel's log; the figure shows the message instead and keeps its previous data.
        try:
            data = self._recompute()
        except (ValueError, TypeError) as error:
            self.error = f"{change['name']} = {change['new']!r}: {error}"
            return
        if data is None:
            return
        with self.hold_sync():  # one message to the front end, not one per trait
            for name, value in data.items():
                setattr(self, name, value)
            self.error = ""
