"""Scaled dot-product attention, the causal mask and the key-padding mask (twin of ``attnlib.numpy.attention``)."""

from __future__ import annotations

import math

import torch

from .. import _checks, _settings
from .softmax import _softmax


def causal_mask(n_q: int, n_k: int | None = None, *, device=None) -> torch.Tensor:
    """Boolean (n_q, n_k), True where query i may attend key j; aligned bottom-right (last query sees all)."""
    n_q = _checks.positive_int("n_q", n_q)
    n_k = n_q if n_k is None else _checks.positive_int("n_k", n_k)
    if n_k < n_q:
        raise ValueError(f"causal_mask needs n_k >= n_q (queries are the last n_q positions), got n_q={n_q}, n_k={n_k}")
    offset = n_k - n_q
    return torch.arange(n_k, device=device)[None, :] <= torch.arange(n_q, device=device)[:, None] + offset


def attention(q, k, v, *, mask=None, key_mask=None, causal=False, scale=None):
    """softmax(q k^T * scale, masked) v -> (output (..., n_q, d_v), weights (..., n_q, n_k)).

    Same contract as ``attnlib.numpy.attention``: boolean ``mask`` with True = may attend; boolean ``key_mask``
    (..., n_k) with True = a real token (PyTorch's ``key_padding_mask`` is the opposite); ``causal`` aligned
    bottom-right; fully masked rows give zero weights and zero output; overflow raises. Differentiable.
    """
    q, k, v = (_checks.torch_tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = _checks.causal_fits(causal, n_q, n_k, f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    batch_shape = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    if mask is not None:
        mask = _checks.torch_tensor("mask", mask)
        _checks.mask(mask, batch_shape + (n_q, n_k))
        mask = mask.to(q.device)
    if key_mask is not None:
        key_mask = _checks.torch_tensor("key_mask", key_mask)
        _checks.key_mask(key_mask, batch_shape, n_k)
        key_mask = key_mask.to(q.device)[..., None, :]  # (..., 1, n_k): the same keys are hidden from every query
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _attention(q, k, v, visible(n_q, n_k, causal, mask, key_mask, device=q.device), scale)


def visible(n_q: int, n_k: int, causal: bool, *masks, device=None) -> torch.Tensor | None:
    """Which keys each query may attend: the causal triangle and the given boolean masks, combined ("and").

    None means "every key": a single query is the newest position and sees every key, so causal adds nothing.
    """
    allowed = causal_mask(n_q, n_k, device=device) if causal and n_q > 1 else None
    for mask in masks:
        if mask is not None:
            allowed = mask if allowed is None else allowed & mask
    return allowed


def _attention(q, k, v, allowed, scale: float):
    """The computation, on checked arguments: ``allowed`` is a boolean mask broadcastable to the scores, or None."""
    # Scale q before the product, as the FlashAttention papers do: q·k can overflow float16 when (q·scale)·k does not.
    scores = (q * scale) @ k.transpose(-1, -2)  # (..., n_q, n_k)
    if allowed is not None:
        scores = torch.where(allowed, scores, float("-inf"))  # -inf before softmax = exactly zero weight after
    if _settings.finite_checks():
        _check_scores(scores.detach(), allowed)
    weights = _softmax(scores, dim=-1)
    return weights @ v, weights


def _check_scores(scores, allowed) -> None:
    """One overflow policy for attention and flash_attention: +inf/NaN raise; so does a row that is -inf by overflow."""
    if bool(torch.isnan(scores).any() | torch.isposinf(scores).any()):
        raise _checks.scores_overflowed(scores.dtype)
    nothing_finite = torch.isneginf(scores).all(dim=-1)  # (..., n_q)
    if allowed is not None:
        nothing_finite &= allowed.expand(scores.shape).any(dim=-1)  # a truly masked row is fine
    if bool(nothing_finite.any()):
        raise _checks.scores_underflowed(scores.dtype, int(nothing_finite.sum()))
