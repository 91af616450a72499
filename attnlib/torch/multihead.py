"""Multi-head attention in four visible steps (Torch twin of ``attnlib.numpy.multihead``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks
from .attention import attention
from .kv_cache import KVCache, LayerCache


class MultiHeadAttention(nn.Module):
    """Weights stored (d_in, d_out), applied as ``x @ w + b``; ``last_weights`` is (..., n_heads, n_q, n_k)."""

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True):
        super().__init__()
        self.d_model = _checks.positive_int("d_model", d_model)
        self.n_heads = _checks.positive_int("n_heads", n_heads)
        _checks.divisible(d_model, n_heads)
        self.d_head = d_model // n_heads
        self.bias = bool(bias)
        bound = 1.0 / math.sqrt(d_model)
        for name in ("q", "k", "v", "o"):
            self.register_parameter(f"w_{name}", nn.Parameter(torch.empty(d_model, d_model).uniform_(-bound, bound)))
            if bias:
                self.register_parameter(f"b_{name}", nn.Parameter(torch.zeros(d_model)))
        self.last_weights = None

    def config(self) -> dict:
        return {"d_model": self.d_model, "n_heads": self.n_heads, "bias": self.bias}

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy a ``torch.nn.MultiheadAttention`` (packed in_proj, weights stored (d_out, d_in)) into ours."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}")
        if not module._qkv_same_embed_dim or module.bias_k is not None:
            raise ValueError("only MultiheadAttention with kdim = vdim = embed_dim and no add_bias_kv is supported")
        has_bias = module.in_proj_bias is not None
        ours = cls(module.embed_dim, module.num_heads, bias=has_bias)
        ours = ours.to(dtype=module.in_proj_weight.dtype, device=module.in_proj_weight.device)
        w_q, w_k, w_v = module.in_proj_weight.detach().chunk(3, dim=0)
        with torch.no_grad():
            for name, w in zip("qkvo", (w_q, w_k, w_v, module.out_proj.weight.detach()), strict=True):
                getattr(ours, f"w_{name}").copy_(w.T)  # ours is (d_in, d_out): the transpose of nn.Linear's
            if has_bias:
                b_q, b_k, b_v = module.in_proj_bias.detach().chunk(3)
                for name, b in zip("qkvo", (b_q, b_k, b_v, module.out_proj.bias.detach()), strict=True):
                    getattr(ours, f"b_{name}").copy_(b)
        return ours

    def _linear(self, x, name):
        y = x @ getattr(self, f"w_{name}")
        return y + getattr(self, f"b_{name}") if self.bias else y

    def _split_heads(self, x):
        *batch, n, _ = x.shape
        return x.reshape(*batch, n, self.n_heads, self.d_head).transpose(-2, -3)  # (..., H, n, d_head)

    def forward(self, x, *, causal=False, mask=None, kv_cache: LayerCache | None = None):
        _checks.floating_array("x", x, min_ndim=2)
        _checks.last_dim("x", x, self.d_model)
        if isinstance(kv_cache, KVCache):
            raise TypeError("kv_cache must be one layer's cache: pass cache[i], not the whole KVCache")

        # 1. Project into queries, keys and values, then split d_model into n_heads slices of d_head.
        q = self._split_heads(self._linear(x, "q"))  # (..., H, n, d_head)
        k = self._split_heads(self._linear(x, "k"))
        v = self._split_heads(self._linear(x, "v"))
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (..., H, n_past + n, d_head)

        # 2. Scaled dot-product attention per head (heads are a batch dimension).
        heads, weights = attention(q, k, v, mask=mask, causal=causal)  # (..., H, n, d_head)
        self.last_weights = weights.detach()

        # 3. Concatenate the heads.
        concatenated = heads.transpose(-2, -3).reshape(*x.shape[:-1], self.d_model)  # (..., n, d_model)

        # 4. Output projection.
        return self._linear(concatenated, "o")
