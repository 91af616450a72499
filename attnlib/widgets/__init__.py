"""Interactive figures for the book, built on anywidget.

Each figure's data is computed by attnlib in Python and drawn by JavaScript in the page, so the figures stay
interactive on the static website (no kernel) and, in a live notebook, recompute when a Python-side input
changes. Display one by making it the last expression of a cell.
"""

from .attention_explorer import ALL_HEADS, AttentionExplorer

__all__ = ["AttentionExplorer", "ALL_HEADS"]
