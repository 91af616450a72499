"""How big a decoder-only Transformer is: its parameters, its KV cache, the work of one forward call.

Pure arithmetic on a model's configuration, in plain Python integers (no NumPy, no torch), so it answers for a
70-billion-parameter model as readily as for attnlib's own. The formulas are written out in each docstring; the
book checks them against attnlib's models (``TransformerLM.parameter_counts()``, ``KVCache.nbytes`` and PyTorch's
FLOP counter).

* ``parameter_counts`` -- parameters by kind (the keys of ``TransformerLM.parameter_counts()``), with the features
  of real models that attnlib's teaching model lacks: grouped-query attention, a gated (SwiGLU) feed-forward
  network, RMSNorm, no biases, rotary positions, tied embeddings.
* ``kv_cache_bytes`` -- the memory of the keys and values a KV cache keeps, optionally for a sliding window.
* ``forward_multiply_adds`` -- the multiply-adds of one forward call of attnlib's ``TransformerLM``, with or
  without a KV cache.
* ``LLAMA_3_70B`` -- a real configuration to feed them.
"""

from __future__ import annotations

import numbers

NORMS = ("layernorm", "rmsnorm")

#: Meta's Llama 3 70B, from the config.json released with meta-llama/Meta-Llama-3-70B (hidden size 8192, 80 layers,
#: 64 query heads and 8 key/value heads of size 128, SwiGLU intermediate size 28672, a 128256-token vocabulary, no
#: biases, RMSNorm, rotary positions, untied embeddings), as keyword arguments of ``parameter_counts``.
LLAMA_3_70B = {"vocab_size": 128256, "d_model": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "d_head": 128,
               "d_ff": 28672, "gated_ffn": True, "biases": False, "norm": "rmsnorm", "learned_positions": 0,
               "tied_embeddings": False}


