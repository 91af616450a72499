"""Numerically stable softmax (the Torch twin of ``attnlib.numpy.softmax``)."""

from __future__ import annotations

import torch

from .. import _checks


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x - max) / sum(exp(x - max)) along ``dim``; -inf entries get 0; an all -inf row gives zeros, not NaN."""
    x = _checks.scores("x", _checks.torch_tensor("x", x))
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an integer in [{-x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}, "
                         f"got {dim!r}")
    return _softmax(x, dim)


def _softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    m = x.amax(dim=dim, keepdim=True).detach()  # the shift is a constant for the gradient: it cancels out
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))
