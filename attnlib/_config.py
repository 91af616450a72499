"""One definition of each module's configuration, shared by ``attnlib.numpy`` and ``attnlib.torch``.

A configuration is everything a module's constructor needs besides the weights, the dtype and the random seed:
``MultiHeadAttention(**m.config())`` rebuilds the same architecture, in either namespace. Each dataclass checks
its own values, so the constructors of both twins validate them with the same code and the same messages, and
``config()`` is derived from the fields instead of being written out by hand in every class.
"""

from __future__ import annotations

import dataclasses

from . import _checks

POSITIONAL_IN_ATTENTION = ("none", "rope", "alibi")
POSITIONAL_IN_MODEL = ("learned",) + POSITIONAL_IN_ATTENTION


@dataclasses.dataclass(frozen=True)
class MultiHeadAttentionConfig:
    """``n_kv_heads``: None = n_heads (multi-head), 1 = multi-query, a divisor of n_heads = grouped-query attention.
    ``positional``: "none", "rope" (q and k rotated at their positions) or "alibi" (a distance bias per head).
    ``window``: None, or the number of most recent keys a query sees in causal calls (sliding window).
    """

    d_model: int
    n_heads: int
    bias: bool = True
    n_kv_heads: int | None = None
    positional: str = "none"
    window: int | None = None

    def __post_init__(self):
        _set(self, "d_model", _checks.positive_int("d_model", self.d_model))
        _set(self, "n_heads", _checks.positive_int("n_heads", self.n_heads))
        _checks.divisible(self.d_model, self.n_heads)
        _set(self, "bias", _checks.flag("bias", self.bias))
        _set(self, "n_kv_heads", _checks.kv_heads(self.n_heads, self.n_kv_heads))
        _set(self, "positional", _checks.choice("positional", self.positional, POSITIONAL_IN_ATTENTION))
        if self.positional == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError("positional='rope' turns pairs of features, so d_head = d_model / n_heads must be even, "
                             f"got d_model={self.d_model}, n_heads={self.n_heads}, "
                             f"d_head={self.d_model // self.n_heads}")
        _set(self, "window", _checks.window(self.window, causal=True))


@dataclasses.dataclass(frozen=True)
class FeedForwardConfig:
    d_model: int
    d_ff: int
    activation: str = "relu"
    bias: bool = True

    def __post_init__(self):
        _set(self, "d_model", _checks.positive_int("d_model", self.d_model))
        _set(self, "d_ff", _checks.positive_int("d_ff", self.d_ff))
        _set(self, "activation", _checks.activation(self.activation))
        _set(self, "bias", _checks.flag("bias", self.bias))


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    d_model: int
    eps: float = 1e-5
    bias: bool = True

    def __post_init__(self):
        _set(self, "d_model", _checks.positive_int("d_model", self.d_model))
        _set(self, "eps", _checks.positive_float("eps", self.eps))
        _set(self, "bias", _checks.flag("bias", self.bias))


@dataclasses.dataclass(frozen=True)
class TransformerBlockConfig:
    d_model: int
    n_heads: int
    d_ff: int
    norm_first: bool = False
    activation: str = "relu"
    eps: float = 1e-5
    bias: bool = True
    n_kv_heads: int | None = None
    positional: str = "none"
    window: int | None = None

    def __post_init__(self):
        attention = self.attention()
        FeedForwardConfig(self.d_model, self.d_ff, self.activation, self.bias)
        LayerNormConfig(self.d_model, self.eps, self.bias)
        _set(self, "eps", float(self.eps))
        _set(self, "norm_first", _checks.flag("norm_first", self.norm_first))
        for name in ("n_kv_heads", "positional", "window"):
            _set(self, name, getattr(attention, name))

    def attention(self) -> MultiHeadAttentionConfig:
        return MultiHeadAttentionConfig(self.d_model, self.n_heads, self.bias, n_kv_heads=self.n_kv_heads,
                                        positional=self.positional, window=self.window)

    def feed_forward(self) -> FeedForwardConfig:
        return FeedForwardConfig(self.d_model, self.d_ff, self.activation, self.bias)

    def norm(self) -> LayerNormConfig:
        return LayerNormConfig(self.d_model, self.eps, self.bias)


