"""PyTorch implementations: the same names as ``attnlib.numpy``, as functions and ``nn.Module`` classes (CPU, CUDA)."""

from .attention import attention, causal_mask
from .block import TransformerBlock
from .feedforward import FeedForward, gelu, relu
from .kv_cache import KVCache, LayerCache
from .layernorm import LayerNorm
from .model import TransformerLM
from .multihead import MultiHeadAttention
from .softmax import softmax

__all__ = [
    "softmax", "attention", "causal_mask", "MultiHeadAttention", "FeedForward", "relu", "gelu", "LayerNorm",
    "TransformerBlock", "TransformerLM", "KVCache", "LayerCache",
]
