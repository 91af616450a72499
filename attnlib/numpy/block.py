"""One Transformer layer: attention and feed-forward sub-layers, each wrapped in Add & Norm."""

from __future__ import annotations

import numpy as np

from .. import _checks, _doors
from .._bookkeeping import BlockBookkeeping
from .._config import TransformerBlockConfig
from ._module import FromTorch, Module, floating_dtype, make_rng
from .feedforward import FeedForward
from .kv_cache import KVCache, LayerCache
from .layernorm import LayerNorm
from .multihead import MultiHeadAttention


class TransformerBlock(BlockBookkeeping, FromTorch, Module):
    """Post-LN by default, x = norm(x + sublayer(x)); pre-LN with ``norm_first=True``, x = x + sublayer(norm(x)).

    Attribute names follow ``torch.nn.TransformerEncoderLayer`` (``norm1``, ``norm2``, ``norm_first``).
    """

    Config = TransformerBlockConfig

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, norm_first: bool = False,
                 activation: str = "relu", eps: float = 1e-5, bias: bool = True, n_kv_heads: int | None = None,
                 positional: str = "none", window: int | None = None, seed=None, dtype=np.float64):
        config = self._configure(d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm_first=norm_first,
                                 activation=activation, eps=eps, bias=bias, n_kv_heads=n_kv_heads,
                                 positional=positional, window=window)
        dtype, rng = floating_dtype(dtype), make_rng(seed)
        self.attention = MultiHeadAttention(**vars(config.attention()), seed=rng, dtype=dtype)
        self.feed_forward = FeedForward(**vars(config.feed_forward()), seed=rng, dtype=dtype)
        self.norm1 = LayerNorm(**vars(config.norm()), dtype=dtype)
        self.norm2 = LayerNorm(**vars(config.norm()), dtype=dtype)

    def __call__(self, x, *, causal=False, mask=None, key_mask=None, kv_cache: LayerCache | None = None):
        """x (..., n, d_model) -> (..., n, d_model): attention, then the feed-forward network, each with Add & Norm.

        ``causal``, ``mask``, ``key_mask`` and ``kv_cache`` mean what they mean for ``MultiHeadAttention`` (as do
        the constructor's ``n_kv_heads``, ``positional`` and ``window``);
        ``last_weights`` afterwards holds the attention weights (..., n_heads, n, n_k).
        """
        x = _checks.module_input("x", _checks.numpy_array("x", x), width=self.d_model, dtype=self.dtype, min_ndim=2)
        causal, mask, key_mask = _doors.attention_call(
            x.shape, n_heads=self.n_heads, d_head=self.attention.d_head, dtype=self.dtype, device=None,
            causal=causal, mask=mask, key_mask=key_mask, kv_cache=kv_cache, as_array=_checks.numpy_array,
            layer_cache_class=LayerCache, kv_cache_class=KVCache, n_kv_heads=self.n_kv_heads, window=self.window,
        )
        return self._forward(x, causal, mask, key_mask, kv_cache)

    def _forward(self, x, causal, mask, key_mask, kv_cache):
        def attend(h):
            return self.attention._forward(h, causal, mask, key_mask, kv_cache)

        if self.norm_first:
            x = x + attend(self.norm1._forward(x))
            return x + self.feed_forward._forward(self.norm2._forward(x))
        x = self.norm1._forward(x + attend(x))  # Add & Norm
        return self.norm2._forward(x + self.feed_forward._forward(x))  # Add & Norm
