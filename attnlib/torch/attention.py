"""Scaled dot-product attention: masks, sliding window, bias, grouped heads (twin of ``attnlib.numpy.attention``)."""

from __future__ import annotations

import math

import torch

from .. import _checks, _settings
from .softmax import _softmax


def causal_mask(n_q: int, n_k: int | None = None, *, window: int | None = None, device=None) -> torch.Tensor:
    """Boolean (n_q, n_k), True where query i may attend key j; aligned bottom-right (last query sees all).

    ``window=w`` keeps only the w most recent keys of the query at position p = i + n_k - n_q: p - w < j <= p.
    """
    n_q = _checks.positive_int("n_q", n_q)
    n_k = n_q if n_k is None else _checks.positive_int("n_k", n_k)
    window = _checks.window(window, causal=True)
    if n_k < n_q:
        raise ValueError(f"causal_mask needs n_k >= n_q (queries are the last n_q positions), got n_q={n_q}, n_k={n_k}")
    position = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)  # (n_q, 1): each query's absolute position
    key = torch.arange(n_k, device=device)[None, :]  # (1, n_k)
    allowed = key <= position
    if window is not None:
        allowed &= key > position - window  # forget keys older than the window
    return allowed


def attention(q, k, v, *, mask=None, key_mask=None, causal=False, window=None, bias=None, scale=None):
    """softmax(q k^T * scale + bias, masked) v -> (output (..., n_q, d_v), weights (..., n_q, n_k)).

    Same contract as ``attnlib.numpy.attention``: boolean ``mask`` with True = may attend; boolean ``key_mask``
    (..., n_k) with True = a real token (PyTorch's ``key_padding_mask`` is the opposite); ``causal`` aligned
    bottom-right; ``window=w`` (with ``causal``) keeps the w most recent keys; ``bias`` finite, q's dtype, added
    to the scaled scores; grouped-query attention when k, v have H_kv heads (dim -3) and q a multiple H of them,
    exactly as ``scaled_dot_product_attention(..., enable_gqa=True)``. Fully masked rows give zero weights and zero
    output; overflow raises. Differentiable.
    """
    q, k, v = (_checks.torch_tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v, grouped=True)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = _checks.causal_fits(causal, n_q, n_k, f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    window = _checks.window(window, causal)
    batch_shape = _checks.heads_of(q, k, v)  # (..., H): the weights' batch dimensions
    if mask is not None:
        mask = _checks.torch_tensor("mask", mask)
        _checks.mask(mask, batch_shape + (n_q, n_k))
        mask = mask.to(q.device)
    if key_mask is not None:
        key_mask = _checks.torch_tensor("key_mask", key_mask)
        _checks.key_mask(key_mask, batch_shape, n_k)
        key_mask = key_mask.to(q.device)[..., None, :]  # (..., 1, n_k): the same keys are hidden from every query
    if bias is not None:
        bias = _checks.bias(_checks.torch_tensor("bias", bias), batch_shape + (n_q, n_k), q.dtype).to(q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _attention(q, k, v, visible(n_q, n_k, causal, mask, key_mask, window=window, device=q.device), scale, bias)


def visible(n_q: int, n_k: int, causal: bool, *masks, window: int | None = None,
            device=None) -> torch.Tensor | None:
    """Which keys each query may attend: the causal triangle (or band, with ``window``) and the given boolean masks,
    combined ("and").

    None means "every key": a single query is the newest position and sees every key, so causal adds nothing --
    unless a window shorter than the keys hides the oldest ones.
    """
    hides_something = causal and (n_q > 1 or (window is not None and window < n_k))
    allowed = causal_mask(n_q, n_k, window=window, device=device) if hides_something else None
    for mask in masks:
        if mask is not None:
            allowed = mask if allowed is None else allowed & mask
    return allowed


def _attention(q, k, v, allowed, scale: float, bias=None):
    """The computation, on checked arguments: ``allowed`` is a boolean mask broadcastable to the scores, or None;
    ``bias`` is added to the scaled scores.

    Grouped query heads: the G query heads of one key/value head are stacked as extra query rows,
    (..., H_kv, G * n_q, d), so each product reads k and v once, as they are -- no copy per query head.
    """
    # Multi-query (one key/value head) is grouped too: broadcasting k over the heads would make matmul copy it.
    grouped = _checks.is_grouped(q, k) or (q.ndim >= 3 and k.ndim >= 3 and v.ndim >= 3
                                           and k.shape[-3] == v.shape[-3] == 1 < q.shape[-3])
    if grouped:
        h_kv, n_q = k.shape[-3], q.shape[-2]
        group = q.shape[-3] // h_kv
        q = q.reshape(*q.shape[:-3], h_kv, group * n_q, q.shape[-1])  # (..., H_kv, G * n_q, d): a view
    # Scale q before the product, as the FlashAttention papers do: q·k can overflow float16 when (q·scale)·k does not.
    scores = (q * scale) @ k.transpose(-1, -2)  # (..., H_kv, G * n_q, n_k), or (..., n_q, n_k) ungrouped
    if grouped:
        scores = scores.unflatten(-2, (group, n_q))  # (..., H_kv, G, n_q, n_k): masks and bias address query heads
        allowed, bias = _split_groups(allowed, h_kv), _split_groups(bias, h_kv)
    if bias is not None:
        scores = scores + bias  # e.g. ALiBi's distance penalty; finite, so the masks below stay the only -inf
    if allowed is not None:
        scores = torch.where(allowed, scores, float("-inf"))  # -inf before softmax = exactly zero weight after
    if _settings.finite_checks():
        _check_scores(scores.detach(), allowed)
    # With nothing masked every row has a finite maximum, and PyTorch's fused softmax computes the same
    # exp(s - max) / sum in one pass (a decoding step's query is such a row); only a mask can leave a row all -inf,
    # where the explicit version gives zeros instead of NaN.
    weights = torch.softmax(scores, dim=-1) if allowed is None else _softmax(scores, dim=-1)
    if not grouped:
        return weights @ v, weights
    output = weights.flatten(-3, -2) @ v  # (..., H_kv, G * n_q, d_v)
    output = output.unflatten(-2, (group, n_q)).flatten(-4, -3)  # (..., H, n_q, d_v)
    return output, weights.flatten(-4, -3)  # weights (..., H, n_q, n_k)


def _split_groups(x, n_kv_heads: int):
    """Something addressed by query head, (..., H or 1, rows, cols), as (..., H_kv, G or 1, rows, cols)."""
    if x is None or x.ndim < 3:
        return x  # (rows, cols) broadcasts over every head as it is
    if x.shape[-3] == 1:
        return x[..., None, :, :]  # (..., 1, 1, rows, cols): the same for every head
    return x.unflatten(-3, (n_kv_heads, x.shape[-3] // n_kv_heads))  # (..., H_kv, G, rows, cols)


def _check_scores(scores, allowed) -> None:
    """One overflow policy for attention and flash_attention: +inf/NaN raise; so does a row that is -inf by overflow."""
    if _checks._all_finite(scores):
        return  # the usual case: no NaN, no +inf, and every row has a finite score
    if bool(torch.isnan(scores).any() | torch.isposinf(scores).any()):
        raise _checks.scores_overflowed(scores.dtype)
    nothing_finite = torch.isneginf(scores).all(dim=-1)  # (..., n_q)
    if allowed is not None:
        nothing_finite &= allowed.expand(scores.shape).any(dim=-1)  # a truly masked row is fine
    if bool(nothing_finite.any()):
        raise _checks.scores_underflowed(scores.dtype, int(nothing_finite.sum()))
