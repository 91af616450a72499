"""Layer normalisation (Torch twin of ``attnlib.numpy.layernorm``)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis of each position."""

    def __init__(self, d_model: int, *, eps: float = 1e-5):
        super().__init__()
        self.d_model = _checks.positive_int("d_model", d_model)
        self.eps = _checks.positive_float("eps", eps)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def config(self) -> dict:
        return {"d_model": self.d_model, "eps": self.eps}

    @classmethod
    def from_torch(cls, module: nn.LayerNorm) -> LayerNorm:
        if not isinstance(module, nn.LayerNorm):
            raise TypeError(f"module must be a torch.nn.LayerNorm, got {type(module).__name__}")
        if len(module.normalized_shape) != 1 or not module.elementwise_affine or module.bias is None:
            raise ValueError(f"only 1-D affine LayerNorm is supported, got normalized_shape={module.normalized_shape}")
        ours = cls(module.normalized_shape[0], eps=module.eps).to(module.weight.dtype).to(module.weight.device)
        with torch.no_grad():
            ours.weight.copy_(module.weight)
            ours.bias.copy_(module.bias)
        return ours

    def forward(self, x):
        _checks.floating_array("x", x)
        _checks.last_dim("x", x, self.d_model)
        mean = x.mean(dim=-1, keepdim=True)
        variance = x.var(dim=-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(variance + self.eps) * self.weight + self.bias
