"""One Transformer layer: attention and feed-forward sub-layers, each wrapped in Add & Norm."""

from __future__ import annotations

import numpy as np

from .._bookkeeping import BlockBookkeeping
from ._module import Module, make_rng
from .feedforward import FeedForward
from .layernorm import LayerNorm
from .multihead import MultiHeadAttention


class TransformerBlock(BlockBookkeeping, Module):
    """Post-LN by default, x = norm(x + sublayer(x)); pre-LN with ``norm_first=True``, x = x + sublayer(norm(x)).

    Attribute names follow ``torch.nn.TransformerEncoderLayer`` (``norm1``, ``norm2``, ``norm_first``).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, norm_first: bool = False,
                 activation: str = "relu", eps: float = 1e-5, seed=None, dtype=np.float64):
        rng = make_rng(seed)
        self.norm_first = bool(norm_first)
        self.attention = MultiHeadAttention(d_model, n_heads, seed=rng, dtype=dtype)
        self.feed_forward = FeedForward(d_model, d_ff, activation=activation, seed=rng, dtype=dtype)
        self.norm1 = LayerNorm(d_model, eps=eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=eps, dtype=dtype)

    def __call__(self, x, *, causal=False, mask=None, kv_cache=None):
        x = np.asarray(x)
        def attend(h):
            return self.attention(h, causal=causal, mask=mask, kv_cache=kv_cache)
        if self.norm_first:
            x = x + attend(self.norm1(x))
            return x + self.feed_forward(self.norm2(x))
        x = self.norm1(x + attend(x))  # Add & Norm
        return self.norm2(x + self.feed_forward(x))  # Add & Norm
