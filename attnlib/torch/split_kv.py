"""Split-KV decoding (Flash-Decoding) on torch tensors: twin of ``attnlib.numpy.split_kv``, same names and meaning.

The keys of a long cache are cut into ``n_splits`` chunks; each chunk's attention is computed on its own as an
online-softmax state (``m``, ``l``, ``acc``: :class:`PartialAttention`), and the states are merged exactly, as the
online softmax merges the blocks of a row. Two backends compute the chunks:

* ``backend="torch"``: one FlashAttention tile per chunk in plain torch ops (any device, differentiable);
* ``backend="triton"``: the decode kernel of ``attnlib.torch.split_kv_triton``, one GPU program per
  (batch · head, chunk), imported only when asked for;
* ``backend="auto"``: triton for CUDA tensors it supports, otherwise torch.

``paged_attention`` reads the chunks straight from a ``PagedKVCache`` through its block tables, with the same two
backends.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .. import _checks, _paged_cache, _settings, occupancy, tiling
from .flash_attention import flash_step
from .online_softmax import SoftmaxState, merge, rescale_factor

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True, eq=False)  # eq on tensors would be elementwise: compare the fields instead
class PartialAttention:
    """Attention of queries over one part of the keys, not yet normalised (twin of the NumPy class).

    ``m`` (..., n_q): the largest visible score of the part; ``l`` (..., n_q): the sum of ``exp(score - m)``;
    ``acc`` (..., n_q, d_v): the sum of ``exp(score - m) · v``. A query that sees none of the part's keys has
    m = -inf, l = 0 and acc = 0 there.
    """

    m: torch.Tensor
    l: torch.Tensor
    acc: torch.Tensor

    @classmethod
    def empty(cls, shape, d_v: int, dtype=torch.float64, device=None) -> PartialAttention:
        """Queries that have seen no key yet, ``shape`` = (..., n_q): the identity of ``merge_partials``."""
        shape = tuple(shape)
        d_v = _checks.positive_int("d_v", d_v)
        state = SoftmaxState.empty(shape, dtype=dtype, device=device)
        return cls(m=state.m, l=state.l, acc=torch.zeros(shape + (d_v,), dtype=dtype, device=device))

    @property
    def softmax_state(self) -> SoftmaxState:
        """(m, l): the online-softmax state of the part, without the values."""
        return SoftmaxState(m=self.m, l=self.l)

    def output(self) -> torch.Tensor:
        """acc / l: attention over the keys seen so far (zeros for a query that saw none)."""
        total = self.l[..., None]
        return self.acc / torch.where(total > 0, total, torch.ones_like(total))

    def lse(self) -> torch.Tensor:
        """m + log l: the log-sum-exp of each query's visible scores seen so far (-inf if none)."""
        return self.softmax_state.logsumexp()


def merge_partials(a: PartialAttention, b: PartialAttention) -> PartialAttention:
    """Combine the attention of the same queries over two disjoint parts of the keys (associative, commutative).

    Both parts are brought to the common maximum max(a.m, b.m) by exp(m_part - m) and added.
    """
    for name, part in (("a", a), ("b", b)):
        if not isinstance(part, PartialAttention):
            raise TypeError(f"{name} must be a PartialAttention, got {type(part).__name__}")
    if a.acc.shape[-1] != b.acc.shape[-1]:
        raise ValueError(f"cannot merge parts with value widths {a.acc.shape[-1]} and {b.acc.shape[-1]} "
                         f"(acc shapes {tuple(a.acc.shape)} and {tuple(b.acc.shape)})")
    state = merge(a.softmax_state, b.softmax_state)  # m = max(a.m, b.m), l = both sums rescaled to m, added
    acc = (rescale_factor(a.m, state.m)[..., None] * a.acc
           + rescale_factor(b.m, state.m)[..., None] * b.acc)  # (..., n_q, d_v)
    return PartialAttention(m=state.m, l=state.l, acc=acc)