class _Stack:
    """The configuration of the blocks of a stack (``TransformerLMConfig``, ``TransformerEncoderConfig``)."""

    def block(self) -> TransformerBlockConfig:
        positional = getattr(self, "positional", "learned")
        return TransformerBlockConfig(
            self.d_model, self.n_heads, self.d_ff, self.norm_first, self.activation, self.eps, self.bias,
            n_kv_heads=getattr(self, "n_kv_heads", None), window=getattr(self, "window", None),
            positional="none" if positional == "learned" else positional,  # a learned table is added before block 1
        )


@dataclasses.dataclass(frozen=True)
class TransformerLMConfig:
    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int
    max_len: int
    norm_first: bool = True
    activation: str = "gelu"
    eps: float = 1e-5
    causal: bool = True
    bias: bool = True
    n_kv_heads: int | None = None
    positional: str = "learned"
    window: int | None = None

    def __post_init__(self):
        _set(self, "positional", _checks.choice("positional", self.positional, POSITIONAL_IN_MODEL))
        _check_stack(self)
        _set(self, "causal", _checks.flag("causal", self.causal))
        block = self.block()
        _set(self, "n_kv_heads", block.n_kv_heads)
        if self.window is not None and not self.causal:
            raise ValueError(f"window={self.window} needs causal=True: a sliding window keeps each query's most "
                             "recent keys, and a bidirectional model has no 'most recent'")

    block = _Stack.block


@dataclasses.dataclass(frozen=True)
class TransformerEncoderConfig:
    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int
    max_len: int
    n_token_types: int = 2
    norm_first: bool = False
    activation: str = "gelu"
    eps: float = 1e-12
    bias: bool = True

    def __post_init__(self):
        _check_stack(self)
        _set(self, "n_token_types", _checks.positive_int("n_token_types", self.n_token_types))

    block = _Stack.block


def _check_stack(config) -> None:
    """What a stack of blocks (a language model or an encoder) checks: its sizes, then one block's arguments."""
    for name in ("vocab_size", "n_layers", "max_len"):
        _set(config, name, _checks.positive_int(name, getattr(config, name)))
    config.block()


def _set(config, name, value) -> None:
    object.__setattr__(config, name, value)  # the dataclasses are frozen; __post_init__ normalises once


class Configured:
    """Mixin: ``_configure`` validates the constructor arguments and stores them; ``config()`` reads them back.

    Subclasses name their dataclass in ``Config``. The fields become plain attributes (``self.d_model``, ...),
    which is how the computation reads them.
    """

    Config: type

    def _configure(self, **arguments):
        config = self.Config(**arguments)
        for field in dataclasses.fields(config):
            setattr(self, field.name, getattr(config, field.name))
        return config

    def config(self) -> dict:
        """The constructor arguments that rebuild this architecture (in either namespace), as a plain dict.

        ``n_kv_heads`` equal to ``n_heads`` is given as None, its default: "as many key/value heads as query
        heads" then keeps its meaning in a configuration whose ``n_heads`` is edited later.
        """
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self.Config)}
        if "n_kv_heads" in values and values["n_kv_heads"] == values["n_heads"]:
            values["n_kv_heads"] = None
        return values


@dataclasses.dataclass(frozen=True)
class MultiHeadLatentAttentionConfig:
    """Multi-head latent attention (DeepSeek-V2): ``d_latent`` is the cached latent's width (the paper's d_c),
    ``d_rope`` the width of the decoupled RoPE query and key (d_h^R, even: RoPE turns pairs of numbers), ``d_head``
    the width of each head's content query, key and value (d_h; by default d_model / n_heads), ``rope_base`` RoPE's
    base (10000 as in RoFormer)."""

    d_model: int
    n_heads: int
    d_latent: int
    d_rope: int
    d_head: int | None = None
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("d_model", "n_heads", "d_latent", "d_rope"):
            _set(self, name, _checks.positive_int(name, getattr(self, name)))
        if self.d_rope % 2:
            raise ValueError(f"d_rope must be even (RoPE rotates pairs of numbers), got d_rope={self.d_rope}")
        if self.d_head is None:
            _checks.divisible(self.d_model, self.n_heads)
            _set(self, "d_head", self.d_model // self.n_heads)
        _set(self, "d_head", _checks.positive_int("d_head", self.d_head))
        _set(self, "rope_base", _checks.positive_float("rope_base", self.rope_base))
