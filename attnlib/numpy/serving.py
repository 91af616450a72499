"""Continuous batching over a paged KV cache with NumPy arrays (the loop itself is in ``attnlib._serving``)."""

from __future__ import annotations

import contextlib

import numpy as np

from .. import _checks, _serving
from .paged_cache import PagedKVCache

__all__ = ["serve", "Request", "ServingTrace"]


class Request(_serving.Request):
    __doc__ = _serving.Request.__doc__


class ServingTrace(_serving.ServingTrace):
    __doc__ = _serving.ServingTrace.__doc__


class _NumPy:
    """What the serving loop needs from this namespace."""

    as_array = staticmethod(_checks.numpy_array)
    cache_class = PagedKVCache
    trace_class = ServingTrace
    no_grad = staticmethod(contextlib.nullcontext)

    @staticmethod
    def device(model) -> dict:
        return {}

    @staticmethod
    def on_model(model, ids):
        return ids

    @staticmethod
    def argmax_last(logits):
        return logits[0, -1].argmax(keepdims=True)  # (1,): the greedy choice after the last position

    @staticmethod
    def concatenate(tokens, next_id):
        return np.concatenate([tokens, next_id.astype(tokens.dtype)])


def serve(model, requests, *, n_blocks: int, block_size: int = 16) -> ServingTrace:
    """Serve ``requests`` (a list of :class:`Request`) with ``model`` (a causal ``TransformerLM``) step by step.

    At every step, requests that have arrived join when the paged cache (``n_blocks`` blocks of ``block_size``
    positions, one pool per layer) can hold their whole length; every running sequence advances one greedy token;
    finished ones leave and free their blocks for the next step. Returns a :class:`ServingTrace`; its ``tokens[r]``
    equal ``model.generate(prompt, n_new)`` for request r alone. See ``attnlib._serving`` for what this loop
    simplifies.
    """
    return _serving.serve(model, requests, n_blocks=n_blocks, block_size=block_size, namespace=_NumPy)