def _merge_stacked(m, l, acc) -> PartialAttention:
    """Merge the parts stacked along dim -2 of m, l (..., n_splits, n_q) and dim -3 of acc, in one go.

    The same arithmetic as folding ``merge_partials`` over the parts: every part is brought to the overall
    maximum and the parts are summed. Used where the parts arrive as one tensor (the Triton kernel's output).
    """
    m_total = m.amax(dim=-2)  # (..., n_q)
    rescale = rescale_factor(m, m_total[..., None, :])  # (..., n_splits, n_q): exp(m_part - m_total)
    l_total = (rescale * l).sum(dim=-2)
    acc_total = (rescale[..., None] * acc).sum(dim=-3)  # (..., n_q, d_v)
    return PartialAttention(m=m_total, l=l_total, acc=acc_total)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 inputs are computed in float32: m, l and acc need the range and precision."""
    return torch.promote_types(dtype, torch.float32)


def _validate(q, k, v, n_splits, causal, scale):
    q, k, v = (_checks.torch_tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = _checks.causal_fits(causal, n_q, n_k, f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    bounds = occupancy.split_bounds(n_k, n_splits)  # refuses n_splits < 1 or > n_k, by name
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return q, k, v, bounds, causal, float(scale)


def _partials(q, k, v, bounds, causal: bool, scale: float) -> list[PartialAttention]:
    """One PartialAttention per chunk of keys, on checked arguments, in plain torch ops."""
    dtype = _compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    n_q, n_k = q.shape[-2], k.shape[-2]
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    q_scaled = q * scale  # (..., n_q, d_k): scaled once, shared by every chunk
    start_state = PartialAttention.empty(batch + (n_q,), v.shape[-1], dtype, q.device)
    partials = []
    for start, end in bounds:
        visible = None
        if causal and n_q > 1:  # bottom-right aligned: query i sees keys j <= i + (n_k - n_q)
            visible = torch.from_numpy(tiling.causal_visible(0, n_q, start, end, n_k - n_q)).to(q.device)
        # A chunk is one FlashAttention tile from the empty state: all its keys at once, all queries at once.
        m, l, acc, _ = flash_step(q_scaled, k[..., start:end, :], v[..., start:end, :],
                                  start_state.m, start_state.l, start_state.acc, visible)
        partials.append(PartialAttention(m=m, l=l, acc=acc))
    return partials


def split_kv_partials(q, k, v, *, n_splits: int, causal: bool = False, scale: float | None = None):
    """The attention of q over each of ``n_splits`` chunks of the keys, on its own: a list of PartialAttention.

    Chunk s holds keys ``attnlib.occupancy.split_bounds(n_k, n_splits)[s]``. Twin of the NumPy function; plain
    torch ops (the Triton kernel computes the same parts, see ``attnlib.torch.split_kv_triton.partials``).
    """
    q, k, v, bounds, causal, scale = _validate(q, k, v, n_splits, causal, scale)
    return _partials(q, k, v, bounds, causal, scale)


def _triton_module():
    from . import split_kv_triton  # lazy: the kernel module is only loaded when a triton backend is asked for

    return split_kv_triton


def _resolve_backend(backend, q, k, v) -> str:
    """The backend to run; an explicit "triton" is refused by name where it cannot compute the right answer."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda and _triton_module().can_run(q, k, v) else "torch"
    if backend == "triton":
        _triton_module().check_supported(q, k, v)
    return backend


def split_kv_attention(q, k, v, *, n_splits: int, causal: bool = False, scale: float | None = None,
                       return_lse: bool = False, backend: str = "auto"):
    """softmax(q k^T * scale) v with the keys cut into ``n_splits`` chunks, each attended on its own, then merged.

    Same contract as ``attnlib.numpy.split_kv_attention``: q (..., n_q, d_k), k (..., n_k, d_k),
    v (..., n_k, d_v) -> output (..., n_q, d_v), equal to ``attention(q, k, v)[0]`` up to rounding for every
    ``n_splits`` from 1 to n_k; ``causal`` aligned bottom-right; ``return_lse`` also returns the log-sum-exp
    (..., n_q). ``backend``: "torch" (plain torch ops, any device, differentiable), "triton" (the decode kernel:
    CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``; inference only) or "auto" (triton for CUDA
    tensors it supports, else torch). Scores that overflow raise ``OverflowError``, as in ``attention``.
    """
    q, k, v, bounds, causal, scale = _validate(q, k, v, n_splits, causal, scale)
    return_lse = _checks.flag("return_lse", return_lse)
    backend = _resolve_backend(backend, q, k, v)
    if backend == "triton":
        m, l, acc = _triton_module().partials(q, k, v, len(bounds), causal, scale)  # (..., n_splits, n_q[, d_v])
        total = _merge_stacked(m, l, acc)
    else:
        total = functools.reduce(merge_partials, _partials(q, k, v, bounds, causal, scale))
    if _settings.finite_checks():
        _check_total(total)
    output = total.output().to(q.dtype)
    return (output, total.lse()) if return_lse else output


def _check_total(total: PartialAttention) -> None:
    """The overflow policy of ``attention``: +inf or NaN scores, or a query whose every visible score is -inf."""
    m, l, acc = total.m.detach(), total.l.detach(), total.acc.detach()
    if not bool(torch.isfinite(acc).all() & torch.isfinite(l).all()) or bool(torch.isposinf(m).any()):
        raise _checks.scores_overflowed(acc.dtype)
    if bool((l == 0).any()):  # every query sees key 0, so l = 0 means all its scores fell to -inf
        raise _checks.scores_underflowed(acc.dtype, int((l == 0).sum()))


