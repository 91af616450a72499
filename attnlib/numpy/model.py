"""A small decoder-only language model: embeddings, a stack of blocks, a final norm and an output head."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._bookkeeping import LanguageModelBookkeeping
from ._module import Module, make_rng
from .block import TransformerBlock
from .kv_cache import KVCache
from .layernorm import LayerNorm


class TransformerLM(LanguageModelBookkeeping, Module):
    """Token + learned position embeddings -> ``n_layers`` independent blocks -> LayerNorm -> logits.

    ``causal=True`` (the default) makes it a GPT-style generator; ``causal=False`` an encoder (BERT-style).
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, max_len: int, *,
                 norm_first: bool = True, activation: str = "gelu", eps: float = 1e-5, causal: bool = True,
                 seed=None, dtype=np.float64):
        rng = make_rng(seed)
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        self.max_len = _checks.positive_int("max_len", max_len)
        n_layers = _checks.positive_int("n_layers", n_layers)
        self.causal = bool(causal)
        self.token_embedding = (rng.standard_normal((vocab_size, d_model)) * 0.02).astype(dtype)
        self.position_embedding = (rng.standard_normal((max_len, d_model)) * 0.02).astype(dtype)
        self.blocks = [TransformerBlock(d_model, n_heads, d_ff, norm_first=norm_first, activation=activation,
                                        eps=eps, seed=rng, dtype=dtype) for _ in range(n_layers)]
        self.norm = LayerNorm(d_model, eps=eps, dtype=dtype)
        self.head = (rng.standard_normal((d_model, vocab_size)) * 0.02).astype(dtype)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    def __call__(self, ids, *, mask=None, kv_cache: KVCache | None = None):
        """ids (..., n) integer tokens -> logits (..., n, vocab). With a cache, ids are the *new* tokens."""
        ids = np.asarray(ids)
        start = self._start_position(ids, kv_cache)
        x = self.token_embedding[ids] + self.position_embedding[start:start + ids.shape[-1]]  # (..., n, d_model)
        with _checks.checked_inside():  # the ids were checked above, the logits are checked below
            for index, block in enumerate(self.blocks):
                x = block(x, causal=self.causal, mask=mask, kv_cache=None if kv_cache is None else kv_cache[index])
            logits = self.norm(x) @ self.head  # (..., n, vocab)
        return _checks.finite_result("logits", logits, producer="TransformerLM")

    def generate(self, prompt_ids, n_new: int, *, use_kv_cache: bool = True) -> np.ndarray:
        """Greedy decoding. With the cache each step feeds one token; without it, the whole sequence again."""
        ids = np.asarray(prompt_ids)
        n_new = self._check_generate(ids, n_new)
        cache = self.new_cache() if use_kv_cache else None
        logits = self(ids, kv_cache=cache)
        for _ in range(n_new):
            next_id = logits[..., -1, :].argmax(axis=-1)[..., None]  # (..., 1)
            ids = np.concatenate([ids, next_id], axis=-1)
            logits = self(next_id, kv_cache=cache) if use_kv_cache else self(ids)
        return ids