def _whole(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int, or an error naming ``name`` if it is not a whole number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def parameter_counts(*, vocab_size: int, d_model: int, n_layers: int, n_heads: int, d_ff: int,
                     n_kv_heads: int | None = None, d_head: int | None = None, gated_ffn: bool = False,
                     biases: bool = True, norm: str = "layernorm", learned_positions: int = 0,
                     tied_embeddings: bool = False) -> dict[str, int]:
    """Parameters of a decoder-only Transformer by kind: embeddings, attention, feed_forward, norms, head, total.

    With ``q = n_heads * d_head`` and ``kv = n_kv_heads * d_head`` (by default ``n_kv_heads = n_heads`` and
    ``d_head = d_model / n_heads``), each of the ``n_layers`` layers holds

    * attention: ``d_model * q`` (W_Q) + ``2 * d_model * kv`` (W_K, W_V) + ``q * d_model`` (W_O), plus biases
      ``q + 2 * kv + d_model``;
    * feed-forward: ``2 * d_model * d_ff`` (W_1, W_2), or ``3 * d_model * d_ff`` when ``gated_ffn`` (SwiGLU's
      W_gate, W_up, W_down), plus biases ``d_ff + d_model``, or ``2 * d_ff + d_model`` when gated;
    * two norms of ``2 * d_model`` parameters each (LayerNorm's gamma and beta) or ``d_model`` (RMSNorm: gamma).

    The model adds one final norm, a token table of ``vocab_size * d_model`` and a position table of
    ``learned_positions * d_model`` (0 for rotary or sinusoidal positions), and an output head of
    ``d_model * vocab_size`` unless ``tied_embeddings`` reuses the token table. ``biases=False`` drops every bias.
    With the defaults and ``learned_positions = max_len`` this is exactly attnlib's ``TransformerLM``.
    """
    vocab_size, d_model = _whole("vocab_size", vocab_size), _whole("d_model", d_model)
    n_layers, n_heads, d_ff = _whole("n_layers", n_layers), _whole("n_heads", n_heads), _whole("d_ff", d_ff)
    n_kv_heads = n_heads if n_kv_heads is None else _whole("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads} (each key/value head serves a "
                         f"group of query heads)")
    if d_head is None:
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; give d_head")
        d_head = d_model // n_heads
    d_head = _whole("d_head", d_head)
    gated_ffn, biases = _flag("gated_ffn", gated_ffn), _flag("biases", biases)
    tied_embeddings = _flag("tied_embeddings", tied_embeddings)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    learned_positions = _whole("learned_positions", learned_positions, minimum=0)

    q_width, kv_width = n_heads * d_head, n_kv_heads * d_head
    attention = d_model * q_width + 2 * d_model * kv_width + q_width * d_model
    feed_forward = (3 if gated_ffn else 2) * d_model * d_ff
    if biases:
        attention += q_width + 2 * kv_width + d_model
        feed_forward += (2 if gated_ffn else 1) * d_ff + d_model
    per_norm = 2 * d_model if norm == "layernorm" else d_model
    counts = {
        "embeddings": (vocab_size + learned_positions) * d_model,
        "attention": n_layers * attention,
        "feed_forward": n_layers * feed_forward,
        "norms": (2 * n_layers + 1) * per_norm,
        "head": 0 if tied_embeddings else d_model * vocab_size,
    }
    counts["total"] = sum(counts.values())
    return counts


def kv_cache_bytes(*, n_layers: int, n_kv_heads: int, d_head: int, n_tokens: int, bytes_per_number: int | float,
                   batch: int = 1, window: int | None = None) -> int | float:
    """Bytes of the keys and values a KV cache holds after ``n_tokens`` tokens of ``batch`` sequences:

    ``2 * n_layers * n_kv_heads * d_head * n_tokens * bytes_per_number * batch``,

    the 2 for keys and values. ``n_tokens=1`` gives the cost of one more token in context. With a sliding
    ``window`` (attention to the last ``window`` tokens only) older entries are dropped, so ``n_tokens`` counts
    at most ``window``. ``bytes_per_number`` is 4 for float32, 2 for bfloat16 and float16, 1 for 8-bit numbers
    (a fraction, such as 0.5 for 4 bits, also works).
    """
    n_layers, n_kv_heads = _whole("n_layers", n_layers), _whole("n_kv_heads", n_kv_heads)
    d_head, batch = _whole("d_head", d_head), _whole("batch", batch)
    n_tokens = _whole("n_tokens", n_tokens, minimum=0)
    if isinstance(bytes_per_number, bool) or not isinstance(bytes_per_number, numbers.Real) \
            or not 0 < bytes_per_number < float("inf"):
        raise ValueError(f"bytes_per_number must be a positive number, got {bytes_per_number!r}")
    if window is not None:
        n_tokens = min(n_tokens, _whole("window", window))
    return 2 * n_layers * n_kv_heads * d_head * n_tokens * bytes_per_number * batch


def forward_multiply_adds(n_new: int, n_keys: int, *, n_layers: int, d_model: int, d_ff: int,
                          vocab_size: int) -> int:
    """Multiply-adds of the matrix products in one forward call of attnlib's ``TransformerLM`` (one sequence):
    ``n_new`` tokens go in, and each attends to ``n_keys`` keys (``n_keys = n_new`` without a cache; with a KV
    cache, ``n_new = 1`` and ``n_keys`` is the length so far). Per layer,

    * ``4 * n_new * d_model**2`` for the projections W_Q, W_K, W_V and W_O,
    * ``2 * n_new * n_keys * d_model`` for the scores q k^T and the weighted sum of the values (all heads),
    * ``2 * n_new * d_model * d_ff`` for the feed-forward network,

    and ``n_new * d_model * vocab_size`` once for the output head. Additions of biases, the softmax and the norms
    are not matrix products and are not counted (a FLOP counter counts two FLOPs per multiply-add).
    """
    n_new, n_keys = _whole("n_new", n_new), _whole("n_keys", n_keys)
    if n_keys < n_new:
        raise ValueError(f"n_keys={n_keys} must be at least n_new={n_new}: every new token is also a key")
    n_layers, d_model = _whole("n_layers", n_layers), _whole("d_model", d_model)
    d_ff, vocab_size = _whole("d_ff", d_ff), _whole("vocab_size", vocab_size)
    per_layer = 4 * n_new * d_model**2 + 2 * n_new * n_keys * d_model + 2 * n_new * d_model * d_ff
    return n_layers * per_layer + n_new * d_model * vocab_size