# --------------------------------------------------------------------------------------------------------------
# Split-KV decoding straight from a paged cache
# --------------------------------------------------------------------------------------------------------------


def _block_chunks(n_blocks: int, n_splits: int) -> list[tuple[int, int]]:
    """The cut of ``occupancy.split_bounds``, over a sequence's blocks; a short sequence may leave chunks empty."""
    return [(split * n_blocks // n_splits, (split + 1) * n_blocks // n_splits) for split in range(n_splits)]


def _paged_chunk(q_scaled, cache, layer: int, blocks, first_block: int, length: int) -> PartialAttention:
    """One chunk of one sequence: its blocks read from the layer's pools through the block table, one tile."""
    n_q, dtype = q_scaled.shape[-2], q_scaled.dtype
    start = PartialAttention.empty(q_scaled.shape[:-1], cache.d_head, dtype, q_scaled.device)
    if not blocks:  # a sequence with fewer blocks than splits: this chunk is empty, the merge's identity
        return start
    first_position = first_block * cache.block_size
    count = min(len(blocks) * cache.block_size, length - first_position)  # the last block may be partly empty
    index = cache._index(list(blocks))  # this chunk's blocks
    k = cache._read_blocks(cache.key_pool, layer, index, count).to(dtype)  # (H, count, d)
    v = cache._read_blocks(cache.value_pool, layer, index, count).to(dtype)
    visible = None
    if n_q > 1:  # the queries are the sequence's last n_q positions: bottom-right aligned, as everywhere
        visible = torch.from_numpy(
            tiling.causal_visible(0, n_q, first_position, first_position + count, length - n_q)
        ).to(q_scaled.device)
    m, l, acc, _ = flash_step(q_scaled, k, v, start.m, start.l, start.acc, visible)
    return PartialAttention(m=m, l=l, acc=acc)


def paged_attention(q, cache, seqs, *, layer: int = 0, n_splits: int = 1, scale: float | None = None,
                    return_lse: bool = False, backend: str = "auto"):
    """Decoding attention read straight from a ``PagedKVCache`` (twin of ``attnlib.numpy.paged_attention``).

    q (len(seqs), n_kv_heads, n_q, d_head) are the last n_q positions of each sequence in ``cache``; each
    sequence's blocks are cut into ``n_splits`` chunks of whole blocks, attended through the block table and merged.
    ``backend``: "torch" (plain torch ops), "triton" (the paged decode kernel of ``attnlib.torch.split_kv_triton``:
    one program per (sequence · head, chunk), reading blocks where they lie in the pool; CUDA, or CPU under
    ``TRITON_INTERPRET=1``; the cache's block_size must be a power of two >= 16) or "auto".
    """
    from .paged_cache import PagedKVCache  # the cache module is only needed by this function

    q, seqs, layer, n_splits, scale = _paged_cache.attention_call(q, cache, seqs, layer, n_splits, scale,
                                                                  as_array=_checks.torch_tensor,
                                                                  cache_class=PagedKVCache)
    return_lse = _checks.flag("return_lse", return_lse)
    backend = _resolve_paged_backend(backend, q, cache)
    if backend == "triton":
        m, l, acc = _triton_module().paged_partials(q, cache, seqs, layer, n_splits, scale)  # (S, H, splits, ...)
        total = _merge_stacked(m, l, acc)
        if _settings.finite_checks():
            _check_total(total)
        output, lse = total.output(), total.lse()
    else:
        q_scaled = q.to(_compute_dtype(q.dtype)) * scale  # (S, H, n_q, d)
        outputs, lses = [], []
        for index, seq in enumerate(seqs):
            table, length = cache.block_table(seq), cache.length(seq)
            parts = [_paged_chunk(q_scaled[index], cache, layer, table[first:end], first, length)
                     for first, end in _block_chunks(len(table), n_splits)]
            total = functools.reduce(merge_partials, parts)
            if _settings.finite_checks():
                _check_total(total)
            outputs.append(total.output())
            lses.append(total.lse())
        output, lse = torch.stack(outputs), torch.stack(lses)  # (S, H, n_q, d), (S, H, n_q)
    output = output.to(q.dtype)
    return (output, lse) if return_lse else output


def _resolve_paged_backend(backend, q, cache) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda and _triton_module().can_run_paged(q, cache) else "torch"
    if backend == "triton":
        _triton_module().check_supported_paged(q, cache)
    return backend
