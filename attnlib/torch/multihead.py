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
from .positions import _angles, _apply_rope, alibi_bias

ROPE_BASE = 10000.0  # RoPE's base in the modules (Su et al. 2021; Llama 2 uses it too)


class MultiHeadAttention(Module):
    """Weights stored (d_in, d_out), applied as ``x @ w + b``; ``last_weights`` is (..., n_heads, n_q, n_k).

    ``n_kv_heads``, ``positional`` and ``window`` as in ``attnlib.numpy.MultiHeadAttention``: fewer key/value heads
    shared by groups of query heads, RoPE or ALiBi positions, a sliding window for causal calls.
    """

    Config = MultiHeadAttentionConfig

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True, n_kv_heads: int | None = None,
                 positional: str = "none", window: int | None = None, dtype=None, device=None):
        super().__init__()
        self._configure(d_model=d_model, n_heads=n_heads, bias=bias, n_kv_heads=n_kv_heads, positional=positional,
                        window=window)
        self.d_head = d_model // n_heads
        factory = {"dtype": floating_dtype(dtype), "device": device}
        bound = 1.0 / math.sqrt(d_model)
        d_kv = self.n_kv_heads * self.d_head  # width of the key and value projections
        for name, width in (("q", d_model), ("k", d_kv), ("v", d_kv), ("o", d_model)):
            self.register_parameter(f"w_{name}", nn.Parameter(torch.empty(d_model, width, **factory)
                                                              .uniform_(-bound, bound)))
            if bias:
                self.register_parameter(f"b_{name}", nn.Parameter(torch.zeros(width, **factory)))
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

        ``causal``: each position attends only to itself and earlier ones (with ``window``, only the window's most
        recent keys). ``mask``: boolean, True = may attend, broadcastable to (..., n_heads, n, n_k). ``key_mask``:
        boolean (..., n_k), True = a real token, False = padding that no query attends (PyTorch's
        ``key_padding_mask`` is the opposite). ``kv_cache``: one layer's ``LayerCache``; this call's keys and values
        are appended, n_k = held + n, and x's rows follow the cached positions. Records ``last_weights``.
        """
        _checks.module_input("x", _checks.torch_tensor("x", x), width=self.d_model, dtype=self.dtype,
                             device=self.device, min_ndim=2)
        causal, mask, key_mask = _doors.attention_call(
            x.shape, n_heads=self.n_heads, d_head=self.d_head, dtype=self.dtype, device=self.device, causal=causal,
            mask=mask, key_mask=key_mask, kv_cache=kv_cache, as_array=_checks.torch_tensor,
            layer_cache_class=LayerCache, kv_cache_class=KVCache, n_kv_heads=self.n_kv_heads, window=self.window,
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
        v = self._split_heads(self._linear(x, "v"), self.n_kv_heads)  # (..., H_kv, n, d_head)
        group_of = torch.arange(self.n_heads, device=x.device) // (self.n_heads // self.n_kv_heads)
        v = v[..., group_of, :, :]  # (..., H, n, d_head): each query head's value head
        w_o = self.w_o.reshape(self.n_heads, self.d_head, self.d_model)  # (H, d_head, d_model): head h's rows
        return (v @ w_o).norm(dim=-1)  # (..., H, n)

    def _linear(self, x, name):
        y = x @ getattr(self, f"w_{name}")
        return y + getattr(self, f"b_{name}") if self.bias else y

    def _split_heads(self, x, n_heads: int):
        *batch, n, _ = x.shape
        return x.reshape(*batch, n, n_heads, self.d_head).transpose(-2, -3)  # (..., heads, n, d_head)

    def _forward(self, x, causal, mask, key_mask, kv_cache):
        start = 0 if kv_cache is None else kv_cache.position  # absolute position of x's first row
        # 1. Project into queries, keys and values; keys and values may have fewer heads (n_kv_heads).
        q = self._split_heads(self._linear(x, "q"), self.n_heads)  # (..., H, n, d_head)
        k = self._split_heads(self._linear(x, "k"), self.n_kv_heads)  # (..., H_kv, n, d_head)
        v = self._split_heads(self._linear(x, "v"), self.n_kv_heads)
        if self.positional == "rope":  # turn q and k by their positions; cached keys stay turned at theirs
            positions = torch.arange(start, start + x.shape[-2], device=x.device)
            angles = _angles(positions, self.d_head, ROPE_BASE)  # (n, d_head/2)
            q, k = _apply_rope(q, angles, False), _apply_rope(k, angles, False)
        if kv_cache is not None:
            k, v = kv_cache._append(k, v)  # (..., H_kv, held + n, d_head)

        # 2. Scaled dot-product attention per head (heads are a batch dimension; groups share k and v).
        n_q, n_k = q.shape[-2], k.shape[-2]
        allowed = visible(n_q, n_k, causal, mask, key_mask, window=self.window if causal else None, device=x.device)
        bias = None
        if self.positional == "alibi":
            bias = alibi_bias(self.n_heads, n_q, n_k, dtype=self.dtype, device=x.device)  # (H, n_q, n_k)
        heads, weights = _attention(q, k, v, allowed, 1.0 / math.sqrt(self.d_head), bias)  # (..., H, n, d_head)
        self._last_weights = weights.detach()

        # 3. Concatenate the heads.
        concatenated = heads.transpose(-2, -3).reshape(*x.shape[:-1], self.d_model)  # (..., n, d_model)

        # 4. Output projection.
        return self._linear(concatenated, "o")


def _to(mask, device):
    return None if mask is None else mask.to(device)
