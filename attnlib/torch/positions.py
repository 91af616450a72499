"""Sinusoidal positions, rotary embeddings (RoPE) and ALiBi (twin of ``attnlib.numpy.positions``)."""

from __future__ import annotations

import math

import torch

from .. import _checks
from ._module import floating_dtype


def rope_angles(positions, d: int, *, base: float = 10000.0) -> torch.Tensor:
    """The angles theta[p, i] = position_p * base^(-2i/d), shape (n, d/2), in float64 on positions' device."""
    positions = _checks.torch_tensor("positions", positions)
    _checks.positions("positions", positions)
    d = _checks.positive_int("d", d)
    if d % 2:
        raise ValueError(f"d must be even (rotary embeddings turn pairs of features), got {d}")
    base = _checks.positive_float("base", base)
    return _angles(positions, d, base)


def _angles(positions, d: int, base: float) -> torch.Tensor:
    exponents = torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d
    frequencies = base ** -exponents  # (d/2,): one speed per pair
    return positions.to(torch.float64)[:, None] * frequencies[None, :]  # (n, d/2)


def apply_rope(x, positions, *, base: float = 10000.0, interleaved: bool = False) -> torch.Tensor:
    """Rotate x (..., n, d) so that row r is turned by the angles of position ``positions[r]``; same shape and dtype.

    ``interleaved=False`` (default): Llama's "rotate half" layout, feature i paired with i + d/2;
    ``interleaved=True``: the RoFormer paper's pairs (2i, 2i + 1). Differentiable in x.
    """
    x = _checks.floating_array("x", _checks.torch_tensor("x", x), min_ndim=2)
    d = _checks.even_features("x", x)
    positions = _checks.torch_tensor("positions", positions)
    _checks.positions("positions", positions, x.shape[-2])
    base = _checks.positive_float("base", base)
    interleaved = _checks.flag("interleaved", interleaved)
    return _apply_rope(x, _angles(positions.to(x.device), d, base), interleaved)


def _apply_rope(x, angles, interleaved: bool):
    """The rotation, on checked arguments: ``angles`` (n, d/2) in float64."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (n, d/2)
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]  # (..., n, d/2): the pairs (x_2i, x_2i+1)
    else:
        first, second = x.chunk(2, dim=-1)  # (..., n, d/2): the pairs (x_i, x_i+d/2)
    turned_first = first * cos - second * sin  # a 2-D rotation of every pair by its angle
    turned_second = first * sin + second * cos
    if interleaved:
        return torch.stack([turned_first, turned_second], dim=-1).flatten(-2)  # (..., n, d/2, 2) -> (..., n, d)
    return torch.cat([turned_first, turned_second], dim=-1)  # (..., n, d)


def sinusoidal_positions(n: int, d: int, *, base: float = 10000.0, dtype=None, device=None) -> torch.Tensor:
    """The Transformer's fixed position vectors, (n, d): sin(p * base^(-2i/d)) at feature 2i, cos at 2i + 1."""
    n, d = _checks.positive_int("n", n), _checks.positive_int("d", d)
    if d % 2:
        raise ValueError(f"d must be even (sin and cos fill pairs of features), got {d}")
    base = _checks.positive_float("base", base)
    angles = _angles(torch.arange(n, device=device), d, base)  # (n, d/2)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(n, d)  # (n, d/2, 2) -> (n, d)
    return table.to(floating_dtype(dtype))


def alibi_slopes(n_heads: int, *, dtype=None, device=None) -> torch.Tensor:
    """ALiBi's per-head slopes, (n_heads,): 2^(-8/n) to the powers 1..n, completed as in Press et al. otherwise."""
    n_heads = _checks.positive_int("n_heads", n_heads)
    return torch.tensor(_slopes(n_heads), dtype=floating_dtype(dtype), device=device)


def _slopes(n_heads: int) -> list[float]:
    def geometric(n):
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** (h + 1) for h in range(n)]

    power = 2 ** int(math.floor(math.log2(n_heads)))  # the largest power of two <= n_heads
    if power == n_heads:
        return geometric(n_heads)
    return geometric(power) + geometric(2 * power)[0::2][: n_heads - power]


def alibi_bias(n_heads: int, n_q: int, n_k: int | None = None, *, dtype=None, device=None) -> torch.Tensor:
    """ALiBi's bias (n_heads, n_q, n_k) = slope_h * (j - p), p = i + n_k - n_q (bottom-right, like causal_mask)."""
    n_heads, n_q = _checks.positive_int("n_heads", n_heads), _checks.positive_int("n_q", n_q)
    n_k = n_q if n_k is None else _checks.positive_int("n_k", n_k)
    if n_k < n_q:
        raise ValueError(f"alibi_bias needs n_k >= n_q (queries are the last n_q positions), got n_q={n_q}, n_k={n_k}")
    key = torch.arange(n_k, device=device)[None, :]  # (1, n_k)
    position = torch.arange(n_q, device=device)[:, None] + n_k - n_q  # (n_q, 1)
    distance = (key - position).to(torch.float64)  # (n_q, n_k): j - p, <= 0 in the past
    slopes = torch.tensor(_slopes(n_heads), dtype=torch.float64, device=device)
    return (slopes[:, None, None] * distance).to(floating_dtype(dtype))  # (H, n_q, n_k)
