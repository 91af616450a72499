"""How big a decoder-only Transformer is: its parameters, its KV cache, the work of one forward call.

Pure arithmetic on a model's configuration, in plain Python integers (no NumPy, no torch), so it answers for a
70-billion-parameter model as readily as for attnlib's own. The formulas are written out in each docstring; the
book checks them against attnlib's models (``TransformerLM.parameter_counts()``, ``KVCache.nbytes`` and PyTorch's
FLOP counter).

* ``parameter_counts`` -- parameters by kind (the keys of ``TransformerLM.parameter_counts()``), with the features
  of real models that attnlib's teaching model lacks: grouped-query attention, a gated (SwiGLU) feed-forward
  network, RMSNorm, no biases, rotary positions, tied embeddings.
* ``latent_attention_parameters`` -- the parameters of a multi-head latent attention layer.
* ``kv_cache_bytes`` -- the memory of the keys and values a KV cache keeps, optionally for a sliding window.
* ``forward_multiply_adds`` -- the multiply-adds of one forward call of attnlib's ``TransformerLM``, with or
  without a KV cache.
* ``LLAMA_3_70B``, ``MISTRAL_7B`` -- real configurations to feed ``parameter_counts``.
* ``AttentionLayout`` and the catalogue ``CACHE_LAYOUTS`` -- what the attention of published models keeps in its
  KV cache (multi-head, grouped-query, multi-query, multi-head latent, sliding window), with
  ``kv_cache_bytes_per_token``, ``layout_kv_cache_bytes`` and ``cache_table`` to compare them.
"""

from __future__ import annotations

import dataclasses
import numbers

NORMS = ("layernorm", "rmsnorm")

#: Meta's Llama 3 70B, from the config.json released with meta-llama/Meta-Llama-3-70B (hidden size 8192, 80 layers,
#: 64 query heads and 8 key/value heads of size 128, SwiGLU intermediate size 28672, a 128256-token vocabulary, no
#: biases, RMSNorm, rotary positions, untied embeddings), as keyword arguments of ``parameter_counts``.
LLAMA_3_70B = {"vocab_size": 128256, "d_model": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "d_head": 128,
               "d_ff": 28672, "gated_ffn": True, "biases": False, "norm": "rmsnorm", "learned_positions": 0,
               "tied_embeddings": False}

