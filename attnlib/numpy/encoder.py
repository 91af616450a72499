"""A BERT-style encoder: token, position and token-type embeddings, a LayerNorm, then a stack of blocks.

It has no output head: it returns the last hidden states, one vector per token, which is what a sentence-embedding
model such as all-MiniLM-L6-v2 is used for (averaged over the real tokens by ``mean_pool``).
"""

from __future__ import annotations

import numpy as np

from .. import _checks, _doors
from .._bookkeeping import EncoderBookkeeping
from .._config import TransformerEncoderConfig
from ._module import Module, floating_dtype, make_rng
from .block import TransformerBlock
from .layernorm import LayerNorm


class TransformerEncoder(EncoderBookkeeping, Module):
    """Embeddings (token + position + token type) -> LayerNorm -> ``n_layers`` blocks (post-LN by default)."""

    Config = TransformerEncoderConfig

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, max_len: int, *,
                 n_token_types: int = 2, norm_first: bool = False, activation: str = "gelu", eps: float = 1e-12,
                 bias: bool = True, seed=None, dtype=np.float64):
        config = self._configure(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                                 n_layers=n_layers, max_len=max_len, n_token_types=n_token_types,
                                 norm_first=norm_first, activation=activation, eps=eps, bias=bias)
        dtype, rng = floating_dtype(dtype), make_rng(seed)
        self.token_embedding = (rng.standard_normal((vocab_size, d_model)) * 0.02).astype(dtype)
        self.position_embedding = (rng.standard_normal((max_len, d_model)) * 0.02).astype(dtype)
        self.token_type_embedding = (rng.standard_normal((n_token_types, d_model)) * 0.02).astype(dtype)
        self.embedding_norm = LayerNorm(**vars(config.block().norm()), dtype=dtype)
        self.blocks = [TransformerBlock(**vars(config.block()), seed=rng, dtype=dtype) for _ in range(n_layers)]

    def __call__(self, ids, *, token_types=None, mask=None, key_mask=None):
        """ids (..., n) integer tokens -> hidden states (..., n, d_model), every token seeing every other.

        ``key_mask`` (..., n) boolean, True = a real token, False = padding that no query attends (the mask a
        tokenizer returns with a padded batch); ``token_types`` (..., n) integers (segment A = 0, B = 1), default 0;
        ``mask`` boolean, broadcastable to (..., n_heads, n, n). ``last_weights`` afterwards holds one
        (..., n_heads, n, n) array per layer.
        """
        ids, token_types, mask, key_mask = _doors.encoder_call(
            self, ids, token_types=token_types, mask=mask, key_mask=key_mask, as_array=_checks.numpy_array)
        hidden = self._forward(ids, token_types, mask, key_mask)
        return _checks.finite_result("hidden states", hidden, producer="TransformerEncoder")

    def _forward(self, ids, token_types, mask, key_mask):
        n = ids.shape[-1]
        types = self.token_type_embedding[0] if token_types is None else self.token_type_embedding[token_types]
        x = self.token_embedding[ids] + self.position_embedding[:n] + types  # (..., n, d_model)
        x = self.embedding_norm._forward(x)
        for block in self.blocks:
            x = block._forward(x, False, mask, key_mask, None)
        return x


def mean_pool(hidden, key_mask=None):
    """The average of the hidden states (..., n, d) over the real tokens (key_mask (..., n), True = real) -> (..., d).

    This is the sentence embedding that sentence-transformers models such as all-MiniLM-L6-v2 were trained to give.
    """
    hidden, key_mask = _doors.pooling_call(hidden, key_mask, as_array=_checks.numpy_array)
    if key_mask is None:
        return hidden.mean(axis=-2)
    weights = np.broadcast_to(key_mask, hidden.shape[:-1]).astype(hidden.dtype)[..., None]  # (..., n, 1)
    count = np.maximum(weights.sum(axis=-2), 1.0)  # a row with no real token averages nothing, not 0/0
    return (hidden * weights).sum(axis=-2) / count
