"""Configuration and parameter counting, written once for the NumPy and Torch classes.

These methods only read attributes the two backends share (``named_parameters()``, ``.shape``, ``.ndim``), so
the teaching code in ``attnlib/numpy`` and ``attnlib/torch`` can stay about the computation itself.
"""

from __future__ import annotations

import math

from . import _checks


def count(module, *, matrices_only: bool = False) -> int:
    """Number of scalars in ``module``'s parameters (only 2-D weight matrices if ``matrices_only``)."""
    return sum(math.prod(p.shape) for _, p in module.named_parameters() if not matrices_only or p.ndim == 2)


class BlockBookkeeping:
    """For ``TransformerBlock``: constructor arguments and a per-sub-layer parameter count."""

    def config(self) -> dict:
        return {"d_model": self.attention.d_model, "n_heads": self.attention.n_heads,
                "d_ff": self.feed_forward.d_ff, "norm_first": self.norm_first,
                "activation": self.feed_forward.activation, "eps": self.norm1.eps}

    def parameter_counts(self, *, include_biases: bool = True) -> dict[str, int]:
        """Parameters per sub-layer; ``include_biases=False`` counts only the weight matrices."""
        counts = {
            "attention": count(self.attention, matrices_only=not include_biases),
            "feed_forward": count(self.feed_forward, matrices_only=not include_biases),
            "norms": (count(self.norm1) + count(self.norm2)) if include_biases else 0,
        }
        counts["total"] = sum(counts.values())
        return counts


class LanguageModelBookkeeping:
    """For ``TransformerLM``: constructor arguments, a parameter count by kind, and the checks of its arguments."""

    def config(self) -> dict:
        block = self.blocks[0].config()
        return {"vocab_size": self.vocab_size, "d_model": block["d_model"], "n_heads": block["n_heads"],
                "d_ff": block["d_ff"], "n_layers": len(self.blocks), "max_len": self.max_len,
                "norm_first": block["norm_first"], "activation": block["activation"], "eps": block["eps"],
                "causal": self.causal}

    def parameter_counts(self) -> dict[str, int]:
        per_block = [block.parameter_counts() for block in self.blocks]
        counts = {
            "embeddings": math.prod(self.token_embedding.shape) + math.prod(self.position_embedding.shape),
            "attention": sum(c["attention"] for c in per_block),
            "feed_forward": sum(c["feed_forward"] for c in per_block),
            "norms": sum(c["norms"] for c in per_block) + count(self.norm),
            "head": math.prod(self.head.shape),
        }
        counts["total"] = sum(counts.values())
        return counts

    def _start_position(self, ids, kv_cache) -> int:
        """Check the token ids of a forward call; return the position of the first one (after any cached ones)."""
        _checks.token_ids("ids", ids, self.vocab_size)
        start = 0 if kv_cache is None else kv_cache.length
        n = ids.shape[-1]
        if start + n > self.max_len:
            raise ValueError(
                f"sequence of {start + n} positions (cached {start} + new {n}) exceeds max_len={self.max_len}"
            )
        return start

    def _check_generate(self, prompt_ids, n_new) -> int:
        """Check the arguments of ``generate``; return ``n_new`` as an int."""
        n_new = _checks.non_negative_int("n_new", n_new)
        _checks.token_ids("prompt_ids", prompt_ids, self.vocab_size)
        if not self.causal:
            raise ValueError("generate needs a causal model (causal=True); this one is bidirectional")
        if prompt_ids.shape[-1] + n_new > self.max_len:
            raise ValueError(f"prompt of {prompt_ids.shape[-1]} tokens + n_new={n_new} exceeds max_len={self.max_len}")
        return n_new
