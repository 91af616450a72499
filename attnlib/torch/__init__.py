"""PyTorch implementations: the same names as ``attnlib.numpy``, as functions and ``nn.Module`` classes (CPU, CUDA)."""

from .attention import attention, causal_mask
from .block import TransformerBlock
from .distributed import ring_attention, run_ring_demo, shard_sequence, unshard_sequence
from .encoder import TransformerEncoder, mean_pool
from .feedforward import FeedForward, gelu, gelu_tanh, relu
from .flash_attention import flash_attention, flash_attention_backward, flash_step
from .kv_cache import KVCache, LayerCache
from .latent import LatentCache, MultiHeadLatentAttention
from .layernorm import LayerNorm
from .model import TransformerLM
from .multihead import MultiHeadAttention
from .online_softmax import (
    SoftmaxState,
    merge,
    online_softmax,
    online_softmax_steps,
    rescale_factor,
    three_pass_softmax,
)
from .paged_cache import OutOfBlocksError, PagedKVCache
from .positions import alibi_bias, alibi_slopes, apply_rope, rope_angles, sinusoidal_positions
from .serving import Request, ServingTrace, serve
from .softmax import softmax
from .split_kv import (
    PartialAttention,
    merge_partials,
    paged_attention,
    split_kv_attention,
    split_kv_partials,
)

__all__ = [
    "softmax", "attention", "causal_mask", "MultiHeadAttention", "FeedForward", "relu", "gelu", "gelu_tanh",
    "LayerNorm", "TransformerBlock", "TransformerLM", "TransformerEncoder", "mean_pool", "KVCache", "LayerCache",
    "SoftmaxState", "merge", "rescale_factor", "three_pass_softmax", "online_softmax", "online_softmax_steps",
    "flash_attention", "flash_attention_backward", "flash_step",
    "apply_rope", "rope_angles", "sinusoidal_positions", "alibi_slopes", "alibi_bias",
    "split_kv_attention", "split_kv_partials", "merge_partials", "PartialAttention",
    "MultiHeadLatentAttention", "LatentCache",
    "PagedKVCache", "OutOfBlocksError", "serve", "Request", "ServingTrace", "paged_attention",
    "ring_attention", "shard_sequence", "unshard_sequence", "run_ring_demo",
]
