"""A small decoder-only (or encoder) language model (Torch twin of ``attnlib.numpy.model``)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks, _doors
from .._bookkeeping import LanguageModelBookkeeping
from .._config import TransformerLMConfig
from ._module import Module, floating_dtype
from .block import TransformerBlock
from .kv_cache import KVCache, LayerCache
from .layernorm import LayerNorm
from .multihead import _to


class TransformerLM(LanguageModelBookkeeping, Module):
    """Token (+ learned position) embeddings -> ``n_layers`` blocks -> LayerNorm -> logits.

    ``positional``, ``n_kv_heads``, ``window`` and the meaning of ``max_len`` as in ``attnlib.numpy.TransformerLM``.
    """

    Config = TransformerLMConfig

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, max_len: int, *,
                 norm_first: bool = True, activation: str = "gelu", eps: float = 1e-5, causal: bool = True,
                 bias: bool = True, n_kv_heads: int | None = None, positional: str = "learned",
                 window: int | None = None, dtype=None, device=None):
        super().__init__()
        config = self._configure(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                                 n_layers=n_layers, max_len=max_len, norm_first=norm_first, activation=activation,
                                 eps=eps, causal=causal, bias=bias, n_kv_heads=n_kv_heads, positional=positional,
                                 window=window)
        factory = {"dtype": floating_dtype(dtype), "device": device}
        self.token_embedding = nn.Parameter(torch.randn(vocab_size, d_model, **factory) * 0.02)
        if self.positional == "learned":  # RoPE and ALiBi put position inside attention; "none" has none at all
            self.position_embedding = nn.Parameter(torch.randn(max_len, d_model, **factory) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(**vars(config.block()), **factory) for _ in range(n_layers))
        self.norm = LayerNorm(**vars(config.block().norm()), **factory)
        self.head = nn.Parameter(torch.randn(d_model, vocab_size, **factory) * 0.02)

    def new_cache(self) -> KVCache:
        """An empty cache for this model: rolling (the last ``window`` positions per layer) if it has a window."""
        return KVCache(self.n_layers, window=self.window)

    def forward(self, ids, *, mask=None, key_mask=None, kv_cache: KVCache | None = None):
        """ids (..., n) integer tokens -> logits (..., n, vocab_size).

        With ``kv_cache`` (from ``new_cache()``), ids are the *new* tokens and are placed after the cached ones.
        ``key_mask`` (..., n_k) boolean, True = a real token (False = padding, attended by no one); ``mask``
        broadcastable to (..., n_heads, n, n_k). A call that fails leaves the cache as it was.
        ``last_weights`` afterwards holds one (..., n_heads, n, n_k) tensor per layer.
        """
        ids, start, causal, mask, key_mask = _doors.language_model_call(
            self, ids, mask=mask, key_mask=key_mask, kv_cache=kv_cache, as_array=_checks.torch_tensor,
            layer_cache_class=LayerCache, kv_cache_class=KVCache,
        )
        ids, mask, key_mask = ids.to(self.device), _to(mask, self.device), _to(key_mask, self.device)
        def compute():  # checked inside the transaction: a NaN born in any layer also puts the cache back
            logits = self._forward(ids, start, causal, mask, key_mask, kv_cache)
            return _checks.finite_result("logits", logits, producer="TransformerLM")

        return _doors.run_transaction(kv_cache, compute)

    def _forward(self, ids, start, causal, mask, key_mask, kv_cache):
        x = self.token_embedding[ids]  # (..., n, d_model)
        if self.positional == "learned":
            x = x + self.position_embedding[start:start + ids.shape[-1]]  # rows of the table for these positions
        for index, block in enumerate(self.blocks):
            x = block._forward(x, causal, mask, key_mask, None if kv_cache is None else kv_cache[index])
        return self.norm._forward(x) @ self.head  # (..., n, vocab_size)

    @torch.no_grad()
    def generate(self, prompt_ids, n_new: int, *, use_kv_cache: bool = True) -> torch.Tensor:
        """Greedy decoding. With the cache each step feeds one token; without it, the whole sequence again.

        Everything is checked once, here and at the prompt's model call; the decoding steps then call the layers'
        cores directly: a step's only new input is a token the model itself chose, from its own vocabulary.
        """
        ids, n_new = _doors.generate_call(self, prompt_ids, n_new, as_array=_checks.torch_tensor)
        use_kv_cache = _checks.flag("use_kv_cache", use_kv_cache)
        ids = ids.to(self.device)
        n_prompt = ids.shape[-1]
        out = ids.new_empty(ids.shape[:-1] + (n_prompt + n_new,))  # (..., n_prompt + n_new): filled step by step
        out[..., :n_prompt] = ids
        cache = self.new_cache() if use_kv_cache else None
        logits = self(ids, kv_cache=cache)  # the door: ids, cache and lengths checked
        for step in range(n_new):
            position = n_prompt + step
            out[..., position] = logits[..., -1, :].argmax(dim=-1)  # (...,): the greedy choice
            if step == n_new - 1:
                break  # the last token is chosen: no further logits are needed
            if use_kv_cache:  # one new token, after the cached ones
                logits = self._forward(out[..., position:position + 1], position, True, None, None, cache)
            else:  # the whole sequence again
                logits = self._forward(out[..., :position + 1], 0, True, None, None, None)
            _checks.finite_result("logits", logits, producer="TransformerLM")
        return out
