"""Layer normalisation: the standard score of each feature within one position, then a learned gain and shift."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._config import LayerNormConfig
from ._module import FromTorch, Module, floating_dtype


class LayerNorm(FromTorch, Module):
    """(x - mean) / sqrt(var + eps) * weight + bias, statistics over the last axis of each position only."""

    Config = LayerNormConfig

    def __init__(self, d_model: int, *, eps: float = 1e-5, bias: bool = True, seed=None, dtype=np.float64):
        # ``seed`` is accepted like every NumPy constructor's, though nothing here is random (gain 1, shift 0).
        self._configure(d_model=d_model, eps=eps, bias=bias)
        dtype = floating_dtype(dtype)
        self.weight = np.ones(d_model, dtype=dtype)  # gain
        if bias:
            self.bias = np.zeros(d_model, dtype=dtype)

    def config(self) -> dict:  # ``bias`` is both a flag and (when True) a parameter: report the flag
        return {"d_model": self.d_model, "eps": self.eps, "bias": self._has_bias}

    def _configure(self, **arguments):
        config = super()._configure(**arguments)
        self._has_bias = config.bias
        return config

    def __call__(self, x):
        """x (..., n, d_model) -> the same shape, each position normalised on its own."""
        x = _checks.module_input("x", _checks.numpy_array("x", x), width=self.d_model, dtype=self.weight.dtype)
        return self._forward(x)

    def _forward(self, x):
        mean = x.mean(axis=-1, keepdims=True)
        variance = x.var(axis=-1, keepdims=True)  # biased (divide by d), as in the LayerNorm paper and PyTorch
        standard_scores = (x - mean) / np.sqrt(variance + self.eps)
        scaled = standard_scores * self.weight
        return scaled + self.bias if self._has_bias else scaled
