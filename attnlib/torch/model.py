"""A small decoder-only (or encoder) language model (Torch twin of ``attnlib.numpy.model``)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks
from .._bookkeeping import LanguageModelBookkeeping
from .block import TransformerBlock
from .kv_cache import KVCache
from .layernorm import LayerNorm


class TransformerLM(LanguageModelBookkeeping, nn.Module):
    """Token + learned position embeddings -> ``n_layers`` independent blocks -> LayerNorm -> logits."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, max_len: int, *,
                 norm_first: bool = True, activation: str = "gelu", eps: float = 1e-5, causal: bool = True):
        super().__init__()
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        self.max_len = _checks.positive_int("max_len", max_len)
        n_layers = _checks.positive_int("n_layers", n_layers)
        self.causal = bool(causal)
        self.token_embedding = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, norm_first=norm_first, activation=activation, eps=eps)
            for _ in range(n_layers)
        )
        self.norm = LayerNorm(d_model, eps=eps)
        self.head = nn.Parameter(torch.randn(d_model, vocab_size) * 0.02)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    def forward(self, ids, *, mask=None, kv_cache: KVCache | None = None):
        """ids (..., n) integer tokens -> logits (..., n, vocab). With a cache, ids are the *new* tokens."""
        _checks.token_ids("ids", ids, self.vocab_size)
        start = 0 if kv_cache is None else kv_cache.length
        n = ids.shape[-1]
        if start + n > self.max_len:
            raise ValueError(
                f"sequence of {start + n} positions (cached {start} + new {n}) exceeds max_len={self.max_len}"
            )
        x = self.token_embedding[ids] + self.position_embedding[start:start + n]  # (..., n, d_model)
        with _checks.checked_inside():  # the ids were checked above, the logits are checked below
            for index, block in enumerate(self.blocks):
                x = block(x, causal=self.causal, mask=mask, kv_cache=None if kv_cache is None else kv_cache[index])
            logits = self.norm(x) @ self.head  # (..., n, vocab)
        return _checks.finite_result("logits", logits, producer="TransformerLM")

    @torch.no_grad()
    def generate(self, prompt_ids, n_new: int, *, use_kv_cache: bool = True) -> torch.Tensor:
        """Greedy decoding. With the cache each step feeds one token; without it, the whole sequence again."""
        n_new = _checks.non_negative_int("n_new", n_new)
        _checks.token_ids("prompt_ids", prompt_ids, self.vocab_size)
        if not self.causal:
            raise ValueError("generate needs a causal model (causal=True); this one is bidirectional")
        if prompt_ids.shape[-1] + n_new > self.max_len:
            raise ValueError(f"prompt of {prompt_ids.shape[-1]} tokens + n_new={n_new} exceeds max_len={self.max_len}")
        ids = prompt_ids
        cache = self.new_cache() if use_kv_cache else None
        logits = self(ids, kv_cache=cache)
        for _ in range(n_new):
            next_id = logits[..., -1, :].argmax(dim=-1, keepdim=True)  # (..., 1)
            ids = torch.cat([ids, next_id], dim=-1)
            logits = self(next_id, kv_cache=cache) if use_kv_cache else self(ids)
        return ids
