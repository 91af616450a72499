"""The position-wise feed-forward network (Torch twin of ``attnlib.numpy.feedforward``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import _checks
from .._config import FeedForwardConfig
from ._module import Module, copy_weights, floating_dtype, refuse


def relu(x):
    return torch.relu(x)


def gelu(x):
    """Exact GELU, x * Phi(x) with Phi the Gaussian CDF (written out with erf in ``attnlib.numpy.gelu``).

    PyTorch's fused kernel computes the same function in one pass; the twins test keeps the two equal.
    """
    return F.gelu(x)


def gelu_tanh(x):
    """GELU's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GPT-2, BERT's original code)."""
    return F.gelu(x, approximate="tanh")


ACTIVATION_FUNCTIONS = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh}


class FeedForward(Module):
    """x -> act(x @ w_1 + b_1) @ w_2 + b_2, applied to every position independently."""

    Config = FeedForwardConfig

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", bias: bool = True, dtype=None,
                 device=None):
        super().__init__()
        self._configure(d_model=d_model, d_ff=d_ff, activation=activation, bias=bias)
        factory = {"dtype": floating_dtype(dtype), "device": device}
        bound_1, bound_2 = d_model**-0.5, d_ff**-0.5  # nn.Linear's default range
        self.w_1 = nn.Parameter(torch.empty(d_model, d_ff, **factory).uniform_(-bound_1, bound_1))
        self.b_1 = nn.Parameter(torch.empty(d_ff, **factory).uniform_(-bound_1, bound_1)) if bias else None
        self.w_2 = nn.Parameter(torch.empty(d_ff, d_model, **factory).uniform_(-bound_2, bound_2))
        self.b_2 = nn.Parameter(torch.empty(d_model, **factory).uniform_(-bound_2, bound_2)) if bias else None

    @classmethod
    def from_torch(cls, linear1: nn.Linear, linear2: nn.Linear, *, activation: str, dtype=None) -> FeedForward:
        """Build from two ``nn.Linear`` layers (d_model -> d_ff -> d_model) and the activation between them.

        The activation must be named: ``nn.Linear`` pairs do not say which one they were trained with.
        """
        for name, linear in (("linear1", linear1), ("linear2", linear2)):
            if not isinstance(linear, nn.Linear):
                raise TypeError(f"{name} must be a torch.nn.Linear, got {type(linear).__name__}")
        refuse(linear2.in_features != linear1.out_features or linear2.out_features != linear1.in_features,
               f"linear1 ({linear1.in_features} -> {linear1.out_features}) and linear2 ({linear2.in_features} -> "
               f"{linear2.out_features}) do not make d_model -> d_ff -> d_model")
        refuse((linear1.bias is None) != (linear2.bias is None),
               "linear1 and linear2 must both have a bias or both have none")
        weight = linear1.weight.detach()
        ours = cls(linear1.in_features, linear1.out_features, activation=activation, bias=linear1.bias is not None,
                   dtype=weight.dtype if dtype is None else dtype, device=weight.device)
        pairs = [(ours.w_1, linear1.weight.T), (ours.w_2, linear2.weight.T)]  # ours is (d_in, d_out)
        if ours.bias:
            pairs += [(ours.b_1, linear1.bias), (ours.b_2, linear2.bias)]
        copy_weights(ours, pairs)
        return ours

    def forward(self, x):
        """x (..., n, d_model) -> (..., n, d_model); every position is transformed on its own."""
        _checks.module_input("x", _checks.torch_tensor("x", x), width=self.d_model, dtype=self.dtype,
                             device=self.device)
        return self._forward(x)

    def _forward(self, x):
        hidden = x @ self.w_1 + self.b_1 if self.bias else x @ self.w_1  # (..., n, d_ff)
        hidden = ACTIVATION_FUNCTIONS[self.activation](hidden)
        return hidden @ self.w_2 + self.b_2 if self.bias else hidden @ self.w_2  # (..., n, d_model)