#: Mistral 7B v0.1, from Table 1 of Jiang et al. (2023), "Mistral 7B", arXiv:2310.06825 (dim 4096, 32 layers,
#: head_dim 128, hidden_dim 14336, 32 heads, 8 kv heads, vocabulary 32000) and the config.json released with
#: mistralai/Mistral-7B-v0.1 (no biases, RMSNorm, rotary positions, untied embeddings). Its attention also has a
#: 4096-token sliding window (``CACHE_LAYOUTS["Mistral-7B-v0.1"]``), which changes no parameter.
MISTRAL_7B = {"vocab_size": 32000, "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "d_head": 128,
              "d_ff": 14336, "gated_ffn": True, "biases": False, "norm": "rmsnorm", "learned_positions": 0,
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


def latent_attention_parameters(*, d_model: int, n_heads: int, d_latent: int, d_rope: int,
                                d_head: int | None = None) -> dict[str, int]:
    """Parameters of one multi-head latent attention layer (attnlib's ``MultiHeadLatentAttention``: no biases, no
    query compression) by role, with ``heads = n_heads * d_head`` (by default ``d_head = d_model / n_heads``):

    * queries: ``d_model * heads`` (W_q) + ``d_model * n_heads * d_rope`` (W_qr, the RoPE part of every head);
    * keys_values: ``d_model * d_latent`` (W_dkv) + ``2 * d_latent * heads`` (W_uk, W_uv) + ``d_model * d_rope``
      (W_kr, the shared RoPE key);
    * output: ``heads * d_model`` (W_o).
    """
    d_model, n_heads = _whole("d_model", d_model), _whole("n_heads", n_heads)
    d_latent, d_rope = _whole("d_latent", d_latent), _whole("d_rope", d_rope)
    if d_head is None:
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; give d_head")
        d_head = d_model // n_heads
    heads = n_heads * _whole("d_head", d_head)
    counts = {
        "queries": d_model * heads + d_model * n_heads * d_rope,
        "keys_values": d_model * d_latent + 2 * d_latent * heads + d_model * d_rope,
        "output": heads * d_model,
    }
    counts["total"] = sum(counts.values())
    return counts


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


# --------------------------------------------------------------------------------------------------------------
# What one token leaves in the KV cache, for the ways published models share keys and values
# --------------------------------------------------------------------------------------------------------------

KINDS = ("MHA", "GQA", "MQA", "MLA")


@dataclasses.dataclass(frozen=True)
class AttentionLayout:
    """The attention of a model as far as its KV cache is concerned; the fields are checked when it is built.

    * Multi-head (MHA), grouped-query (GQA) and multi-query (MQA) attention cache a key and a value of ``d_head``
      numbers for each of ``n_kv_heads`` heads (``None``: one per query head, MHA; 1: MQA; in between: GQA).
    * Multi-head latent attention (MLA, DeepSeek-V2) caches one latent vector of ``d_latent`` numbers (the paper's
      d_c), from which every head's keys and values are rebuilt, plus one RoPE key of ``d_rope`` numbers (d_h^R)
      shared by all heads; give both, and leave ``n_kv_heads`` unset. ``d_head`` is then the width of a head's
      rebuilt keys and values, which the cache does not hold.
    * ``window``: sliding-window attention sees only the last ``window`` tokens, so the cache keeps at most that many
      positions.

    ``kind`` names which of the four it is; ``source`` says where the numbers come from.
    """

    name: str
    n_layers: int
    n_heads: int
    d_head: int
    n_kv_heads: int | None = None
    d_latent: int | None = None
    d_rope: int | None = None
    window: int | None = None
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("n_layers", "n_heads", "d_head"):
            object.__setattr__(self, field, _whole(field, getattr(self, field)))
        for field in ("n_kv_heads", "d_latent", "d_rope", "window"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, _whole(field, getattr(self, field)))
        if (self.d_latent is None) != (self.d_rope is None):
            raise ValueError(f"d_latent and d_rope come together (multi-head latent attention caches both), got "
                             f"d_latent={self.d_latent} and d_rope={self.d_rope}")
        if self.d_latent is not None and self.n_kv_heads is not None:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} has no meaning for latent attention (d_latent="
                             f"{self.d_latent}): its heads rebuild their keys and values from one cached latent")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (each key/value "
                             f"head serves a group of query heads)")

    @property
    def kind(self) -> str:
        """"MHA", "GQA", "MQA" or "MLA"."""
        if self.d_latent is not None:
            return "MLA"
        n_kv_heads = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        if n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if n_kv_heads == 1 else "GQA"

    @property
    def numbers_per_token_per_layer(self) -> int:
        """How many numbers one token adds to one layer's cache.

        ``2 * n_kv_heads * d_head`` (a key and a value per key/value head) for MHA, GQA and MQA;
        ``d_latent + d_rope`` for MLA, whatever the number of heads.
        """
        if self.d_latent is not None:
            return self.d_latent + self.d_rope
        n_kv_heads = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        return 2 * n_kv_heads * self.d_head

    @classmethod
    def from_parameters(cls, name: str, parameters: dict, *, window: int | None = None,
                        source: str = "") -> AttentionLayout:
        """The layout of a configuration written for ``parameter_counts`` (such as ``LLAMA_3_70B``)."""
        return cls(name, parameters["n_layers"], parameters["n_heads"], parameters["d_head"],
                   n_kv_heads=parameters.get("n_kv_heads"), window=window, source=source)


def _bytes_per_number(value) -> int | float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise ValueError(f"bytes_per_number must be a positive number, got {value!r}")
    return value


def _layout(value) -> AttentionLayout:
    if not isinstance(value, AttentionLayout):
        raise TypeError(f"layout must be an attnlib.sizes.AttentionLayout (see CACHE_LAYOUTS), got "
                        f"{type(value).__name__}")
    return value


def kv_cache_bytes_per_token(layout: AttentionLayout, *, bytes_per_number: int | float = 2) -> int | float:
    """Bytes one more token adds to the KV cache of all of ``layout``'s layers (one sequence):

    ``n_layers * numbers_per_token_per_layer * bytes_per_number``, that is ``2 * n_layers * n_kv_heads * d_head``
    numbers for MHA, GQA and MQA and ``n_layers * (d_latent + d_rope)`` for MLA. A sliding window does not change
    this cost; it stops the cache from growing once ``window`` tokens are held (``layout_kv_cache_bytes``).
    ``bytes_per_number``: 2 for bfloat16 and float16 (the default), 4 for float32, 1 for 8-bit numbers.
    """
    layout, bytes_per_number = _layout(layout), _bytes_per_number(bytes_per_number)
    return layout.n_layers * layout.numbers_per_token_per_layer * bytes_per_number


