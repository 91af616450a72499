"""Scaled dot-product attention and the causal mask (Torch twin of ``attnlib.numpy.attention``)."""

from __future__ import annotations

import math

import torch

from .. import _checks
from .softmax import softmax


def causal_mask(n_q: int, n_k: int | None = None, *, device=None) -> torch.Tensor:
    """Boolean (n_q, n_k), True where query i may attend key j; aligned bottom-right (last query sees all)."""
    n_q = _checks.positive_int("n_q", n_q)
    n_k = n_q if n_k is None else _checks.positive_int("n_k", n_k)
    if n_k < n_q:
        raise ValueError(f"causal_mask needs n_k >= n_q (queries are the last n_q positions), got n_q={n_q}, n_k={n_k}")
    offset = n_k - n_q
    return torch.arange(n_k, device=device)[None, :] <= torch.arange(n_q, device=device)[:, None] + offset


def attention(q, k, v, *, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale, masked) v -> (output (..., n_q, d_v), weights (..., n_q, n_k)).

    Same contract as ``attnlib.numpy.attention``: boolean ``mask`` with True = may attend, ``causal`` aligned
    bottom-right, fully masked rows give zero weights and zero output. Differentiable.
    """
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    scores = (q @ k.transpose(-1, -2)) * scale  # (..., n_q, n_k)
    allowed = None
    if causal:
        if n_k < n_q:
            raise ValueError(f"causal attention needs n_k >= n_q, got q {tuple(q.shape)} and k {tuple(k.shape)}")
        if n_q > 1:  # a single query is the newest position and sees every key: nothing to mask
            allowed = causal_mask(n_q, n_k, device=q.device)
    if mask is not None:
        _checks.mask(mask, scores.shape)
        mask = mask.to(q.device)
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = softmax(scores, dim=-1)
    return weights @ v, weights
