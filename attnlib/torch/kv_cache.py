"""The KV cache on torch tensors (the shared logic is in ``attnlib._kv_cache``)."""

from __future__ import annotations

import torch

from .. import _checks, _kv_cache


class LayerCache(_kv_cache.LayerCache):
    __doc__ = _kv_cache.LayerCache.__doc__

    @staticmethod
    def _concatenate(old, new):
        return torch.cat([old, new], dim=-2)  # along the positions axis

    @staticmethod
    def _last(x, n):
        return x[..., -n:, :].clone()  # a copy, so the dropped positions' memory is freed

    @staticmethod
    def _nbytes(x) -> int:
        return x.numel() * x.element_size()

    @staticmethod
    def _as_array(name, x):
        return _checks.torch_tensor(name, x)


class KVCache(_kv_cache.KVCache):
    __doc__ = _kv_cache.KVCache.__doc__
    layer_class = LayerCache
