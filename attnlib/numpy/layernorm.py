"""Layer normalisation: turn each position's features into standard scores, then rescale and shift."""

from __future__ import annotations

import numpy as np

from .. import _checks
from ._module import Module


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * weight + bias, statistics over the last axis of each position only."""

    def __init__(self, d_model: int, *, eps: float = 1e-5, dtype=np.float64):
        self.d_model = _checks.positive_int("d_model", d_model)
        self.eps = _checks.positive_float("eps", eps)
        self.weight = np.ones(d_model, dtype=dtype)  # gain
        self.bias = np.zeros(d_model, dtype=dtype)

    def config(self) -> dict:
        return {"d_model": self.d_model, "eps": self.eps}

    def __call__(self, x):
        x = np.asarray(x)
        _checks.floating_array("x", x)
        _checks.last_dim("x", x, self.d_model)
        mean = x.mean(axis=-1, keepdims=True)
        variance = x.var(axis=-1, keepdims=True)  # biased (divide by d), as in the LayerNorm paper and PyTorch
        standard_scores = (x - mean) / np.sqrt(variance + self.eps)
        return standard_scores * self.weight + self.bias
