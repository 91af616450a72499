"""Layer normalisation (Torch twin of ``attnlib.numpy.layernorm``)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks
from .._config import LayerNormConfig
from ._module import Module, copy_weights, floating_dtype, refuse


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis of each position."""

    Config = LayerNormConfig

    def __init__(self, d_model: int, *, eps: float = 1e-5, bias: bool = True, dtype=None, device=None):
        super().__init__()
        config = LayerNormConfig(d_model, eps, bias)  # not _configure: ``bias`` is the parameter's name here
        self.d_model, self.eps, self._has_bias = config.d_model, config.eps, config.bias
        factory = {"dtype": floating_dtype(dtype), "device": device}
        self.weight = nn.Parameter(torch.ones(d_model, **factory))
        self.bias = nn.Parameter(torch.zeros(d_model, **factory)) if config.bias else None

    def config(self) -> dict:
        return {"d_model": self.d_model, "eps": self.eps, "bias": self._has_bias}

    @classmethod
    def from_torch(cls, module: nn.LayerNorm, *, dtype=None) -> LayerNorm:
        """Copy a ``torch.nn.LayerNorm`` over the last dimension (with or without its bias)."""
        if not isinstance(module, nn.LayerNorm):
            raise TypeError(f"module must be a torch.nn.LayerNorm, got {type(module).__name__}")
        refuse(len(module.normalized_shape) != 1,
               f"normalized_shape={tuple(module.normalized_shape)}: attnlib normalises over the last dimension only")
        refuse(not module.elementwise_affine, "elementwise_affine=False: attnlib's LayerNorm always has a weight")
        weight = module.weight.detach()
        ours = cls(module.normalized_shape[0], eps=module.eps, bias=module.bias is not None,
                   dtype=weight.dtype if dtype is None else dtype, device=weight.device)
        copy_weights(ours, [(ours.weight, weight)] + ([(ours.bias, module.bias)] if module.bias is not None else []))
        return ours

    def forward(self, x):
        """x (..., n, d_model) -> the same shape, each position normalised on its own."""
        _checks.module_input("x", _checks.torch_tensor("x", x), width=self.d_model, dtype=self.dtype,
                             device=self.device)
        return self._forward(x)

    def _forward(self, x):
        # One pass for both statistics; biased variance (divide by d), as in the LayerNorm paper.
        variance, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
        scaled = (x - mean) * torch.rsqrt(variance + self.eps) * self.weight
        return scaled + self.bias if self._has_bias else scaled
