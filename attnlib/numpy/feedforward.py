"""The position-wise feed-forward network: expand, apply a nonlinearity, project back."""

from __future__ import annotations

import numpy as np

from .. import _checks
from ._module import Module, make_rng, uniform

_ERF = np.vectorize(__import__("math").erf, otypes=[np.float64])


def relu(x):
    return np.maximum(x, 0)


def gelu(x):
    """Exact GELU, x * Phi(x) with the Gaussian CDF written through erf (PyTorch's default form)."""
    return (0.5 * x * (1.0 + _ERF(x / np.sqrt(2.0)))).astype(x.dtype)


ACTIVATION_FUNCTIONS = {"relu": relu, "gelu": gelu}


class FeedForward(Module):
    """x -> act(x @ w_1 + b_1) @ w_2 + b_2, applied to every position independently."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", seed=None, dtype=np.float64):
        self.d_model = _checks.positive_int("d_model", d_model)
        self.d_ff = _checks.positive_int("d_ff", d_ff)
        self.activation = _checks.activation(activation)
        rng = make_rng(seed)
        self.w_1 = uniform(rng, d_model, (d_model, d_ff), dtype)
        self.b_1 = uniform(rng, d_model, (d_ff,), dtype)
        self.w_2 = uniform(rng, d_ff, (d_ff, d_model), dtype)
        self.b_2 = uniform(rng, d_ff, (d_model,), dtype)

    def config(self) -> dict:
        return {"d_model": self.d_model, "d_ff": self.d_ff, "activation": self.activation}

    def __call__(self, x):
        x = np.asarray(x)
        _checks.floating_array("x", x)
        _checks.last_dim("x", x, self.d_model)
        hidden = ACTIVATION_FUNCTIONS[self.activation](x @ self.w_1 + self.b_1)  # (..., n, d_ff)
        return hidden @ self.w_2 + self.b_2  # (..., n, d_model)
