"""Scaled dot-product attention, the causal mask, and the key-padding mask."""

from __future__ import annotations

import numpy as np

from .. import _checks, _settings
from .softmax import _softmax


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


def attention(q, k, v, *, mask=None, key_mask=None, causal=False, scale=None):
    """softmax(q k^T * scale, masked) v.

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v), weights (..., n_q, n_k).
    ``scale`` defaults to 1/sqrt(d_k). Three ways to hide keys, combined with "and":
    ``mask`` boolean, True = may attend, broadcastable to the weights (..., n_q, n_k);
    ``key_mask`` boolean (..., n_k), True = a real token (False = padding), its ``...`` broadcastable to the batch
    dimensions of q and k -- PyTorch's ``key_padding_mask`` is the opposite (True = ignore);
    ``causal`` hides the future, aligned bottom-right (the last query sees every key).
    A query whose keys are all hidden gets zero weights and a zero output (documented, never NaN); scores that
    overflow raise ``OverflowError`` (see ``attnlib.set_finite_checks``).
    """
    q, k, v = (_checks.numpy_array(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = _checks.causal_fits(causal, n_q, n_k, f"q {q.shape} and k {k.shape}")
    batch_shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if mask is not None:
        mask = _checks.numpy_array("mask", mask)
        _checks.mask(mask, batch_shape + (n_q, n_k))
    if key_mask is not None:
        key_mask = _checks.numpy_array("key_mask", key_mask)
        _checks.key_mask(key_mask, batch_shape, n_k)
        key_mask = key_mask[..., None, :]  # (..., 1, n_k): the same keys are hidden from every query
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    return _attention(q, k, v, visible(n_q, n_k, causal, mask, key_mask), scale)


def visible(n_q: int, n_k: int, causal: bool, *masks) -> np.ndarray | None:
    """Which keys each query may attend: the causal triangle and the given boolean masks, combined ("and").

    None means "every key": a single query is the newest position and sees every key, so causal adds nothing.
    """
    allowed = causal_mask(n_q, n_k) if causal and n_q > 1 else None
    for mask in masks:
        if mask is not None:
            allowed = mask if allowed is None else allowed & mask
    return allowed


def _attention(q, k, v, allowed, scale: float):
    """The computation, on checked arguments: ``allowed`` is a boolean mask broadcastable to the scores, or None."""
    # Scale q before the product, as the FlashAttention papers do: q·k can overflow float16 when (q·scale)·k does not.
    with np.errstate(over="ignore"):  # an overflow is reported below, by the policy of _check_scores
        scores = (q * np.asarray(scale, dtype=q.dtype)) @ np.swapaxes(k, -1, -2)  # (..., n_q, n_k): query-key match
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)  # -inf before softmax = exactly zero weight after
    if _settings.finite_checks():
        _check_scores(scores, allowed)
    weights = _softmax(scores, axis=-1).astype(q.dtype)
    return weights @ v, weights


def _check_scores(scores, allowed) -> None:
    """One overflow policy for attention and flash_attention: +inf/NaN raise; so does a row that is -inf by overflow."""
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise _checks.scores_overflowed(scores.dtype)
    nothing_finite = np.isneginf(scores).all(axis=-1)  # (..., n_q)
    if allowed is not None:
        nothing_finite &= np.broadcast_to(allowed, scores.shape).any(axis=-1)  # a truly masked row is fine
    if nothing_finite.any():
        raise _checks.scores_underflowed(scores.dtype, int(nothing_finite.sum()))
