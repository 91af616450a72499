"""The KV cache on NumPy arrays (the shared logic is in ``attnlib._kv_cache``)."""

from __future__ import annotations

import numpy as np

from .. import _checks, _kv_cache


class LayerCache(_kv_cache.LayerCache):
    __doc__ = _kv_cache.LayerCache.__doc__

    @staticmethod
    def _empty(like, shape):
        return np.empty(shape, dtype=like.dtype)

    @staticmethod
    def _nbytes(x) -> int:
        return x.nbytes

    @staticmethod
    def _as_array(name, x):
        return _checks.numpy_array(name, x)


class KVCache(_kv_cache.KVCache):
    __doc__ = _kv_cache.KVCache.__doc__
    layer_class = LayerCache
