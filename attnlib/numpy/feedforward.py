"""The position-wise feed-forward network: expand, apply a nonlinearity, project back."""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .._config import FeedForwardConfig
from ._module import FromTorch, Module, floating_dtype, make_rng, uniform

_ERF = np.vectorize(math.erf, otypes=[np.float64])


def relu(x):
    return np.maximum(x, 0)


def gelu(x):
    """Exact GELU, x * Phi(x) with the Gaussian CDF written through erf (PyTorch's default form)."""
    return (0.5 * x * (1.0 + _ERF(x / np.sqrt(2.0)))).astype(x.dtype)


def gelu_tanh(x):
    """GELU's tanh approximation (GPT-2, BERT's original code; PyTorch's ``approximate="tanh"``)."""
    return (0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))).astype(x.dtype)


ACTIVATION_FUNCTIONS = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh}


class FeedForward(FromTorch, Module):
    """x -> act(x @ w_1 + b_1) @ w_2 + b_2, applied to every position independently."""

    Config = FeedForwardConfig

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", bias: bool = True, seed=None,
                 dtype=np.float64):
        self._configure(d_model=d_model, d_ff=d_ff, activation=activation, bias=bias)
        dtype, rng = floating_dtype(dtype), make_rng(seed)
        self.w_1 = uniform(rng, d_model, (d_model, d_ff), dtype)
        if bias:
            self.b_1 = uniform(rng, d_model, (d_ff,), dtype)
        self.w_2 = uniform(rng, d_ff, (d_ff, d_model), dtype)
        if bias:
            self.b_2 = uniform(rng, d_ff, (d_model,), dtype)

    @classmethod
    def from_torch(cls, linear1, linear2, *, activation: str, dtype=None):
        """Build from two ``torch.nn.Linear`` layers (d_model -> d_ff -> d_model) and the activation between them."""
        from .. import torch as torch_twins  # lazy: attnlib.numpy does not need torch otherwise

        twin = torch_twins.FeedForward.from_torch(linear1, linear2, activation=activation)
        return cls.from_twin(twin, dtype=dtype)

    def __call__(self, x):
        """x (..., n, d_model) -> (..., n, d_model); every position is transformed on its own."""
        x = _checks.module_input("x", _checks.numpy_array("x", x), width=self.d_model, dtype=self.w_1.dtype)
        return self._forward(x)

    def _forward(self, x):
        hidden = x @ self.w_1 + self.b_1 if self.bias else x @ self.w_1  # (..., n, d_ff)
        hidden = ACTIVATION_FUNCTIONS[self.activation](hidden)
        return hidden @ self.w_2 + self.b_2 if self.bias else hidden @ self.w_2  # (..., n, d_model)
