"""The chapters' matplotlib helpers: one way to draw a matrix of attention weights (or any small labelled table), the
width a figure may have to be shown at full size, and one tick format for colour bars."""

from __future__ import annotations

import numpy as np

# The widest figure that is shown at its full size: the book's content column is about 684 px wide at a laptop's
# window, and a matplotlib SVG measures 96 px per inch of figsize. A wider figure is scaled down, its text with it.
COLUMN_INCHES = 7.0

# One tick format for every colour bar of attention weights (and other numbers between 0 and 1).
COLORBAR_FORMAT = "{x:.2f}"


def _relative_luminance(rgba) -> float:
    """WCAG relative luminance of an sRGB colour (0 = black, 1 = white)."""
    channels = np.asarray(rgba[:3], dtype=np.float64)
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def _text_colour(rgba) -> str:
    """"black" or "white", whichever contrasts more with a cell of colour ``rgba`` (WCAG contrast ratio)."""
    luminance = _relative_luminance(rgba)
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


def heatmap(ax, values, rows, columns, *, title: str | None = None, xlabel: str | None = "key",
            ylabel: str | None = "query", vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis",
            annotate: bool = True, decimals: int = 2, fontsize: float = 8, rotation: float = 0,
            aspect: str | float = "equal", colorbar: str | None = None):
    """Draw ``values`` (one row per query, one column per key) on ``ax`` as a heatmap with labelled rows and columns.

    ``rows`` and ``columns`` label the rows (queries) and columns (keys); anything printable will do. The colour
    scale runs from ``vmin`` to ``vmax`` (0 to 1, the range of attention weights, unless told otherwise); NaN cells
    are left blank. With ``annotate`` each cell shows its value with ``decimals`` decimals, in black or white,
    whichever reads better on the cell's colour. ``rotation`` turns the column labels (any angle but 0 and 90 hangs
    them from their right end). ``colorbar``, a label, adds a colour bar beside this one axes; for a bar shared by
    several axes, pass the returned image to ``figure.colorbar``.

    Returns the ``AxesImage``.
    """
    values = np.asarray(values, dtype=np.float64)
    rows, columns = [str(row) for row in rows], [str(column) for column in columns]
    if values.ndim != 2 or values.shape != (len(rows), len(columns)):
        raise ValueError(f"values of shape {values.shape} do not match {len(rows)} row and {len(columns)} column "
                         f"labels")
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect)
    alignment = "center" if rotation in (0, 90) else "right"
    ax.set_xticks(range(len(columns)), columns, rotation=rotation, ha=alignment)
    ax.set_yticks(range(len(rows)), rows)
    if annotate:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.{decimals}f}", ha="center", va="center", fontsize=fontsize,
                        color=_text_colour(image.cmap(image.norm(value))))
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.04, label=colorbar, format=COLORBAR_FORMAT)
    return image
