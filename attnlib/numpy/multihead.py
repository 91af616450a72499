"""Multi-head attention in the explainer's four steps: project, attend per head, concatenate, project out."""

from __future__ import annotations

import numpy as np

from .. import _checks
from ._module import Module, make_rng, uniform
from .attention import attention
from .kv_cache import KVCache, LayerCache


class MultiHeadAttention(Module):
    """``n_heads`` experts, each looking at the sequence through its own d_head-dimensional "glasses".

    Weights are stored (d_in, d_out) and applied as ``x @ w + b``. After a call, ``last_weights`` holds that
    call's attention weights per head, shape (..., n_heads, n_q, n_k).
    """

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True, seed=None, dtype=np.float64):
        self.d_model = _checks.positive_int("d_model", d_model)
        self.n_heads = _checks.positive_int("n_heads", n_heads)
        _checks.divisible(d_model, n_heads)
        self.d_head = d_model // n_heads
        self.bias = bool(bias)
        rng = make_rng(seed)
        for name in ("q", "k", "v", "o"):
            setattr(self, f"w_{name}", uniform(rng, d_model, (d_model, d_model), dtype))
            if bias:
                setattr(self, f"b_{name}", np.zeros(d_model, dtype=dtype))
        self._last_weights = None

    @property
    def last_weights(self):
        """The previous call's attention weights, (..., n_heads, n_q, n_k); not a parameter."""
        return self._last_weights

    def config(self) -> dict:
        return {"d_model": self.d_model, "n_heads": self.n_heads, "bias": self.bias}

    def _linear(self, x, name):
        y = x @ getattr(self, f"w_{name}")
        return y + getattr(self, f"b_{name}") if self.bias else y

    def _split_heads(self, x):
        *batch, n, _ = x.shape
        x = x.reshape(*batch, n, self.n_heads, self.d_head)  # (..., n, H, d_head)
        return np.swapaxes(x, -2, -3)  # (..., H, n, d_head)

    def __call__(self, x, *, causal=False, mask=None, kv_cache: LayerCache | None = None):
        x = np.asarray(x)
        _checks.floating_array("x", x, min_ndim=2)
        _checks.last_dim("x", x, self.d_model)
        if isinstance(kv_cache, KVCache):
            raise TypeError("kv_cache must be one layer's cache: pass cache[i], not the whole KVCache")

        # 1. Project: every position writes a query note, a spine label (key) and its content (value).
        q = self._split_heads(self._linear(x, "q"))  # (..., H, n, d_head)
        k = self._split_heads(self._linear(x, "k"))
        v = self._split_heads(self._linear(x, "v"))
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (..., H, n_past + n, d_head): old keys are reused, not recomputed

        # 2. Scaled dot-product attention, for all heads at once (heads are just a batch dimension).
        heads, self._last_weights = attention(q, k, v, mask=mask, causal=causal)  # (..., H, n, d_head)

        # 3. Concatenate the heads back into one d_model-wide vector per position.
        heads = np.swapaxes(heads, -2, -3)  # (..., n, H, d_head)
        concatenated = heads.reshape(*heads.shape[:-2], self.d_model)  # (..., n, d_model)

        # 4. Output projection mixes what the experts found.
        return self._linear(concatenated, "o")
