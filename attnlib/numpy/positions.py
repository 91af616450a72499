"""Where a token is: sinusoidal position vectors, rotary embeddings (RoPE) and ALiBi's linear distance bias.

Three answers to one question. Sinusoidal vectors (Vaswani et al. 2017) are *added* to the token embeddings, once.
RoPE (Su et al. 2021) *turns* every query and key by an angle proportional to its position, so the score q·k depends
only on how far apart the two tokens are. ALiBi (Press et al. 2022) adds nothing to the tokens: it subtracts
slope x distance from each score, a bias for ``attention(..., bias=)``.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from ._module import floating_dtype


def rope_angles(positions, d: int, *, base: float = 10000.0) -> np.ndarray:
    """The angles theta[p, i] = position_p * base^(-2i/d), shape (n, d/2), in float64.

    Pair i turns at its own frequency: the first pairs fast (they tell neighbours apart), the last ones slowly
    (they still change across long distances).
    """
    positions = _checks.numpy_array("positions", positions)
    _checks.positions("positions", positions)
    d = _checks.positive_int("d", d)
    if d % 2:
        raise ValueError(f"d must be even (rotary embeddings turn pairs of features), got {d}")
    base = _checks.positive_float("base", base)
    return _angles(positions, d, base)


def _angles(positions, d: int, base: float) -> np.ndarray:
    frequencies = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,): one speed per pair
    return positions.astype(np.float64)[:, None] * frequencies[None, :]  # (n, d/2)


def apply_rope(x, positions, *, base: float = 10000.0, interleaved: bool = False) -> np.ndarray:
    """Rotate x (..., n, d) so that row r is turned by the angles of position ``positions[r]``; same shape and dtype.

    Each pair of features is a point in a plane, turned by its angle. ``interleaved=False`` (the default, Llama's and
    Hugging Face's "rotate half" layout) pairs feature i with feature i + d/2; ``interleaved=True`` (the RoFormer
    paper's layout) pairs features 2i and 2i + 1. The two are the same rotation up to a fixed reordering of the
    features, so a checkpoint must be run in the layout it was trained in. Rotations keep lengths, and the dot
    product of a query turned to position p and a key turned to position p' depends only on p - p'.
    """
    x = _checks.floating_array("x", _checks.numpy_array("x", x), min_ndim=2)
    d = _checks.even_features("x", x)
    positions = _checks.numpy_array("positions", positions)
    _checks.positions("positions", positions, x.shape[-2])
    base = _checks.positive_float("base", base)
    interleaved = _checks.flag("interleaved", interleaved)
    return _apply_rope(x, _angles(positions, d, base), interleaved)


def _apply_rope(x, angles, interleaved: bool):
    """The rotation, on checked arguments: ``angles`` (n, d/2) in float64."""
    cos, sin = np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)  # (n, d/2)
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]  # (..., n, d/2): the pairs (x_2i, x_2i+1)
    else:
        half = x.shape[-1] // 2
        first, second = x[..., :half], x[..., half:]  # (..., n, d/2): the pairs (x_i, x_i+d/2)
    turned_first = first * cos - second * sin  # a 2-D rotation of every pair by its angle
    turned_second = first * sin + second * cos
    if interleaved:
        return np.stack([turned_first, turned_second], axis=-1).reshape(x.shape)  # (..., n, d/2, 2) -> (..., n, d)
    return np.concatenate([turned_first, turned_second], axis=-1)  # (..., n, d)


def sinusoidal_positions(n: int, d: int, *, base: float = 10000.0, dtype=np.float64) -> np.ndarray:
    """The Transformer's fixed position vectors, (n, d): sin(p * base^(-2i/d)) at feature 2i, cos at 2i + 1.

    They are added to the token embeddings. Because sin and cos of a sum expand into sums of products, the vector at
    p + s is a fixed rotation of the one at p -- the same idea RoPE applies to queries and keys instead.
    """
    n, d = _checks.positive_int("n", n), _checks.positive_int("d", d)
    if d % 2:
        raise ValueError(f"d must be even (sin and cos fill pairs of features), got {d}")
    base = _checks.positive_float("base", base)
    angles = _angles(np.arange(n), d, base)  # (n, d/2)
    table = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(n, d)  # (n, d/2, 2) -> (n, d)
    return table.astype(floating_dtype(dtype))


def alibi_slopes(n_heads: int, *, dtype=np.float64) -> np.ndarray:
    """ALiBi's per-head slopes, (n_heads,): a geometric sequence so that heads see at different ranges.

    For n_heads a power of two, the slopes are r, r^2, ..., r^n with r = 2^(-8/n) (8 heads: 1/2, 1/4, ..., 1/256).
    Otherwise, Press et al. take the slopes of the nearest smaller power of two, 2^k, and complete them with every
    other slope of 2^(k+1) heads.
    """
    n_heads = _checks.positive_int("n_heads", n_heads)
    return np.array(_slopes(n_heads), dtype=floating_dtype(dtype))


def _slopes(n_heads: int) -> list[float]:
    def geometric(n):
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** (h + 1) for h in range(n)]

    power = 2 ** int(np.floor(np.log2(n_heads)))  # the largest power of two <= n_heads
    if power == n_heads:
        return geometric(n_heads)
    return geometric(power) + geometric(2 * power)[0::2][: n_heads - power]


def alibi_bias(n_heads: int, n_q: int, n_k: int | None = None, *, dtype=np.float64) -> np.ndarray:
    """ALiBi's bias (n_heads, n_q, n_k) = slope_h * (j - p) for the query at position p = i + n_k - n_q, key j.

    Aligned bottom-right like ``causal_mask``: the last query is the newest position. Past keys get a penalty that
    grows linearly with their distance, steeper for heads with larger slopes; pass it as ``attention(..., bias=)``
    together with ``causal=True`` (keys after the query would get a positive bias, which the causal mask hides).
    """
    n_heads, n_q = _checks.positive_int("n_heads", n_heads), _checks.positive_int("n_q", n_q)
    n_k = n_q if n_k is None else _checks.positive_int("n_k", n_k)
    if n_k < n_q:
        raise ValueError(f"alibi_bias needs n_k >= n_q (queries are the last n_q positions), got n_q={n_q}, n_k={n_k}")
    dtype = floating_dtype(dtype)
    distance = np.arange(n_k)[None, :] - (np.arange(n_q)[:, None] + n_k - n_q)  # (n_q, n_k): j - p, <= 0 in the past
    return (np.array(_slopes(n_heads))[:, None, None] * distance).astype(dtype)  # (H, n_q, n_k)
