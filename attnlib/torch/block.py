"""One Transformer layer with Add & Norm (Torch twin of ``attnlib.numpy.block``)."""

from __future__ import annotations

from torch import nn

from .._bookkeeping import BlockBookkeeping
from .feedforward import FeedForward
from .layernorm import LayerNorm
from .multihead import MultiHeadAttention


class TransformerBlock(BlockBookkeeping, nn.Module):
    """Post-LN by default, x = norm(x + sublayer(x)); pre-LN with ``norm_first=True``, x = x + sublayer(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, norm_first: bool = False,
                 activation: str = "relu", eps: float = 1e-5):
        super().__init__()
        self.norm_first = bool(norm_first)
        self.attention = MultiHeadAttention(d_model, n_heads)
        self.feed_forward = FeedForward(d_model, d_ff, activation=activation)
        self.norm1 = LayerNorm(d_model, eps=eps)
        self.norm2 = LayerNorm(d_model, eps=eps)

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> TransformerBlock:
        """Copy a ``torch.nn.TransformerEncoderLayer`` (relu or gelu, any norm_first)."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"layer must be a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        activation = {1: "relu", 2: "gelu"}.get(getattr(layer, "activation_relu_or_gelu", 0))
        if activation is None:
            raise ValueError(f"only relu or gelu activations are supported, got {layer.activation!r}")
        ours = cls(layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.linear1.out_features,
                   norm_first=layer.norm_first, activation=activation, eps=layer.norm1.eps)
        ours.attention = MultiHeadAttention.from_torch(layer.self_attn)
        ours.feed_forward = FeedForward.from_torch(layer.linear1, layer.linear2, activation=activation)
        ours.norm1 = LayerNorm.from_torch(layer.norm1)
        ours.norm2 = LayerNorm.from_torch(layer.norm2)
        return ours

    def forward(self, x, *, causal=False, mask=None, kv_cache=None):
        def attend(h):
            return self.attention(h, causal=causal, mask=mask, kv_cache=kv_cache)
        if self.norm_first:
            x = x + attend(self.norm1(x))
            return x + self.feed_forward(self.norm2(x))
        x = self.norm1(x + attend(x))  # Add & Norm
        return self.norm2(x + self.feed_forward(x))  # Add & Norm
