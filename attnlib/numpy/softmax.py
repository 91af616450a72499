"""Numerically stable softmax."""

from __future__ import annotations

import numpy as np

from .. import _checks


def softmax(x, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along ``axis``.

    Subtracting the row maximum changes nothing mathematically (it cancels in the ratio) but keeps every
    exponent <= 0, so ``exp`` cannot overflow. Entries equal to -inf (masked positions) get weight 0; a row
    that is entirely -inf has nothing to attend to and returns all zeros rather than 0/0 = NaN.
    """
    x = _checks.scores("x", _checks.numpy_array("x", x))
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an integer in [{-x.ndim}, {x.ndim}) for x of shape {x.shape}, got {axis!r}")
    return _softmax(x, axis)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf row: any finite shift works, exp gives zeros
    e = np.exp(x - m)
    total = np.sum(e, axis=axis, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)
