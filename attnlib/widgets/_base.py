"""What every attnlib figure shares: its data is computed in Python, its drawing runs in JavaScript.

A figure's synced traits hold plain numbers and strings, so the widget state saved into a notebook (and from
there into the static site) is everything the browser needs: hovering, stepping and toggling work with no
kernel. Traits marked as *inputs* (a sentence, a seed, a block size...) are different: changing one in a live
kernel recomputes the data in Python, and the front end redraws from the new state.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import numpy as np
import traitlets

STATIC = Path(__file__).parent / "static"

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


class Figure(anywidget.AnyWidget):
    """Base class: shared stylesheet, an ``error`` message the front end shows instead of a blank figure,
    and the recompute-on-input machinery."""

    _css = STATIC / "widgets.css"

    error = traitlets.Unicode("").tag(sync=True)
    """Empty when the figure is fine; otherwise a sentence the front end shows in place of the drawing."""

    _input_names: tuple[str, ...] = ()  # traits whose change triggers a recompute in Python

    def __init__(self, **kwargs):
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
