"""Online softmax on torch tensors (the twin of ``attnlib.numpy.online_softmax``; same names, same meaning).

A running state ``(m, l)`` per row -- the maximum seen so far and the sum of ``exp(x - m)`` -- is updated block
by block; when the maximum grows, the old sum is corrected with the single factor ``exp(m_old - m_new)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks


def _row_block(name: str, x: torch.Tensor) -> torch.Tensor:
    """A block of scores: a floating tensor, at least 1-D, finite except for -inf (masked entries)."""
    return _checks.scores(name, _checks.torch_tensor(name, x))


def rescale_factor(m_old: torch.Tensor, m_new: torch.Tensor) -> torch.Tensor:
    """exp(m_old - m_new), and 1 where nothing has been seen yet (m_new = -inf) instead of NaN."""
    nothing_seen = torch.isneginf(m_new)
    safe_new = torch.where(nothing_seen, torch.zeros_like(m_new), m_new)
    return torch.where(nothing_seen, torch.ones_like(m_new), torch.exp(m_old - safe_new))


@dataclass(frozen=True, eq=False)  # eq on arrays would be elementwise: compare .m and .l instead
class SoftmaxState:
    """Running maximum ``m`` and running sum ``l = sum(exp(x - m))`` of each row, shaped ``x.shape[:-1]``."""

    m: torch.Tensor
    l: torch.Tensor

    @classmethod
    def empty(cls, shape=(), dtype=torch.float64, device=None) -> SoftmaxState:
        """The state before any entry is seen: m = -inf, l = 0 (the identity of ``merge``)."""
        return cls(
            m=torch.full(tuple(shape), float("-inf"), dtype=dtype, device=device),
            l=torch.zeros(tuple(shape), dtype=dtype, device=device),
        )

    @classmethod
    def from_block(cls, x_block: torch.Tensor) -> SoftmaxState:
        """Summarise one block of a row (along the last dim) on its own."""
        x_block = _row_block("x_block", x_block)
        m = x_block.amax(dim=-1)
        shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # all masked: any shift gives l = 0
        l = torch.exp(x_block - shift[..., None]).sum(dim=-1)
        return cls(m=m, l=l)

    def update(self, x_block: torch.Tensor) -> SoftmaxState:
        """The state after also seeing ``x_block``."""
        return merge(self, SoftmaxState.from_block(x_block))

    def logsumexp(self) -> torch.Tensor:
        """m + log(l): log(sum(exp(x))) of everything seen (-inf if nothing unmasked was seen)."""
        return torch.where(self.l > 0, self.m + torch.log(self.l), torch.full_like(self.m, float("-inf")))

    def probabilities(self, x_block: torch.Tensor) -> torch.Tensor:
        """exp(x - m) / l for entries of a row this state has fully seen; a fully masked row gives zeros."""
        x_block = _row_block("x_block", x_block)
        shift = torch.where(torch.isneginf(self.m), torch.zeros_like(self.m), self.m)[..., None]
        e = torch.exp(x_block - shift)
        total = self.l[..., None]
        return e / torch.where(total > 0, total, torch.ones_like(total))


def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Combine the states of two disjoint parts of the same rows (associative and commutative)."""
    for name, state in (("a", a), ("b", b)):
        if not isinstance(state, SoftmaxState):
            raise TypeError(f"{name} must be a SoftmaxState, got {type(state).__name__}")
    try:
        torch.broadcast_shapes(a.m.shape, b.m.shape)
    except RuntimeError:
        raise ValueError(f"cannot merge states of shapes {tuple(a.m.shape)} and {tuple(b.m.shape)}") from None
    m = torch.maximum(a.m, b.m)
    l = a.l * rescale_factor(a.m, m) + b.l * rescale_factor(b.m, m)
    return SoftmaxState(m=m, l=l)


def three_pass_softmax(x: torch.Tensor) -> torch.Tensor:
    """Safe softmax along the last dim in its three passes: maximum, sum of exp(x - m), divide."""
    x = _row_block("x", x)
    m = x.amax(dim=-1, keepdim=True)  # pass 1
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    l = torch.exp(x - m).sum(dim=-1, keepdim=True)  # pass 2
    e = torch.exp(x - m)  # pass 3
    return e / torch.where(l > 0, l, torch.ones_like(l))


def online_softmax_steps(x: torch.Tensor, block_size: int) -> list[SoftmaxState]:
    """The state after each block of the last dim, in order."""
    x = _row_block("x", x)
    block_size = _checks.positive_int("block_size", block_size)
    state = SoftmaxState.empty(x.shape[:-1], dtype=x.dtype, device=x.device)
    states = []
    for x_block in torch.split(x, block_size, dim=-1):  # the last block may be shorter
        state = state.update(x_block)
        states.append(state)
    return states


def online_softmax(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """softmax along the last dim, computed by streaming over blocks of ``block_size`` entries."""
    final = online_softmax_steps(x, block_size)[-1]
    return final.probabilities(x)
