"""Scaled dot-product attention: masks (causal, sliding window, key padding), an additive bias, grouped heads."""

from __future__ import annotations

import numpy as np

from .. import _checks, _settings
from .softmax import _softmax


def causal_mask(n_q: int, n_k: int | None = None, *, window: int | None = None) -> np.ndarray:
    """Boolean (n_q, n_k) mask, True where query i may attend to key j.

    Aligned bottom-right: query i sits at absolute position p = i + (n_k - n_q), so the last query sees every key.
    With n_q == n_k this is the usual lower triangle; with n_q = 1 (decoding with a KV cache) it is all True.
    ``window=w`` keeps only the w most recent keys, the query's own included: p - w < j <= p (a band).
    """
    n_q = _checks.positive_int("n_q", n_q)
    n_k = n_q if n_k is None else _checks.positive_int("n_k", n_k)
    window = _checks.window(window, causal=True)
    if n_k < n_q:
        raise ValueError(f"causal_mask needs n_k >= n_q (queries are the last n_q positions), got n_q={n_q}, n_k={n_k}")
    position = np.arange(n_q)[:, None] + (n_k - n_q)  # (n_q, 1): each query's absolute position p
    key = np.arange(n_k)[None, :]  # (1, n_k)
    allowed = key <= position
    if window is not None:
        allowed &= key > position - window  # forget keys older than the window
    return allowed


def attention(q, k, v, *, mask=None, key_mask=None, causal=False, window=None, bias=None, scale=None):
    """softmax(q k^T * scale + bias, masked) v.

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v), weights (..., n_q, n_k).
    ``scale`` defaults to 1/sqrt(d_k). Four ways to hide keys, combined with "and":
    ``mask`` boolean, True = may attend, broadcastable to the weights (..., n_q, n_k);
    ``key_mask`` boolean (..., n_k), True = a real token (False = padding), its ``...`` broadcastable to the batch
    dimensions of q and k -- PyTorch's ``key_padding_mask`` is the opposite (True = ignore);
    ``causal`` hides the future, aligned bottom-right (the last query sees every key);
    ``window=w`` (with ``causal``) also hides keys more than w - 1 positions before the query (sliding window).
    ``bias``: finite floats of q's dtype, broadcastable to the weights, added to the scaled scores (ALiBi, relative
    positions); use the masks, not -inf, to hide keys.
    Grouped-query attention: q (..., H, n_q, d) with k, v (..., H_kv, n_k, d) and H a multiple of H_kv; query head h
    reads key/value head h // (H // H_kv) (H_kv = 1 is multi-query attention). Masks and bias still address the H
    query heads, and the weights are (..., H, n_q, n_k).
    A query whose keys are all hidden gets zero weights and a zero output (documented, never NaN); scores that
    overflow raise ``OverflowError`` (see ``attnlib.set_finite_checks``).
    """
    q, k, v = (_checks.numpy_array(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v, grouped=True)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = _checks.causal_fits(causal, n_q, n_k, f"q {q.shape} and k {k.shape}")
    window = _checks.window(window, causal)
    batch_shape = _checks.heads_of(q, k, v)  # (..., H): the weights' batch dimensions
    if mask is not None:
        mask = _checks.numpy_array("mask", mask)
        _checks.mask(mask, batch_shape + (n_q, n_k))
    if key_mask is not None:
        key_mask = _checks.numpy_array("key_mask", key_mask)
        _checks.key_mask(key_mask, batch_shape, n_k)
        key_mask = key_mask[..., None, :]  # (..., 1, n_k): the same keys are hidden from every query
    if bias is not None:
        bias = _checks.bias(_checks.numpy_array("bias", bias), batch_shape + (n_q, n_k), q.dtype)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    return _attention(q, k, v, visible(n_q, n_k, causal, mask, key_mask, window=window), scale, bias)


def visible(n_q: int, n_k: int, causal: bool, *masks, window: int | None = None) -> np.ndarray | None:
    """Which keys each query may attend: the causal triangle (or band, with ``window``) and the given boolean masks,
    combined ("and").

    None means "every key": a single query is the newest position and sees every key, so causal adds nothing --
    unless a window shorter than the keys hides the oldest ones.
    """
    hides_something = causal and (n_q > 1 or (window is not None and window < n_k))
    allowed = causal_mask(n_q, n_k, window=window) if hides_something else None
    for mask in masks:
        if mask is not None:
            allowed = mask if allowed is None else allowed & mask
    return allowed


def _attention(q, k, v, allowed, scale: float, bias=None):
    """The computation, on checked arguments: ``allowed`` is a boolean mask broadcastable to the scores, or None;
    ``bias`` is added to the scaled scores. Grouped query heads are attended in their groups, never by copying k, v.
    """
    if _checks.is_grouped(q, k):
        h_kv = k.shape[-3]
        q = _split_groups(q, h_kv)  # (..., H_kv, G, n_q, d): the G query heads that share one key/value head
        k, v = k[..., None, :, :], v[..., None, :, :]  # (..., H_kv, 1, n_k, d): broadcast over G, not copied
        allowed, bias = _split_groups(allowed, h_kv), _split_groups(bias, h_kv)
        output, weights = _attention(q, k, v, allowed, scale, bias)  # (..., H_kv, G, n_q, d_v), (..., n_q, n_k)
        return _merge_groups(output), _merge_groups(weights)  # (..., H, n_q, d_v), (..., H, n_q, n_k)
    # Scale q before the product, as the FlashAttention papers do: q·k can overflow float16 when (q·scale)·k does not.
    with np.errstate(over="ignore"):  # an overflow is reported below, by the policy of _check_scores
        scores = (q * np.asarray(scale, dtype=q.dtype)) @ np.swapaxes(k, -1, -2)  # (..., n_q, n_k): query-key match
        if bias is not None:
            scores = scores + bias  # e.g. ALiBi's distance penalty; finite, so the masks below stay the only -inf
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)  # -inf before softmax = exactly zero weight after
    if _settings.finite_checks():
        _check_scores(scores, allowed)
    weights = _softmax(scores, axis=-1).astype(q.dtype)
    return weights @ v, weights


def _split_groups(x, n_kv_heads: int):
    """Something addressed by query head, (..., H or 1, rows, cols), as (..., H_kv, G or 1, rows, cols)."""
    if x is None or x.ndim < 3:
        return x  # (rows, cols) broadcasts over every head as it is
    if x.shape[-3] == 1:
        return x[..., None, :, :]  # (..., 1, 1, rows, cols): the same for every head
    return x.reshape(*x.shape[:-3], n_kv_heads, x.shape[-3] // n_kv_heads, *x.shape[-2:])  # (..., H_kv, G, r, c)


def _merge_groups(x):
    """(..., H_kv, G, rows, cols) -> (..., H_kv * G, rows, cols): query head h = kv head * G + g."""
    return x.reshape(*x.shape[:-4], x.shape[-4] * x.shape[-3], *x.shape[-2:])  # (..., H, rows, cols)


def _check_scores(scores, allowed) -> None:
    """One overflow policy for attention and flash_attention: +inf/NaN raise; so does a row that is -inf by overflow."""
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise _checks.scores_overflowed(scores.dtype)
    nothing_finite = np.isneginf(scores).all(axis=-1)  # (..., n_q)
    if allowed is not None:
        nothing_finite &= np.broadcast_to(allowed, scores.shape).any(axis=-1)  # a truly masked row is fine
    if nothing_finite.any():
        raise _checks.scores_underflowed(scores.dtype, int(nothing_finite.sum()))
