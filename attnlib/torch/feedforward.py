"""The position-wise feed-forward network (Torch twin of ``attnlib.numpy.feedforward``)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks


def relu(x):
    return torch.relu(x)


def gelu(x):
    """Exact GELU, x * Phi(x) through erf (``torch.nn.functional.gelu``'s default, approximate='none')."""
    return 0.5 * x * (1.0 + torch.erf(x / 2.0**0.5))


ACTIVATION_FUNCTIONS = {"relu": relu, "gelu": gelu}


class FeedForward(nn.Module):
    """x -> act(x @ w_1 + b_1) @ w_2 + b_2, applied to every position independently."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu"):
        super().__init__()
        self.d_model = _checks.positive_int("d_model", d_model)
        self.d_ff = _checks.positive_int("d_ff", d_ff)
        self.activation = _checks.activation(activation)
        bound_1, bound_2 = d_model**-0.5, d_ff**-0.5  # nn.Linear's default range
        self.w_1 = nn.Parameter(torch.empty(d_model, d_ff).uniform_(-bound_1, bound_1))
        self.b_1 = nn.Parameter(torch.empty(d_ff).uniform_(-bound_1, bound_1))
        self.w_2 = nn.Parameter(torch.empty(d_ff, d_model).uniform_(-bound_2, bound_2))
        self.b_2 = nn.Parameter(torch.empty(d_model).uniform_(-bound_2, bound_2))

    def config(self) -> dict:
        return {"d_model": self.d_model, "d_ff": self.d_ff, "activation": self.activation}

    @classmethod
    def from_torch(cls, linear1: nn.Linear, linear2: nn.Linear, activation: str = "relu") -> FeedForward:
        """Build from the two ``nn.Linear`` layers of e.g. a ``TransformerEncoderLayer``."""
        ours = cls(linear1.in_features, linear1.out_features, activation=activation)
        ours = ours.to(dtype=linear1.weight.dtype, device=linear1.weight.device)
        with torch.no_grad():
            ours.w_1.copy_(linear1.weight.T)
            ours.b_1.copy_(linear1.bias)
            ours.w_2.copy_(linear2.weight.T)
            ours.b_2.copy_(linear2.bias)
        return ours

    def forward(self, x):
        _checks.floating_array("x", x)
        _checks.last_dim("x", x, self.d_model)
        hidden = ACTIVATION_FUNCTIONS[self.activation](x @ self.w_1 + self.b_1)  # (..., n, d_ff)
        return hidden @ self.w_2 + self.b_2  # (..., n, d_model)
