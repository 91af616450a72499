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
        start = self._start_position(ids, kv_cache)
        x = self.token_embedding[ids] + self.position_embedding[start:start + ids.shape[-1]]  # (..., n, d_model)
        with _checks.checked_inside():  # the ids were checked above, the logits are checked below
            for index, block in enumerate(self.blocks):
                x = block(x, causal=self.causal, mask=mask, kv_cache=None if kv_cache is None else kv_cache[index])
            logits = self.norm(x) @ self.head  # (..., n, vocab)
        return _checks.finite_result("logits", logits, producer="TransformerLM")

    @torch.no_grad()
    def generate(self, prompt_ids, n_new: int, *, use_kv_cache: bool = True) -> torch.Tensor:
        """Greedy decoding. With the cache each step feeds one token; without it, the whole sequence again."""
        n_new = self._check_generate(prompt_ids, n_new)
        ids = prompt_ids
        cache = self.new_cache() if use_kv_cache else None
        logits = self(ids, kv_cache=cache)
        for _ in range(n_new):
            next_id = logits[..., -1, :].argmax(dim=-1, keepdim=True)  # (..., 1)
            ids = torch.cat([ids, next_id], dim=-1)
            logits = self(next_id, kv_cache=cache) if use_kv_cache else self(ids)
        return ids
