"""Input checks for the figures. Each names the argument and shows what it got, like ``attnlib._checks``."""

from __future__ import annotations

import numbers

import numpy as np

from .. import _checks


def tokens(name: str, values, *, max_tokens: int) -> list[str]:
    """A non-empty list of strings, short enough to label a figure legibly."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of strings (one per token), got the string {values!r}")
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}") from None
    if not values:
        raise ValueError(f"{name} must not be empty: there is nothing to draw")
    not_strings = [value for value in values if not isinstance(value, str)]
    if not_strings:
        raise TypeError(f"{name} must hold strings, got {not_strings[:3]!r}")
    if len(values) > max_tokens:
        raise ValueError(
            f"{name} has {len(values)} tokens; at most {max_tokens} can be drawn legibly in this figure "
            "(use a shorter sentence or a slice)"
        )
    return values


def sentence(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"sentence must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"sentence must contain at least one word, got {value!r}")
    return value


def index(name: str, value, size: int, *, what: str) -> int:
    """An integer in [0, size), where ``what`` says what is being indexed (e.g. "heads")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if not 0 <= value < size:
        raise ValueError(f"{name} must be in [0, {size}) for {size} {what}, got {value}")
    return int(value)


def seed(value) -> int:
    return _checks.non_negative_int("seed", value)


def as_numpy(name: str, array) -> np.ndarray:
    """A float64 NumPy copy of an array or torch tensor, finite."""
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().double().numpy()
    array = np.asarray(array)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    array = array.astype(np.float64)
    _checks.floating_array(name, array)
    return array
