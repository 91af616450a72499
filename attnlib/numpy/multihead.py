"""Multi-head attention in the explainer's four steps: project, attend per head, concatenate, project out.

Modern models change three things, all options here: fewer key/value heads than query heads (``n_kv_heads``:
grouped-query or multi-query attention, a smaller KV cache), where position enters (``positional``: RoPE turns q and
k, ALiBi biases the scores) and how far back a query looks (``window``: sliding-window attention).
"""

from __future__ import annotations

import numpy as np

from .. import _checks, _doors
from .._config import MultiHeadAttentionConfig
from ._module import FromTorch, Module, floating_dtype, make_rng, uniform
from .attention import _attention, visible
from .kv_cache import KVCache, LayerCache
from .positions import _angles, _apply_rope, alibi_bias

ROPE_BASE = 10000.0  # RoPE's base in the modules (Su et al. 2021; Llama 2 uses it too)


class MultiHeadAttention(FromTorch, Module):
    """``n_heads`` experts, each looking at the sequence through its own d_head-dimensional "glasses".

    Weights are stored (d_in, d_out) and applied as ``x @ w + b``. After a call, ``last_weights`` holds that
    call's attention weights per head, shape (..., n_heads, n_q, n_k).

    ``n_kv_heads`` (None = n_heads): the keys and values have only n_kv_heads heads, each shared by a group of
    n_heads / n_kv_heads query heads (1 = multi-query attention); w_k and w_v shrink to (d_model, n_kv_heads * d_head)
    and so does the KV cache. ``positional``: "none"; "rope" turns q and k by their absolute positions after the
    projection (keys are cached turned); "alibi" adds ``alibi_bias`` to the scores. ``window``: causal calls see
    only the ``window`` most recent keys (a cache for it can be rolling, ``KVCache(..., window=)``).
    """

    Config = MultiHeadAttentionConfig

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True, n_kv_heads: int | None = None,
                 positional: str = "none", window: int | None = None, seed=None, dtype=np.float64):
        self._configure(d_model=d_model, n_heads=n_heads, bias=bias, n_kv_heads=n_kv_heads, positional=positional,
                        window=window)
        self.d_head = d_model // n_heads
        dtype, rng = floating_dtype(dtype), make_rng(seed)
        d_kv = self.n_kv_heads * self.d_head  # width of the key and value projections
        for name, width in (("q", d_model), ("k", d_kv), ("v", d_kv), ("o", d_model)):
            setattr(self, f"w_{name}", uniform(rng, d_model, (d_model, width), dtype))
            if bias:
                setattr(self, f"b_{name}", np.zeros(width, dtype=dtype))
        self._last_weights = None

    @property
    def last_weights(self):
        """The previous call's attention weights, (..., n_heads, n_q, n_k); not a parameter. None before a call."""
        return self._last_weights

    def __call__(self, x, *, causal=False, mask=None, key_mask=None, kv_cache: LayerCache | None = None):
        """Self-attention over x (..., n, d_model) -> (..., n, d_model).

        ``causal``: each position attends only to itself and earlier ones (and with ``window``, only to the
        window's most recent keys). ``mask``: boolean, True = may attend, broadcastable to (..., n_heads, n, n_k).
        ``key_mask``: boolean (..., n_k), True = a real token, False = padding that no query attends. ``kv_cache``:
        one layer's ``LayerCache``; this call's keys and values are appended to it, n_k = held + n, and x's rows
        sit at the absolute positions that follow the cached ones (for RoPE and ALiBi). Records ``last_weights``
        (..., n_heads, n, n_k).
        """
        x = _checks.module_input("x", _checks.numpy_array("x", x), width=self.d_model, dtype=self.dtype, min_ndim=2)
        causal, mask, key_mask = _doors.attention_call(
            x.shape, n_heads=self.n_heads, d_head=self.d_head, dtype=self.dtype, device=None, causal=causal,
            mask=mask, key_mask=key_mask, kv_cache=kv_cache, as_array=_checks.numpy_array,
            layer_cache_class=LayerCache, kv_cache_class=KVCache, n_kv_heads=self.n_kv_heads, window=self.window,
        )
        return self._forward(x, causal, mask, key_mask, kv_cache)

    def value_norms(self, x):
        """||(x_j W_v^h + b_v^h) W_o^h|| for every head h and position j of x (..., n, d_model) -> (..., n_heads, n).

        What position j adds to a query's output through head h for each unit of attention weight: the layer's
        output is sum over h and j of weight_hij * (x_j W_v^h + b_v^h) W_o^h, plus b_o. A large weight on a key
        whose transformed value is tiny moves nothing (Kobayashi et al. 2020, "Attention is Not Only a Weight").
        """
        x = _checks.module_input("x", _checks.numpy_array("x", x), width=self.d_model, dtype=self.dtype, min_ndim=2)
        v = self._split_heads(self._linear(x, "v"), self.n_kv_heads)  # (..., H_kv, n, d_head)
        v = v[..., np.arange(self.n_heads) // (self.n_heads // self.n_kv_heads), :, :]  # (..., H, n, d_head): by group
        w_o = self.w_o.reshape(self.n_heads, self.d_head, self.d_model)  # (H, d_head, d_model): head h's rows
        return np.linalg.norm(v @ w_o, axis=-1)  # (..., H, n)

    def _linear(self, x, name):
        y = x @ getattr(self, f"w_{name}")
        return y + getattr(self, f"b_{name}") if self.bias else y

    def _split_heads(self, x, n_heads: int):
        *batch, n, _ = x.shape
        x = x.reshape(*batch, n, n_heads, self.d_head)  # (..., n, heads, d_head)
        return np.swapaxes(x, -2, -3)  # (..., heads, n, d_head)

    def _forward(self, x, causal, mask, key_mask, kv_cache):
        start = 0 if kv_cache is None else kv_cache.position  # absolute position of x's first row
        # 1. Project: every position writes a query note, a spine label (key) and its content (value). Keys and
        #    values may have fewer heads than queries (n_kv_heads): each is then read by a group of query heads.
        q = self._split_heads(self._linear(x, "q"), self.n_heads)  # (..., H, n, d_head)
        k = self._split_heads(self._linear(x, "k"), self.n_kv_heads)  # (..., H_kv, n, d_head)
        v = self._split_heads(self._linear(x, "v"), self.n_kv_heads)
        if self.positional == "rope":  # turn q and k by their positions; cached keys stay turned at theirs
            angles = _angles(np.arange(start, start + x.shape[-2]), self.d_head, ROPE_BASE)  # (n, d_head/2)
            q, k = _apply_rope(q, angles, False), _apply_rope(k, angles, False)
        if kv_cache is not None:
            k, v = kv_cache._append(k, v)  # (..., H_kv, held + n, d_head): old keys are reused, not recomputed

        # 2. Scaled dot-product attention, for all heads at once (heads are just a batch dimension).
        n_q, n_k = q.shape[-2], k.shape[-2]
        allowed = visible(n_q, n_k, causal, mask, key_mask, window=self.window if causal else None)
        bias = alibi_bias(self.n_heads, n_q, n_k, dtype=self.dtype) if self.positional == "alibi" else None
        heads, self._last_weights = _attention(q, k, v, allowed, 1.0 / np.sqrt(self.d_head), bias)  # (..., H, n, d)

        # 3. Concatenate the heads back into one d_model-wide vector per position.
        heads = np.swapaxes(heads, -2, -3)  # (..., n, H, d_head)
        concatenated = heads.reshape(*heads.shape[:-2], self.d_model)  # (..., n, d_model)

        # 4. Output projection mixes what the experts found.
        return self._linear(concatenated, "o")
