"""One Transformer layer with Add & Norm (Torch twin of ``attnlib.numpy.block``)."""

from __future__ import annotations

import functools

from torch import nn
from torch.nn import functional as F

from .. import _checks, _doors
from .._bookkeeping import BlockBookkeeping
from .._config import TransformerBlockConfig
from ._module import Module, floating_dtype, refuse
from .feedforward import FeedForward
from .kv_cache import KVCache, LayerCache
from .layernorm import LayerNorm
from .multihead import MultiHeadAttention, _to


class TransformerBlock(BlockBookkeeping, Module):
    """Post-LN by default, x = norm(x + sublayer(x)); pre-LN with ``norm_first=True``, x = x + sublayer(norm(x))."""

    Config = TransformerBlockConfig

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, norm_first: bool = False,
                 activation: str = "relu", eps: float = 1e-5, bias: bool = True, n_kv_heads: int | None = None,
                 positional: str = "none", window: int | None = None, dtype=None, device=None):
        super().__init__()
        config = self._configure(d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm_first=norm_first,
                                 activation=activation, eps=eps, bias=bias, n_kv_heads=n_kv_heads,
                                 positional=positional, window=window)
        factory = {"dtype": floating_dtype(dtype), "device": device}
        self.attention = MultiHeadAttention(**vars(config.attention()), **factory)
        self.feed_forward = FeedForward(**vars(config.feed_forward()), **factory)
        self.norm1 = LayerNorm(**vars(config.norm()), **factory)
        self.norm2 = LayerNorm(**vars(config.norm()), **factory)

    @classmethod
    def from_torch(cls, module: nn.TransformerEncoderLayer, *, dtype=None) -> TransformerBlock:
        """Copy a ``torch.nn.TransformerEncoderLayer`` (relu, gelu or tanh-GELU; any norm_first; bias or not).

        attnlib computes the layer's evaluation-mode function (dropout is not applied); options that change the
        function itself are refused by name.
        """
        if not isinstance(module, nn.TransformerEncoderLayer):
            raise TypeError(f"module must be a torch.nn.TransformerEncoderLayer, got {type(module).__name__}")
        layer = module
        activation = activation_name(layer.activation)
        attention = MultiHeadAttention.from_torch(layer.self_attn, dtype=dtype)  # refuses batch_first=False etc.
        ours = cls(layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.linear1.out_features,
                   norm_first=layer.norm_first, activation=activation, eps=layer.norm1.eps,
                   bias=layer.linear1.bias is not None, dtype=attention.dtype, device=attention.device)
        refuse(layer.norm2.eps != layer.norm1.eps, f"norm1.eps={layer.norm1.eps} and norm2.eps={layer.norm2.eps} "
               "differ: attnlib's block has one eps")
        ours.attention = attention
        ours.feed_forward = FeedForward.from_torch(layer.linear1, layer.linear2, activation=activation, dtype=dtype)
        ours.norm1 = LayerNorm.from_torch(layer.norm1, dtype=dtype)
        ours.norm2 = LayerNorm.from_torch(layer.norm2, dtype=dtype)
        return ours

    def forward(self, x, *, causal=False, mask=None, key_mask=None, kv_cache: LayerCache | None = None):
        """x (..., n, d_model) -> (..., n, d_model): attention, then the feed-forward network, each with Add & Norm.

        ``causal``, ``mask``, ``key_mask`` and ``kv_cache`` mean what they mean for ``MultiHeadAttention`` (as do
        the constructor's ``n_kv_heads``, ``positional`` and ``window``);
        ``last_weights`` afterwards holds the attention weights (..., n_heads, n, n_k).
        """
        _checks.module_input("x", _checks.torch_tensor("x", x), width=self.d_model, dtype=self.dtype,
                             device=self.device, min_ndim=2)
        causal, mask, key_mask = _doors.attention_call(
            x.shape, n_heads=self.n_heads, d_head=self.attention.d_head, dtype=self.dtype, device=self.device,
            causal=causal, mask=mask, key_mask=key_mask, kv_cache=kv_cache, as_array=_checks.torch_tensor,
            layer_cache_class=LayerCache, kv_cache_class=KVCache, n_kv_heads=self.n_kv_heads, window=self.window,
        )
        return self._forward(x, causal, _to(mask, x.device), _to(key_mask, x.device), kv_cache)

    def _forward(self, x, causal, mask, key_mask, kv_cache):
        def attend(h):
            return self.attention._forward(h, causal, mask, key_mask, kv_cache)

        if self.norm_first:
            x = x + attend(self.norm1._forward(x))
            return x + self.feed_forward._forward(self.norm2._forward(x))
        x = self.norm1._forward(x + attend(x))  # Add & Norm
        return self.norm2._forward(x + self.feed_forward._forward(x))  # Add & Norm


def activation_name(activation) -> str:
    """attnlib's name for a PyTorch activation (function or module); refuse, by name, one attnlib lacks."""
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu:
        return "gelu"
    if isinstance(activation, nn.GELU):
        return "gelu" if activation.approximate == "none" else "gelu_tanh"
    if isinstance(activation, functools.partial) and activation.func is F.gelu and not activation.args:
        approximate = activation.keywords.get("approximate", "none")
        if set(activation.keywords) <= {"approximate"} and approximate in ("none", "tanh"):
            return "gelu" if approximate == "none" else "gelu_tanh"
    raise ValueError(f"activation {activation!r} is not one attnlib has: relu, gelu or gelu_tanh "
                     "(F.relu, F.gelu, nn.ReLU(), nn.GELU(), nn.GELU(approximate='tanh'))")
