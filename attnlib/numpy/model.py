"""A small decoder-only language model: embeddings, a stack of blocks, a final norm and an output head."""

from __future__ import annotations

import numpy as np

from .. import _checks, _doors
from .._bookkeeping import LanguageModelBookkeeping
from .._config import TransformerLMConfig
from ._module import Module, floating_dtype, make_rng
from .block import TransformerBlock
from .kv_cache import KVCache, LayerCache
from .layernorm import LayerNorm


class TransformerLM(LanguageModelBookkeeping, Module):
    """Token (+ learned position) embeddings -> ``n_layers`` independent blocks -> LayerNorm -> logits.

    ``causal=True`` (the default) makes it a GPT-style generator; ``causal=False`` an encoder (BERT-style).
    ``positional``: "learned" (a (max_len, d_model) table added to the tokens, GPT-2 style; the default), "rope"
    (Llama, Mistral, Qwen), "alibi", or "none" (a causal model can still infer order from what it may see).
    ``n_kv_heads`` and ``window`` are passed to every block's attention; a model with a window gets a rolling cache.

    ``max_len`` is the context length the model declares, and calls beyond it are refused. With a learned table it
    is a hard limit (there is no vector for later positions); with "rope", "alibi" or "none" nothing in the weights
    depends on it, and ``extend_context`` raises it (whether the model *works* that far is another question, which
    the book measures).
    """

    Config = TransformerLMConfig

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, max_len: int, *,
                 norm_first: bool = True, activation: str = "gelu", eps: float = 1e-5, causal: bool = True,
                 bias: bool = True, n_kv_heads: int | None = None, positional: str = "learned",
                 window: int | None = None, seed=None, dtype=np.float64):
        config = self._configure(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                                 n_layers=n_layers, max_len=max_len, norm_first=norm_first, activation=activation,
                                 eps=eps, causal=causal, bias=bias, n_kv_heads=n_kv_heads, positional=positional,
                                 window=window)
        dtype, rng = floating_dtype(dtype), make_rng(seed)
        self.token_embedding = (rng.standard_normal((vocab_size, d_model)) * 0.02).astype(dtype)
        if self.positional == "learned":  # RoPE and ALiBi put position inside attention; "none" has none at all
            self.position_embedding = (rng.standard_normal((max_len, d_model)) * 0.02).astype(dtype)
        self.blocks = [TransformerBlock(**vars(config.block()), seed=rng, dtype=dtype) for _ in range(n_layers)]
        self.norm = LayerNorm(**vars(config.block().norm()), dtype=dtype)
        self.head = (rng.standard_normal((d_model, vocab_size)) * 0.02).astype(dtype)

    def new_cache(self) -> KVCache:
        """An empty cache for this model: rolling (the last ``window`` positions per layer) if it has a window."""
        return KVCache(self.n_layers, window=self.window)

    def __call__(self, ids, *, mask=None, key_mask=None, kv_cache: KVCache | None = None):
        """ids (..., n) integer tokens -> logits (..., n, vocab_size).

        With ``kv_cache`` (from ``new_cache()``), ids are the *new* tokens and are placed after the cached ones.
        ``key_mask`` (..., n_k) boolean, True = a real token (False = padding, attended by no one); ``mask``
        broadcastable to (..., n_heads, n, n_k). A call that fails leaves the cache as it was.
        ``last_weights`` afterwards holds one (..., n_heads, n, n_k) array per layer.
        """
        ids, start, causal, mask, key_mask = _doors.language_model_call(
            self, ids, mask=mask, key_mask=key_mask, kv_cache=kv_cache, as_array=_checks.numpy_array,
            layer_cache_class=LayerCache, kv_cache_class=KVCache,
        )
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

    def generate(self, prompt_ids, n_new: int, *, use_kv_cache: bool = True) -> np.ndarray:
        """Greedy decoding. With the cache each step feeds one token; without it, the whole sequence again.

        Everything is checked once, here and at the prompt's model call; the decoding steps then call the layers'
        cores directly: a step's only new input is a token the model itself chose, from its own vocabulary.
        """
        ids, n_new = _doors.generate_call(self, prompt_ids, n_new, as_array=_checks.numpy_array)
        use_kv_cache = _checks.flag("use_kv_cache", use_kv_cache)
        n_prompt = ids.shape[-1]
        out = np.empty(ids.shape[:-1] + (n_prompt + n_new,), dtype=ids.dtype)  # (..., n_prompt + n_new)
        out[..., :n_prompt] = ids
        cache = self.new_cache() if use_kv_cache else None
        logits = self(ids, kv_cache=cache)  # the door: ids, cache and lengths checked
        for step in range(n_new):
            position = n_prompt + step
            out[..., position] = logits[..., -1, :].argmax(axis=-1)  # (...,): the greedy choice
            if step == n_new - 1:
                break  # the last token is chosen: no further logits are needed
            if use_kv_cache:  # one new token, after the cached ones
                logits = self._forward(out[..., position:position + 1], position, True, None, None, cache)
            else:  # the whole sequence again
                logits = self._forward(out[..., :position + 1], 0, True, None, None, None)
            _checks.finite_result("logits", logits, producer="TransformerLM")
        return out
