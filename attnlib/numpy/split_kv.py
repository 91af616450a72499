"""Split-KV decoding (Flash-Decoding): a few queries against a long KV cache, the keys cut into chunks.

While a model generates, each step has one new query per sequence (``n_q = 1``, or a few) and a cache of ``n_k``
keys that grows with every token. FlashAttention parallelises over blocks of queries, and one query is one block:
a GPU launch gets ``batch · n_heads`` programs and most multiprocessors sit idle (``attnlib.occupancy``).
Split-KV decoding cuts the other axis. The keys are divided into ``n_splits`` chunks, and each chunk's attention
is computed on its own, as if the other keys did not exist. What a chunk produces is the online-softmax state of
its part of each score row (:class:`PartialAttention`):

* ``m``   -- the largest visible score of the chunk, per query;
* ``l``   -- the sum of ``exp(score - m)`` over the chunk;
* ``acc`` -- the sum of ``exp(score - m) · v`` over the chunk: the chunk's output before dividing by ``l``.

Two such states are merged exactly as the online softmax merges two blocks of a row
(``attnlib.numpy.online_softmax.merge``): both are brought to the larger maximum by one factor ``exp(m_old - m)``
and added (:func:`merge_partials`). The merge is associative and commutative, so the chunks may finish in any
order and be combined in any grouping; the result is attention over all the keys, ``acc / l``, with the row's
log-sum-exp ``lse = m + log l``.

:func:`paged_attention` does the same for many sequences held in a ``PagedKVCache``: the chunks are runs of whole
blocks, read where the block tables say they lie, with no contiguous copy of any sequence.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .. import _checks, _paged_cache, _settings, occupancy, tiling
from .flash_attention import flash_step
from .online_softmax import SoftmaxState, merge, rescale_factor


@dataclass(frozen=True, eq=False)  # eq on arrays would be elementwise: compare the fields instead
class PartialAttention:
    """Attention of queries over one part of the keys, not yet normalised: what one split-KV program returns.

    ``m`` (..., n_q): the largest visible score of the part; ``l`` (..., n_q): the sum of ``exp(score - m)``;
    ``acc`` (..., n_q, d_v): the sum of ``exp(score - m) · v``. A query that sees none of the part's keys (causal
    masking) has m = -inf, l = 0 and acc = 0 there, and the part adds nothing to it when merged.
    """

    m: np.ndarray
    l: np.ndarray
    acc: np.ndarray

    @classmethod
    def empty(cls, shape, d_v: int, dtype=np.float64) -> PartialAttention:
        """Queries that have seen no key yet, ``shape`` = (..., n_q): the identity of ``merge_partials``."""
        shape = tuple(shape)
        d_v = _checks.positive_int("d_v", d_v)
        state = SoftmaxState.empty(shape, dtype=dtype)
        return cls(m=state.m, l=state.l, acc=np.zeros(shape + (d_v,), dtype=dtype))

    @property
    def softmax_state(self) -> SoftmaxState:
        """(m, l): the online-softmax state of the part, without the values."""
        return SoftmaxState(m=self.m, l=self.l)

    def output(self) -> np.ndarray:
        """acc / l: attention over the keys seen so far (zeros for a query that saw none)."""
        total = self.l[..., None]
        return np.divide(self.acc, total, out=np.zeros_like(self.acc), where=total > 0)

    def lse(self) -> np.ndarray:
        """m + log l: the log-sum-exp of each query's visible scores seen so far (-inf if none)."""
        return self.softmax_state.logsumexp()


def merge_partials(a: PartialAttention, b: PartialAttention) -> PartialAttention:
    """Combine the attention of the same queries over two disjoint parts of the keys (associative, commutative).

    The maximum of the union is max(a.m, b.m); each part's ``l`` and ``acc`` were summed against its own maximum
    and are brought to the common one by the same factor exp(m_part - m) (``rescale_factor``), then added.
    """
    for name, part in (("a", a), ("b", b)):
        if not isinstance(part, PartialAttention):
            raise TypeError(f"{name} must be a PartialAttention, got {type(part).__name__}")
    if a.acc.shape[-1] != b.acc.shape[-1]:
        raise ValueError(f"cannot merge parts with value widths {a.acc.shape[-1]} and {b.acc.shape[-1]} "
                         f"(acc shapes {a.acc.shape} and {b.acc.shape})")
    state = merge(a.softmax_state, b.softmax_state)  # m = max(a.m, b.m), l = both sums rescaled to m, added
    with np.errstate(invalid="ignore"):  # inf * 0 after an overflow: reported by split_kv_attention
        acc = (rescale_factor(a.m, state.m)[..., None] * a.acc
               + rescale_factor(b.m, state.m)[..., None] * b.acc)  # (..., n_q, d_v)
    return PartialAttention(m=state.m, l=state.l, acc=acc)


