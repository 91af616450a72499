"""Online softmax: the softmax of a row that arrives in blocks, read once, with two numbers of memory per row.

The safe softmax needs the row maximum ``m`` before it can exponentiate anything, and the sum
``l = sum(exp(x - m))`` before it can normalise anything: three passes over the row. The online version keeps a
running state ``(m, l)`` for the part of the row seen so far. When a new block raises the maximum from ``m_old``
to ``m_new``, every term already in ``l`` was computed against the wrong reference, and all of them are fixed
at once by one multiplication: ``exp(x - m_new) = exp(x - m_old) * exp(m_old - m_new)``.

Two partial states can be merged the same way, and the merge is associative, so a row may be split anywhere
and its pieces combined in any grouping. FlashAttention is this idea applied to the rows of ``q k^T``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks


def _row_block(name: str, x) -> np.ndarray:
    """A block of scores: floating point, at least 1-D, finite except for -inf (masked entries)."""
    return _checks.scores(name, _checks.numpy_array(name, x))


def rescale_factor(m_old, m_new) -> np.ndarray:
    """exp(m_old - m_new): what turns sums taken against the old maximum into sums against the new one.

    Where nothing has been seen yet (``m_new`` is -inf) there is nothing to rescale, and the factor is 1
    rather than exp(-inf + inf) = NaN.
    """
    m_old, m_new = np.asarray(m_old), np.asarray(m_new)
    nothing_seen = np.isneginf(m_new)
    return np.where(nothing_seen, 1.0, np.exp(m_old - np.where(nothing_seen, 0.0, m_new)))


@dataclass(frozen=True, eq=False)  # eq on arrays would be elementwise: compare .m and .l instead
class SoftmaxState:
    """What a row's softmax needs to remember about the entries seen so far.

    ``m``: the running maximum (-inf before anything is seen, or if everything seen was masked).
    ``l``: the running sum of ``exp(x - m)`` over the entries seen.
    Both have the shape of the row's leading dimensions, ``x.shape[:-1]``: one state per row.
    """

    m: np.ndarray
    l: np.ndarray

    @classmethod
    def empty(cls, shape=(), dtype=np.float64) -> SoftmaxState:
        """The state of a row before any entry is seen: m = -inf, l = 0 (the identity of ``merge``)."""
        return cls(m=np.full(shape, -np.inf, dtype=dtype), l=np.zeros(shape, dtype=dtype))

    @classmethod
    def from_block(cls, x_block) -> SoftmaxState:
        """Summarise one block of a row (along the last axis) on its own."""
        x_block = _row_block("x_block", x_block)
        m = np.max(x_block, axis=-1)
        shift = np.where(np.isneginf(m), 0.0, m)  # an all-masked block: any finite shift gives l = 0
        l = np.sum(np.exp(x_block - shift[..., None]), axis=-1)
        return cls(m=m, l=l)

    def update(self, x_block) -> SoftmaxState:
        """The state after also seeing ``x_block``: the old sum is rescaled once if the maximum grew."""
        return merge(self, SoftmaxState.from_block(x_block))

    def logsumexp(self) -> np.ndarray:
        """log(sum(exp(x))) of everything seen: m + log(l) (-inf if nothing unmasked was seen)."""
        with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer for an empty row
            return np.where(self.l > 0, self.m + np.log(self.l), -np.inf)

    def probabilities(self, x_block) -> np.ndarray:
        """softmax of the entries of ``x_block`` once this state has seen the whole row: exp(x - m) / l."""
        x_block = _row_block("x_block", x_block)
        shift = np.where(np.isneginf(self.m), 0.0, self.m)[..., None]
        e = np.exp(x_block - shift)
        total = np.broadcast_to(self.l[..., None], e.shape)
        return np.divide(e, total, out=np.zeros_like(e), where=total > 0)  # a fully masked row gives zeros


def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Combine the states of two disjoint parts of the same rows (associative and commutative).

    Both sums are brought to the common reference max(a.m, b.m) before they are added.
    """
    for name, state in (("a", a), ("b", b)):
        if not isinstance(state, SoftmaxState):
            raise TypeError(f"{name} must be a SoftmaxState, got {type(state).__name__}")
    try:
        np.broadcast_shapes(np.shape(a.m), np.shape(b.m))
    except ValueError:
        raise ValueError(f"cannot merge states of shapes {np.shape(a.m)} and {np.shape(b.m)}") from None
    m = np.maximum(a.m, b.m)
    l = a.l * rescale_factor(a.m, m) + b.l * rescale_factor(b.m, m)
    return SoftmaxState(m=m, l=l)


def three_pass_softmax(x) -> np.ndarray:
    """The safe softmax along the last axis, written as the three passes over the row it really needs.

    Pass 1 finds the maximum m, pass 2 sums exp(x - m), pass 3 divides. Subtracting m keeps every exponent
    <= 0, so nothing overflows. A fully masked (-inf) row gives zeros, as in ``softmax``.
    """
    x = _row_block("x", x)
    m = np.max(x, axis=-1, keepdims=True)  # pass 1
    m = np.where(np.isneginf(m), 0.0, m)
    l = np.sum(np.exp(x - m), axis=-1, keepdims=True)  # pass 2
    e = np.exp(x - m)  # pass 3
    return np.divide(e, l, out=np.zeros_like(e), where=l > 0)


def _blocks(x: np.ndarray, block_size: int):
    """Split the last axis into consecutive blocks of ``block_size`` (the last one may be shorter)."""
    return [x[..., start : start + block_size] for start in range(0, x.shape[-1], block_size)]


def online_softmax_steps(x, block_size: int) -> list[SoftmaxState]:
    """The state after each block of the last axis, in order: what one streaming pass over the row sees."""
    x = _row_block("x", x)
    block_size = _checks.positive_int("block_size", block_size)
    state = SoftmaxState.empty(x.shape[:-1], dtype=x.dtype)
    states = []
    for x_block in _blocks(x, block_size):
        state = state.update(x_block)
        states.append(state)
    return states


def online_softmax(x, block_size: int) -> np.ndarray:
    """softmax along the last axis, computed by streaming over blocks of ``block_size`` entries.

    One pass builds the state (m, l) block by block; the last step normalises with the final state. Equal to
    ``softmax(x, axis=-1)`` up to rounding.
    """
    final = online_softmax_steps(x, block_size)[-1]
    return final.probabilities(x)
