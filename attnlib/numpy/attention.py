"""Scaled dot-product attention and the causal mask."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .softmax import softmax


def causal_mask(n_q: int, n_k: int | None = None) -> np.ndarray:
    """Boolean (n_q, n_k) mask, True where query i may attend to key j.

    Aligned bottom-right: query i sits at absolute position i + (n_k - n_q), so the last query sees every key.
    With n_q == n_k this is the usual lower triangle; with n_q = 1 (decoding with a KV cache) it is all True.
    """
    n_q = _checks.positive_int("n_q", n_q)
    n_k = n_q if n_k is None else _checks.positive_int("n_k", n_k)
    if n_k < n_q:
        raise ValueError(f"causal_mask needs n_k >= n_q (queries are the last n_q positions), got n_q={n_q}, n_k={n_k}")
    offset = n_k - n_q
    return np.arange(n_k)[None, :] <= np.arange(n_q)[:, None] + offset


def attention(q, k, v, *, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale, masked) v.

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v), weights (..., n_q, n_k).
    ``scale`` defaults to 1/sqrt(d_k). ``mask`` is boolean, True = may attend, broadcastable to the weights.
    A query whose keys are all masked gets zero weights and a zero output (documented, never NaN).
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale

    scores = (q @ np.swapaxes(k, -1, -2)) * scale  # (..., n_q, n_k): how well each query matches each key
    allowed = np.ones((n_q, n_k), dtype=bool)
    if causal:
        if n_k < n_q:
            raise ValueError(f"causal attention needs n_k >= n_q, got q {q.shape} and k {k.shape}")
        if n_q > 1:  # a single query is the newest position and sees every key: nothing to mask
            allowed = causal_mask(n_q, n_k)
    if mask is not None:
        mask = np.asarray(mask)
        _checks.mask(mask, scores.shape)
        allowed = allowed & mask
    scores = np.where(allowed, scores, -np.inf)  # -inf before softmax = exactly zero weight after
    weights = softmax(scores, axis=-1).astype(q.dtype)
    return weights @ v, weights
