"""The KV cache on torch tensors (the shared logic is in ``attnlib._kv_cache``)."""

from __future__ import annotations

import torch

from .. import _checks, _kv_cache


class LayerCache(_kv_cache.LayerCache):
    __doc__ = _kv_cache.LayerCache.__doc__

    @staticmethod
    def _empty(like, shape):
        return like.new_empty(shape)  # like's dtype and device

    @staticmethod
    def _fresh_buffer_needed(buffer, k, v) -> bool:
        # When gradients flow through the cache, writing into a buffer that earlier steps' views were read from would
        # change tensors autograd saved; a new buffer per call keeps them intact (as concatenation would).
        return torch.is_grad_enabled() and (k.requires_grad or v.requires_grad
                                            or (buffer is not None and buffer.requires_grad))

    @staticmethod
    def _nbytes(x) -> int:
        return x.numel() * x.element_size()

    @staticmethod
    def _as_array(name, x):
        return _checks.torch_tensor(name, x)


class KVCache(_kv_cache.KVCache):
    __doc__ = _kv_cache.KVCache.__doc__
    layer_class = LayerCache
