"""Parameter counting, written once for the NumPy and Torch classes.

These methods only read attributes the two backends share (``named_parameters()``, ``.shape``, ``.ndim``), so
the teaching code in ``attnlib/numpy`` and ``attnlib/torch`` can stay about the computation itself.
"""

from __future__ import annotations

import math

from . import _checks


def count(module, *, matrices_only: bool = False) -> int:
    """Number of scalars in ``module``'s parameters (only 2-D weight matrices if ``matrices_only``)."""
    return sum(math.prod(p.shape) for _, p in module.named_parameters() if not matrices_only or p.ndim == 2)


class ContextBookkeeping:
    """``extend_context`` for every module that declares a context length (block, encoder, language model)."""

    def extend_context(self, max_len: int) -> None:
        """Raise the declared context length to ``max_len`` positions (a model with a learned table cannot).

        RoPE, ALiBi and position-free models have no parameter tied to a position, so the limit is only a
        declaration; a learned position table has exactly ``max_len`` rows.
        """
        max_len = _checks.positive_int("max_len", max_len)
        if self.positional == "learned":
            raise ValueError(f"positional='learned': the position table has {self.max_len} rows, one per position, "
                             f"and no vector for later positions; it cannot be extended to max_len={max_len}")
        if max_len < self.max_len:
            raise ValueError(f"extend_context raises the limit; max_len={max_len} is below the current {self.max_len}")
        self.max_len = max_len


class BlockBookkeeping(ContextBookkeeping):
    """For ``TransformerBlock``: a per-sub-layer parameter count, and the attention weights of the last call."""

    def parameter_counts(self, *, include_biases: bool = True) -> dict[str, int]:
        """Parameters per sub-layer; ``include_biases=False`` counts only the weight matrices."""
        counts = {
            "attention": count(self.attention, matrices_only=not include_biases),
            "feed_forward": count(self.feed_forward, matrices_only=not include_biases),
            "norms": (count(self.norm1) + count(self.norm2)) if include_biases else 0,
        }
        counts["total"] = sum(counts.values())
        return counts

    @property
    def last_weights(self):
        """The attention weights of the last call, (..., n_heads, n_q, n_k) (``attention.last_weights``)."""
        return self.attention.last_weights


class StackBookkeeping(ContextBookkeeping):
    """For a stack of ``blocks``: every layer's attention weights of the last call."""

    @property
    def last_weights(self) -> list:
        """One entry per layer: the attention weights of the last call, (..., n_heads, n_q, n_k) each."""
        return [block.last_weights for block in self.blocks]


class EncoderBookkeeping(StackBookkeeping):
    """For ``TransformerEncoder``: a parameter count by kind."""

    def parameter_counts(self) -> dict[str, int]:
        per_block = [block.parameter_counts() for block in self.blocks]
        counts = {
            "embeddings": sum(math.prod(e.shape) for e in (self.token_embedding, self.position_embedding,
                                                            self.token_type_embedding)),
            "attention": sum(c["attention"] for c in per_block),
            "feed_forward": sum(c["feed_forward"] for c in per_block),
            "norms": sum(c["norms"] for c in per_block) + count(self.embedding_norm),
        }
        counts["total"] = sum(counts.values())
        return counts


class LanguageModelBookkeeping(StackBookkeeping):
    """For ``TransformerLM``: a parameter count by kind, and every layer's attention weights of the last call."""

    def parameter_counts(self) -> dict[str, int]:
        per_block = [block.parameter_counts() for block in self.blocks]
        counts = {
            "embeddings": math.prod(self.token_embedding.shape) + (
                math.prod(self.position_embedding.shape) if self.positional == "learned" else 0),
            "attention": sum(c["attention"] for c in per_block),
            "feed_forward": sum(c["feed_forward"] for c in per_block),
            "norms": sum(c["norms"] for c in per_block) + count(self.norm),
            "head": math.prod(self.head.shape),
        }
        counts["total"] = sum(counts.values())
        return counts


class LatentBookkeeping:
    """For ``MultiHeadLatentAttention``: parameters by role (``attnlib.sizes.latent_attention_parameters``)."""

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by role: ``queries`` (W_q, W_qr), ``keys_values`` (W_dkv, W_uk, W_uv, W_kr), ``output``
        (W_o), and their ``total``."""
        sizes = {name: math.prod(p.shape) for name, p in self.named_parameters()}
        counts = {
            "queries": sizes["w_q"] + sizes["w_qr"],
            "keys_values": sizes["w_dkv"] + sizes["w_uk"] + sizes["w_uv"] + sizes["w_kr"],
            "output": sizes["w_o"],
        }
        counts["total"] = sum(counts.values())
        return counts
