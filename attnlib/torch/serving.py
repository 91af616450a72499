"""Continuous batching over a paged KV cache with torch tensors (the loop itself is in ``attnlib._serving``)."""

from __future__ import annotations

import torch

from .. import _checks, _serving
from .paged_cache import PagedKVCache

__all__ = ["serve", "Request", "ServingTrace"]


class Request(_serving.Request):
    __doc__ = _serving.Request.__doc__


class ServingTrace(_serving.ServingTrace):
    __doc__ = _serving.ServingTrace.__doc__


class _Torch:
    """What the serving loop needs from this namespace."""

    as_array = staticmethod(_checks.torch_tensor)
    cache_class = PagedKVCache
    trace_class = ServingTrace
    no_grad = staticmethod(torch.no_grad)

    @staticmethod
    def device(model) -> dict:
        return {"device": model.device}

    @staticmethod
    def on_model(model, ids):
        return ids.to(model.device)

    @staticmethod
    def argmax_last(logits):
        return logits[0, -1].argmax(dim=-1, keepdim=True)  # (1,): the greedy choice after the last position

    @staticmethod
    def concatenate(tokens, next_id):
        return torch.cat([tokens, next_id.to(tokens.dtype)])


def serve(model, requests, *, n_blocks: int, block_size: int = 16) -> ServingTrace:
    """Serve ``requests`` (a list of :class:`Request`) with ``model`` (a causal ``TransformerLM``) step by step.

    Twin of ``attnlib.numpy.serve``: continuous batching over a paged cache on the model's device and dtype;
    ``tokens[r]`` of the returned :class:`ServingTrace` equal ``model.generate(prompt, n_new)`` for request r.
    """
    return _serving.serve(model, requests, n_blocks=n_blocks, block_size=block_size, namespace=_Torch)
