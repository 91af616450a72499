"""Multi-head attention in four visible steps (Torch twin of ``attnlib.numpy.multihead``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks, _doors
from .._config import MultiHeadAttentionConfig
from ._module import Module, copy_weights, floating_dtype, refuse
from .attention import _attention, visible
from .kv_cache import KVCache, LayerCache


class MultiHeadAttention(Module):
    """Weights stored (d_in, d_out), applied as ``x @ w + b``; ``last_weights`` is (..., n_heads, n_q, n_k)."""

    Config = MultiHeadAttentionConfig

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True, dtype=None, device=None):
        super().__init__()
        self._configure(d_model=d_model, n_heads=n_heads, bias=bias)
        self.d_head = d_model // n_heads
        factory = {"dtype": floating_dtype(dtype), "device": device}
        bound = 1.0 / math.sqrt(d_model)
        for name in ("q", "k", "v", "o"):
            self.register_parameter(f"w_{name}", nn.Parameter(torch.empty(d_model, d_model, **factory)
                                                              .uniform_(-bound, bound)))
            if bias:
                self.register_parameter(f"b_{name}", nn.Parameter(torch.zeros(d_model, **factory)))
        self._last_weights = None

    @property
    def last_weights(self):
        """The previous call's attention weights, (..., n_heads, n_q, n_k), detached; None before a call."""
        return self._last_weights

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, *, dtype=None) -> MultiHeadAttention:
        """Copy a ``torch.nn.MultiheadAttention`` (packed in_proj, weights stored (d_out, d_in)) into ours.

        attnlib computes the module's evaluation-mode function (attention dropout is not applied); options that
        change the function itself are refused by name.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}")
        refuse(not module._qkv_same_embed_dim, f"kdim={module.kdim}, vdim={module.vdim}: attnlib's "
               f"MultiHeadAttention projects keys and values from the same d_model={module.embed_dim}")
        refuse(module.bias_k is not None, "add_bias_kv=True: attnlib has no learned extra key/value")
        refuse(module.add_zero_attn, "add_zero_attn=True: attnlib does not append a zero key/value")
        refuse(not module.batch_first, "batch_first=False: attnlib is always (..., n, d), batch first; build the "
               "module with batch_first=True (its weights are the same)")
        weight = module.in_proj_weight.detach()
        has_bias = module.in_proj_bias is not None
        ours = cls(module.embed_dim, module.num_heads, bias=has_bias, dtype=weight.dtype if dtype is None else dtype,
                   device=weight.device)
        w_q, w_k, w_v = weight.chunk(3, dim=0)
        weights = (w_q, w_k, w_v, module.out_proj.weight.detach())
        pairs = [(getattr(ours, f"w_{n}"), w.T) for n, w in zip("qkvo", weights, strict=True)]  # ours: (d_in, d_out)
        if has_bias:
            b_q, b_k, b_v = module.in_proj_bias.detach().chunk(3)
            biases = (b_q, b_k, b_v, module.out_proj.bias.detach())
            pairs += [(getattr(ours, f"b_{n}"), b) for n, b in zip("qkvo", biases, strict=True)]
        copy_weights(ours, pairs)
        return ours

    def forward(self, x, *, causal=False, mask=None, key_mask=None, kv_cache: LayerCache | None = None):
        """Self-attention over x (..., n, d_model) -> (..., n, d_model).

        ``causal``: each position attends only to itself and earlier ones. ``mask``: boolean, True = may attend,
        broadcastable to (..., n_heads, n, n_k). ``key_mask``: boolean (..., n_k), True = a real token, False =
        padding that no query attends (PyTorch's ``key_padding_mask`` is the opposite). ``kv_cache``: one layer's
        ``LayerCache``; this call's keys and values are appended and n_k = cached + n. Records ``last_weights``.
        """
        _checks.module_input("x", _checks.torch_tensor("x", x), width=self.d_model, dtype=self.dtype,
                             device=self.device, min_ndim=2)
        causal, mask, key_mask = _doors.attention_call(
            x.shape, n_heads=self.n_heads, d_head=self.d_head, dtype=self.dtype, device=self.device, causal=causal,
            mask=mask, key_mask=key_mask, kv_cache=kv_cache, as_array=_checks.torch_tensor,
            layer_cache_class=LayerCache, kv_cache_class=KVCache,
        )
        return self._forward(x, causal, _to(mask, x.device), _to(key_mask, x.device), kv_cache)

    def value_norms(self, x):
        """||(x_j W_v^h + b_v^h) W_o^h|| for every head h and position j of x (..., n, d_model) -> (..., n_heads, n).

        What position j adds to a query's output through head h for each unit of attention weight: the layer's
        output is sum over h and j of weight_hij * (x_j W_v^h + b_v^h) W_o^h, plus b_o. A large weight on a key
        whose transformed value is tiny moves nothing (Kobayashi et al. 2020, "Attention is Not Only a Weight").
        """
        _checks.module_input("x", _checks.torch_tensor("x", x), width=self.d_model, dtype=self.dtype,
                             device=self.device, min_ndim=2)
        v = self._split_heads(self._linear(x, "v"))  # (..., H, n, d_head)
        w_o = self.w_o.reshape(self.n_heads, self.d_head, self.d_model)  # (H, d_head, d_model): head h's rows
        return (v @ w_o).norm(dim=-1)  # (..., H, n)

    def _linear(self, x, name):
        y = x @ getattr(self, f"w_{name}")
        return y + getattr(self, f"b_{name}") if self.bias else y

    def _split_heads(self, x):
        *batch, n, _ = x.shape
        return x.reshape(*batch, n, self.n_heads, self.d_head).transpose(-2, -3)  # (..., H, n, d_head)

    def _forward(self, x, causal, mask, key_mask, kv_cache):
        # 1. Project into queries, keys and values, then split d_model into n_heads slices of d_head.
        q = self._split_heads(self._linear(x, "q"))  # (..., H, n, d_head)
        k = self._split_heads(self._linear(x, "k"))
        v = self._split_heads(self._linear(x, "v"))
        if kv_cache is not None:
            k, v = kv_cache._append(k, v)  # (..., H, n_past + n, d_head)

        # 2. Scaled dot-product attention per head (heads are a batch dimension).
        allowed = visible(q.shape[-2], k.shape[-2], causal, mask, key_mask, device=x.device)
        heads, weights = _attention(q, k, v, allowed, 1.0 / math.sqrt(self.d_head))  # (..., H, n, d_head)
        self._last_weights = weights.detach()

        # 3. Concatenate the heads.
        concatenated = heads.transpose(-2, -3).reshape(*x.shape[:-1], self.d_model)  # (..., n, d_model)

        # 4. Output projection.
        return self._linear(concatenated, "o")


def _to(mask, device):
    return None if mask is None else mask.to(device)