def layout_kv_cache_bytes(layout: AttentionLayout, n_tokens: int, *, bytes_per_number: int | float = 2,
                          batch: int = 1) -> int | float:
    """Bytes of ``layout``'s KV cache after ``n_tokens`` tokens of ``batch`` sequences.

    ``kv_cache_bytes_per_token(layout) * min(n_tokens, window) * batch``: with a sliding window the cache keeps the
    last ``window`` positions only, however long the sequence grows. For MHA, GQA and MQA this is exactly
    ``kv_cache_bytes`` with the layout's numbers.
    """
    layout = _layout(layout)
    n_tokens, batch = _whole("n_tokens", n_tokens, minimum=0), _whole("batch", batch)
    cached = n_tokens if layout.window is None else min(n_tokens, layout.window)
    return kv_cache_bytes_per_token(layout, bytes_per_number=bytes_per_number) * cached * batch


def cache_table(n_tokens: int, *, layouts=None, bytes_per_number: int | float = 2) -> list[dict]:
    """One row per layout (by default every entry of ``CACHE_LAYOUTS``), ready to print as a table.

    Each row: ``name``, ``kind``, ``window``, ``numbers_per_token_per_layer``, ``bytes_per_token`` (all layers) and
    ``bytes_at_n_tokens`` (one sequence of ``n_tokens`` tokens, the window capping the cached positions).
    """
    layouts = list(CACHE_LAYOUTS.values()) if layouts is None else [_layout(layout) for layout in layouts]
    return [
        {
            "name": layout.name,
            "kind": layout.kind,
            "window": layout.window,
            "numbers_per_token_per_layer": layout.numbers_per_token_per_layer,
            "bytes_per_token": kv_cache_bytes_per_token(layout, bytes_per_number=bytes_per_number),
            "bytes_at_n_tokens": layout_kv_cache_bytes(layout, n_tokens, bytes_per_number=bytes_per_number),
        }
        for layout in layouts
    ]


#: Published attention layouts by name, one per way of sharing keys and values. Llama-2-7B is MHA, Falcon-7B MQA,
#: Llama-3-70B GQA, Mistral-7B-v0.1 GQA with a 4096-token window, DeepSeek-V2 and DeepSeek-V3 MLA. Each
#: ``source`` names the paper or released configuration file the numbers are read from.
#:
#: :meta hide-value:
CACHE_LAYOUTS = {
    layout.name: layout
    for layout in (
        # Touvron et al. (2023), "Llama 2", arXiv:2307.09288, and meta-llama/Llama-2-7b-hf's config.json: hidden size
        # 4096, 32 layers, 32 heads of 128 and one key/value head per query head.
        AttentionLayout("Llama-2-7B", n_layers=32, n_heads=32, d_head=128,
                        source="Touvron et al. 2023 (arXiv:2307.09288); config.json of meta-llama/Llama-2-7b-hf"),
        # tiiuae/falcon-7b's config.json: hidden size 4544, 71 heads (of 4544 / 71 = 64), 32 layers, multi_query.
        AttentionLayout("Falcon-7B", n_layers=32, n_heads=71, d_head=64, n_kv_heads=1,
                        source="config.json of tiiuae/falcon-7b (multi_query: true)"),
        AttentionLayout.from_parameters("Llama-3-70B", LLAMA_3_70B,
                                        source="Llama Team 2024 (arXiv:2407.21783); config.json of "
                                               "meta-llama/Meta-Llama-3-70B"),
        AttentionLayout.from_parameters("Mistral-7B-v0.1", MISTRAL_7B, window=4096,
                                        source="Jiang et al. 2023 (arXiv:2310.06825), Table 1: window_size 4096"),
        # DeepSeek-AI (2024), "DeepSeek-V2", arXiv:2405.04434, its model hyper-parameters: 60 layers, 128 heads of
        # d_h = 128, d_c = 4 d_h = 512, d_h^R = d_h / 2 = 64 (config.json: kv_lora_rank 512, qk_rope_head_dim 64).
        AttentionLayout("DeepSeek-V2", n_layers=60, n_heads=128, d_head=128, d_latent=512, d_rope=64,
                        source="DeepSeek-AI 2024 (arXiv:2405.04434), model hyper-parameters"),
        # DeepSeek-AI (2024), "DeepSeek-V3 Technical Report", arXiv:2412.19437, its model hyper-parameters: 61 layers,
        # 128 heads of d_h = 128, d_c = 512, d_h^R = 64 (config.json of deepseek-ai/DeepSeek-V3: num_hidden_layers 61,
        # kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim 128).
        AttentionLayout("DeepSeek-V3", n_layers=61, n_heads=128, d_head=128, d_latent=512, d_rope=64,
                        source="DeepSeek-AI 2024 (arXiv:2412.19437), model hyper-parameters"),
    )
}
