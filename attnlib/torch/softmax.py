"""Numerically stable softmax (the Torch twin of ``attnlib.numpy.softmax``)."""

from __future__ import annotations

import torch

from .. import _checks


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x - max) / sum(exp(x - max)) along ``dim``; -inf entries get 0; an all -inf row gives zeros, not NaN."""
    _checks.scores("x", x)
    m = x.amax(dim=dim, keepdim=True).detach()  # the shift is a constant for the gradient: it cancels out
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))
