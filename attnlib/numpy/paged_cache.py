"""The paged KV cache on NumPy arrays (the block tables, free list and checks are in ``attnlib._paged_cache``)."""

from __future__ import annotations

import numpy as np

from .. import _checks, _paged_cache
from ._module import floating_dtype

__all__ = ["PagedKVCache", "OutOfBlocksError"]


class OutOfBlocksError(_paged_cache.OutOfBlocksError):
    __doc__ = _paged_cache.OutOfBlocksError.__doc__


class PagedKVCache(_paged_cache.PagedKVCache):
    __doc__ = _paged_cache.PagedKVCache.__doc__
    out_of_blocks = OutOfBlocksError

    def __init__(self, n_blocks: int, n_kv_heads: int, d_head: int, *, block_size: int = 16, n_layers: int = 1,
                 dtype=np.float64):
        """A pool of ``n_blocks`` blocks of ``block_size`` positions per layer, every block free, no sequence."""
        self._setup(n_blocks, n_kv_heads, d_head, block_size, n_layers, dtype, device=None)

    @staticmethod
    def _zeros(shape, dtype, device):
        return np.zeros(shape, dtype=dtype)

    def _index(self, blocks):
        return np.asarray(blocks, dtype=np.intp)

    @staticmethod
    def _take(pools, index):
        return np.take(pools, index, axis=-4)  # (..., blocks, H, block_size, d)

    @staticmethod
    def _as_array(name, x):
        return _checks.numpy_array(name, x)

    @staticmethod
    def _nbytes(x) -> int:
        return x.nbytes

    @staticmethod
    def _dtype(dtype):
        return floating_dtype(dtype)