def _compute_dtype(dtype) -> np.dtype:
    """float16 inputs are computed in float32, as in flash_attention: m, l and acc need the range and precision."""
    return np.promote_types(dtype, np.float32)


def _validate(q, k, v, n_splits, causal, scale):
    q, k, v = (_checks.numpy_array(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = _checks.causal_fits(causal, n_q, n_k, f"q {q.shape} and k {k.shape}")
    bounds = occupancy.split_bounds(n_k, n_splits)  # refuses n_splits < 1 or > n_k, by name
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    return q, k, v, bounds, causal, float(scale)


def _partials(q, k, v, bounds, causal: bool, scale: float) -> list[PartialAttention]:
    """One PartialAttention per chunk of keys, on checked arguments; each chunk on its own, in any order."""
    dtype = _compute_dtype(q.dtype)
    q, k, v = (x.astype(dtype, copy=False) for x in (q, k, v))
    n_q, n_k = q.shape[-2], k.shape[-2]
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q_scaled = q * dtype.type(scale)  # (..., n_q, d_k): scaled once, shared by every chunk
    start_state = PartialAttention.empty(batch + (n_q,), v.shape[-1], dtype)
    partials = []
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported once, after the merge
        for start, end in bounds:
            visible = None
            if causal and n_q > 1:  # bottom-right aligned: query i sees keys j <= i + (n_k - n_q)
                visible = tiling.causal_visible(0, n_q, start, end, n_k - n_q)  # (n_q, chunk)
            # A chunk is one FlashAttention tile from the empty state: all its keys at once, all queries at once.
            m, l, acc, _ = flash_step(q_scaled, k[..., start:end, :], v[..., start:end, :],
                                      start_state.m, start_state.l, start_state.acc, visible)
            partials.append(PartialAttention(m=m, l=l, acc=acc))
    return partials


def split_kv_partials(q, k, v, *, n_splits: int, causal: bool = False, scale: float | None = None):
    """The attention of q over each of ``n_splits`` chunks of the keys, on its own: a list of PartialAttention.

    Chunk s holds keys ``attnlib.occupancy.split_bounds(n_k, n_splits)[s]``. This is what the programs of a
    split-KV launch compute in parallel before one merge combines them (``merge_partials``). Arguments as for
    :func:`split_kv_attention`; the arrays are in the compute dtype (float32 for float16 inputs).
    """
    q, k, v, bounds, causal, scale = _validate(q, k, v, n_splits, causal, scale)
    return _partials(q, k, v, bounds, causal, scale)


def split_kv_attention(q, k, v, *, n_splits: int, causal: bool = False, scale: float | None = None,
                       return_lse: bool = False):
    """softmax(q k^T * scale) v with the keys cut into ``n_splits`` chunks, each attended on its own, then merged.

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v); batch dims broadcast.
    Meant for decoding -- one query (or a few) against a long cache -- and equal to ``attention(q, k, v)[0]`` up
    to rounding for every ``n_splits`` from 1 to n_k; n_splits need not divide n_k (chunk lengths then differ by
    one). ``causal`` hides the future, aligned bottom-right as in ``attention`` (query i is position
    i + n_k - n_q); a chunk a query cannot see adds nothing to it. With ``return_lse`` also returns each query's
    log-sum-exp of its visible scores (..., n_q). float16 is computed in float32. Scores that overflow raise
    ``OverflowError``, as in ``attention``.
    """
    q, k, v, bounds, causal, scale = _validate(q, k, v, n_splits, causal, scale)
    return_lse = _checks.flag("return_lse", return_lse)
    total = functools.reduce(merge_partials, _partials(q, k, v, bounds, causal, scale))
    if _settings.finite_checks():
        _check_total(total)
    output = total.output().astype(q.dtype, copy=False)
    return (output, total.lse()) if return_lse else output


def _check_total(total: PartialAttention) -> None:
    """The overflow policy of ``attention``: +inf or NaN scores, or a query whose every visible score is -inf.

    Every query sees at least key 0 (causal attention is aligned bottom-right), so after the merge l = 0 can only
    mean that all its scores overflowed to -inf.
    """
    if not (np.isfinite(total.acc).all() and np.isfinite(total.l).all()) or np.isposinf(total.m).any():
        raise _checks.scores_overflowed(total.acc.dtype)
    if (total.l == 0).any():
        raise _checks.scores_underflowed(total.acc.dtype, int((total.l == 0).sum()))


# --------------------------------------------------------------------------------------------------------------
# Split-KV decoding straight from a paged cache
# --------------------------------------------------------------------------------------------------------------


def _block_chunks(n_blocks: int, n_splits: int) -> list[tuple[int, int]]:
    """The cut of ``occupancy.split_bounds``, over a sequence's blocks; a short sequence may leave chunks empty."""
    return [(split * n_blocks // n_splits, (split + 1) * n_blocks // n_splits) for split in range(n_splits)]


def _paged_chunk(q_scaled, cache, layer: int, blocks, first_block: int, length: int) -> PartialAttention:
    """One chunk of one sequence: its blocks read from the layer's pools through the block table, one tile."""
    n_q, dtype = q_scaled.shape[-2], q_scaled.dtype
    start = PartialAttention.empty(q_scaled.shape[:-1], cache.d_head, dtype)
    if not blocks:  # a sequence with fewer blocks than splits: this chunk is empty, the merge's identity
        return start
    first_position = first_block * cache.block_size
    count = min(len(blocks) * cache.block_size, length - first_position)  # the last block may be partly empty
    index = cache._index(list(blocks))  # this chunk's blocks
    k = cache._read_blocks(cache.key_pool, layer, index, count).astype(dtype, copy=False)  # (H, count, d)
    v = cache._read_blocks(cache.value_pool, layer, index, count).astype(dtype, copy=False)
    visible = None
    if n_q > 1:  # the queries are the sequence's last n_q positions: bottom-right aligned, as everywhere
        visible = tiling.causal_visible(0, n_q, first_position, first_position + count, length - n_q)
    m, l, acc, _ = flash_step(q_scaled, k, v, start.m, start.l, start.acc, visible)
    return PartialAttention(m=m, l=l, acc=acc)


def paged_attention(q, cache, seqs, *, layer: int = 0, n_splits: int = 1, scale: float | None = None,
                    return_lse: bool = False):
    """Decoding attention read straight from a ``PagedKVCache``: each sequence's queries against its own keys.

    q (len(seqs), n_kv_heads, n_q, d_head): the queries of sequences ``seqs``, which are the last n_q positions
    each of them has in ``cache`` (their keys and values already appended); ``layer`` picks the layer's pools.
    -> output (len(seqs), n_kv_heads, n_q, d_head), and with ``return_lse`` the log-sum-exp (len(seqs), H, n_q).

    Nothing is gathered into one array first: each sequence's blocks are cut into ``n_splits`` chunks of whole
    blocks (chunk s: blocks ``s·nb // n_splits`` to ``(s+1)·nb // n_splits`` of its nb blocks, empty when nb is
    smaller than n_splits), each chunk is read through the block table and attended on its own, and the chunk
    states are merged as in :func:`split_kv_attention`. Equal to ``attention`` over ``cache.gather(seq)`` up to
    rounding; causal within the sequence (a query sees the positions up to its own).
    """
    q, seqs, layer, n_splits, scale = _paged_cache.attention_call(q, cache, seqs, layer, n_splits, scale,
                                                                  as_array=_checks.numpy_array,
                                                                  cache_class=_cache_class())
    return_lse = _checks.flag("return_lse", return_lse)
    q_scaled = q.astype(_compute_dtype(q.dtype), copy=False) * scale  # (S, H, n_q, d)
    outputs, lses = [], []
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported once, after the merge
        for index, seq in enumerate(seqs):
            table, length = cache.block_table(seq), cache.length(seq)
            parts = [_paged_chunk(q_scaled[index], cache, layer, table[first:end], first, length)
                     for first, end in _block_chunks(len(table), n_splits)]
            total = functools.reduce(merge_partials, parts)
            if _settings.finite_checks():
                _check_total(total)
            outputs.append(total.output())
            lses.append(total.lse())
    output = np.stack(outputs).astype(q.dtype, copy=False)  # (S, H, n_q, d)
    return (output, np.stack(lses)) if return_lse else output


def _cache_class():
    from .paged_cache import PagedKVCache  # the cache module is only needed by this function

    return PagedKVCache
