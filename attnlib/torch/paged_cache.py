"""The paged KV cache on torch tensors (the block tables, free list and checks are in ``attnlib._paged_cache``)."""

from __future__ import annotations

import torch

from .. import _checks, _paged_cache
from ._module import floating_dtype

__all__ = ["PagedKVCache", "OutOfBlocksError"]


class OutOfBlocksError(_paged_cache.OutOfBlocksError):
    __doc__ = _paged_cache.OutOfBlocksError.__doc__


class PagedKVCache(_paged_cache.PagedKVCache):
    __doc__ = _paged_cache.PagedKVCache.__doc__
    out_of_blocks = OutOfBlocksError

    def __init__(self, n_blocks: int, n_kv_heads: int, d_head: int, *, block_size: int = 16, n_layers: int = 1,
                 dtype=None, device=None):
        """A pool of ``n_blocks`` blocks of ``block_size`` positions per layer, every block free, no sequence."""
        self._setup(n_blocks, n_kv_heads, d_head, block_size, n_layers, dtype, device=device)

    @staticmethod
    def _zeros(shape, dtype, device):
        return torch.zeros(shape, dtype=dtype, device=device)

    def _index(self, blocks):
        return torch.tensor(blocks, dtype=torch.long, device=self.key_pool.device)

    @staticmethod
    def _take(pools, index):
        return pools.index_select(-4, index)  # (..., blocks, H, block_size, d)

    @staticmethod
    def _as_array(name, x):
        return _checks.torch_tensor(name, x)

    @staticmethod
    def _nbytes(x) -> int:
        return x.numel() * x.element_size()

    @staticmethod
    def _dtype(dtype):
        return floating_dtype(dtype)
