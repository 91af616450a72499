"""FlashAttention in NumPy: exact attention computed tile by tile, never holding an n_q x n_k array.

Forward (the FlashAttention-2 loop order): the outer loop walks blocks of ``block_q`` query rows; for each, the
inner loop walks blocks of ``block_k`` keys and values. Each query row keeps the online-softmax state -- the
running maximum ``m`` and running sum ``l`` -- and an unnormalised output ``acc``. When a key block raises a
row's maximum, ``l`` and ``acc`` are both rescaled by ``exp(m_old - m_new)``; the division by ``l`` happens once,
after the last key block. The per-row log-sum-exp ``lse = m + log(l)`` is all the backward pass needs to
rebuild any tile of probabilities, so the n_q x n_k matrix is never stored.

Memory: the largest temporary is one tile of scores, ``block_q x block_k`` per batch entry, so big blocks are
both allowed and fast -- each tile is a pair of BLAS matrix products -- while the memory stays O(n), not O(n^2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import _checks

# Defaults chosen by timing on a laptop-class CPU (float32, d = 64): a 128 x 1024 tile is 512 KiB in float32,
# small enough to stay in a core's L2 cache, and big enough that each tile is two efficient BLAS calls and the
# Python loop overhead is negligible. See benchmarks/bench_flash_cpu.py.
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 1024


@dataclass(eq=False)
class FlashStep:
    """One (query block i, key block j) step of the forward pass, as recorded by a ``FlashTrace``.

    Vectors have one entry per query row of the block; leading batch dimensions are kept.
    ``scores``: the scaled tile q_i k_j^T (..., rows, cols), masked entries -inf.
    ``m_old``/``m_new``, ``l_old``/``l_new``: the online-softmax state before and after this tile.
    ``rescale``: exp(m_old - m_new), the factor applied to ``l_old`` and to the previous ``acc``.
    ``acc``: the unnormalised output after this tile (..., rows, d_v); the final output is acc / l.
    """

    i: int
    j: int
    q_range: tuple[int, int]
    k_range: tuple[int, int]
    scores: np.ndarray
    m_old: np.ndarray
    m_new: np.ndarray
    l_old: np.ndarray
    l_new: np.ndarray
    rescale: np.ndarray
    acc: np.ndarray


@dataclass(eq=False)
class FlashTrace:
    """Pass ``trace=FlashTrace()`` to ``flash_attention`` to record every step (for teaching, small inputs).

    After the call: ``steps`` in execution order; ``skipped`` lists the (i, j) tiles that causal masking
    skipped entirely; ``output`` and ``lse`` are the results; the remaining fields describe the tiling.
    """

    steps: list[FlashStep] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)
    n_q: int = 0
    n_k: int = 0
    block_q: int = 0
    block_k: int = 0
    causal: bool = False
    scale: float = 0.0
    output: np.ndarray | None = None
    lse: np.ndarray | None = None

    def steps_for_query_block(self, i: int) -> list[FlashStep]:
        return [step for step in self.steps if step.i == i]

    def to_dict(self) -> dict:
        """Plain lists and numbers (JSON-ready), e.g. for a widget drawing the tiles."""

        def plain(x):
            if isinstance(x, np.ndarray):
                return np.where(np.isneginf(x), None, x).tolist() if x.dtype.kind == "f" else x.tolist()
            return x

        return {
            "n_q": self.n_q,
            "n_k": self.n_k,
            "block_q": self.block_q,
            "block_k": self.block_k,
            "causal": self.causal,
            "scale": self.scale,
            "skipped": [list(tile) for tile in self.skipped],
            "steps": [{name: plain(value) for name, value in vars(step).items()} for step in self.steps],
            "output": plain(self.output),
            "lse": plain(self.lse),
        }


def _tile_causal_mask(q_start, q_end, k_start, k_end, offset) -> np.ndarray:
    """(rows, cols) boolean, True where query q_start + r may attend key k_start + c (bottom-right aligned)."""
    query_positions = np.arange(q_start, q_end)[:, None] + offset  # absolute position of each query row
    return np.arange(k_start, k_end)[None, :] <= query_positions


def _compute_dtype(dtype) -> np.dtype:
    """float16 inputs are computed in float32: m, l and acc need the range and the precision."""
    return np.promote_types(dtype, np.float32)


def _key_stop(q_end: int, n_k: int, offset: int, causal: bool) -> int:
    """One past the last key any query row in [.., q_end) may see: key blocks from there on are all masked."""
    return min(n_k, q_end + offset) if causal else n_k


def _validate(q, k, v, causal, scale, block_q, block_k):
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    block_q = _checks.positive_int("block_q", block_q)
    block_k = _checks.positive_int("block_k", block_k)
    if causal and k.shape[-2] < q.shape[-2]:
        raise ValueError(f"causal attention needs n_k >= n_q, got q {q.shape} and k {k.shape}")
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    return q, k, v, float(scale), block_q, block_k


def flash_attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
    trace: FlashTrace | None = None,
    return_lse: bool = False,
):
    """softmax(q k^T * scale) v, tile by tile, equal to ``attention(q, k, v, ...)[0]`` up to rounding.

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v); batch dims broadcast.
    ``causal`` masks like ``attention`` (bottom-right aligned when n_q != n_k) and skips key blocks that are
    masked for every row of a query block. Blocks need not divide n_q or n_k (the last tiles are smaller).
    With ``return_lse`` also returns the row log-sum-exp (..., n_q), which ``flash_attention_backward`` needs.
    ``trace``: a ``FlashTrace`` to fill with every step (copies of each tile: use small inputs).
    """
    q, k, v, scale, block_q, block_k = _validate(q, k, v, causal, scale, block_q, block_k)
    input_dtype = q.dtype
    if trace is not None and not isinstance(trace, FlashTrace):
        raise TypeError(f"trace must be a FlashTrace or None, got {type(trace).__name__}")
    n_q, n_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    offset = n_k - n_q  # query row r sits at absolute position r + offset (bottom-right causal alignment)
    batch_shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    dtype = _compute_dtype(q.dtype)
    q, k, v = q.astype(dtype, copy=False), k.astype(dtype, copy=False), v.astype(dtype, copy=False)
    output = np.empty(batch_shape + (n_q, d_v), dtype=dtype)
    lse = np.empty(batch_shape + (n_q,), dtype=dtype)
    if trace is not None:
        trace.n_q, trace.n_k, trace.block_q, trace.block_k = n_q, n_k, block_q, block_k
        trace.causal, trace.scale = bool(causal), scale

    for i, q_start in enumerate(range(0, n_q, block_q)):
        q_end = min(q_start + block_q, n_q)
        rows = q_end - q_start
        q_block = q[..., q_start:q_end, :] * scale  # (..., rows, d_k); scaling q once is cheaper than each tile
        m = np.full(batch_shape + (rows,), -np.inf, dtype=dtype)
        l = np.zeros(batch_shape + (rows,), dtype=dtype)
        acc = np.zeros(batch_shape + (rows, d_v), dtype=dtype)
        key_stop = _key_stop(q_end, n_k, offset, causal)

        for j, k_start in enumerate(range(0, key_stop, block_k)):
            k_end = min(k_start + block_k, n_k)
            scores = q_block @ np.swapaxes(k[..., k_start:k_end, :], -1, -2)  # (..., rows, cols)
            if causal and k_end - 1 > q_start + offset:  # the tile crosses the diagonal: mask part of it
                allowed = _tile_causal_mask(q_start, q_end, k_start, k_end, offset)
                np.copyto(scores, -np.inf, where=~allowed)
            # Key 0 is visible to every row (offset >= 0) and key blocks come in order, so after the first tile
            # m_new is finite for every row and m_old - m_new is never -inf - (-inf).
            m_new = np.maximum(m, scores.max(axis=-1))
            rescale = np.exp(m - m_new)  # (..., rows); 0 on the first tile, where m = -inf and l, acc are 0
            if trace is not None:
                tile_scores = scores.copy()
            scores -= m_new[..., None]
            p = np.exp(scores, out=scores)  # (..., rows, cols): unnormalised probabilities, reusing the buffer
            l_new = rescale * l + p.sum(axis=-1)
            acc *= rescale[..., None]
            acc += p @ v[..., k_start:k_end, :]
            if trace is not None:
                trace.steps.append(
                    FlashStep(
                        i=i, j=j, q_range=(q_start, q_end), k_range=(k_start, k_end), scores=tile_scores,
                        m_old=m.copy(), m_new=m_new.copy(), l_old=l.copy(), l_new=l_new.copy(),
                        rescale=rescale.copy(), acc=acc.copy(),
                    )
                )
            m, l = m_new, l_new

        if trace is not None:
            n_blocks_k = -(-n_k // block_k)
            trace.skipped.extend((i, j) for j in range(-(-key_stop // block_k), n_blocks_k))
        output[..., q_start:q_end, :] = acc / l[..., None]  # the one division by l
        lse[..., q_start:q_end] = m + np.log(l)

    output = output.astype(input_dtype, copy=False)
    if trace is not None:
        trace.output, trace.lse = output.copy(), lse.copy()
    return (output, lse) if return_lse else output


def _sum_to_shape(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Undo broadcasting for a gradient: sum over the dims that broadcasting added or stretched."""
    x = x.sum(axis=tuple(range(x.ndim - len(shape))))
    stretched = tuple(axis for axis, size in enumerate(shape) if size == 1 and x.shape[axis] != 1)
    return x.sum(axis=stretched, keepdims=True) if stretched else x


def flash_attention_backward(
    q,
    k,
    v,
    output,
    lse,
    grad_output,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
):
    """Gradients (dq, dk, dv) of ``flash_attention`` given the upstream gradient ``grad_output``.

    Tile by tile again: each tile's probabilities are rebuilt as exp(q_i k_j^T * scale - lse) from the saved
    row log-sum-exp, so no n_q x n_k array is stored. Loop order as in FlashAttention-2's backward pass: the
    outer loop holds one key block and accumulates its dk and dv; the inner loop visits the query blocks and
    adds each one's share of dq. With P the probabilities and dP = dO v^T, the softmax gradient is
    dS = P * (dP - D), where D = rowsum(dO * O) is computed once up front.
    """
    q, k, v, scale, block_q, block_k = _validate(q, k, v, causal, scale, block_q, block_k)
    output, lse, grad_output = np.asarray(output), np.asarray(lse), np.asarray(grad_output)
    n_q, n_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    batch_shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    _checks.floating_array("output", output, min_ndim=2)
    _checks.floating_array("grad_output", grad_output, min_ndim=2)
    _checks.floating_array("lse", lse, min_ndim=1)
    output_shape = batch_shape + (n_q, d_v)
    for name, x, expected in (
        ("output", output, output_shape), ("grad_output", grad_output, output_shape), ("lse", lse, output_shape[:-1])
    ):
        if tuple(x.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for q {q.shape}, k {k.shape}, v {v.shape}; got {tuple(x.shape)}"
            )

    dtype = _compute_dtype(q.dtype)
    input_dtype = q.dtype
    offset = n_k - n_q
    # Broadcast views (no copies) so every gradient has the full batch shape; summed back at the end.
    q_shape, k_shape, v_shape = q.shape, k.shape, v.shape
    q, k, v, output, lse, grad_output = (x.astype(dtype, copy=False) for x in (q, k, v, output, lse, grad_output))
    q = np.broadcast_to(q, batch_shape + q.shape[-2:])
    k = np.broadcast_to(k, batch_shape + k.shape[-2:])
    v = np.broadcast_to(v, batch_shape + v.shape[-2:])
    delta = np.sum(grad_output * output, axis=-1)  # (..., n_q): D_i = sum_j P_ij dP_ij = dO_i . O_i
    dq = np.zeros(q.shape, dtype=dtype)
    dk = np.zeros(k.shape, dtype=dtype)
    dv = np.zeros(v.shape, dtype=dtype)

    for k_start in range(0, n_k, block_k):
        k_end = min(k_start + block_k, n_k)
        k_block, v_block = k[..., k_start:k_end, :], v[..., k_start:k_end, :]  # (..., cols, d)
        dk_block = np.zeros(k_block.shape, dtype=dtype)
        dv_block = np.zeros(v_block.shape, dtype=dtype)
        # Causal: rows before k_start - offset cannot see any key of this block, so their blocks are skipped.
        first_row = max(0, k_start - offset) if causal else 0
        for q_start in range((first_row // block_q) * block_q, n_q, block_q):
            q_end = min(q_start + block_q, n_q)
            q_block = q[..., q_start:q_end, :] * scale  # (..., rows, d_k)
            do_block = grad_output[..., q_start:q_end, :]  # (..., rows, d_v)
            scores = q_block @ np.swapaxes(k_block, -1, -2)  # (..., rows, cols)
            if causal and k_end - 1 > q_start + offset:
                np.copyto(scores, -np.inf, where=~_tile_causal_mask(q_start, q_end, k_start, k_end, offset))
            scores -= lse[..., q_start:q_end, None]
            p = np.exp(scores, out=scores)  # (..., rows, cols): this tile's probabilities, recomputed
            dv_block += np.swapaxes(p, -1, -2) @ do_block
            dp = do_block @ np.swapaxes(v_block, -1, -2)  # (..., rows, cols)
            dp -= delta[..., q_start:q_end, None]
            ds = np.multiply(p, dp, out=dp)  # gradient w.r.t. the scaled scores
            dq[..., q_start:q_end, :] += scale * (ds @ k_block)
            dk_block += np.swapaxes(ds, -1, -2) @ q_block  # q_block already carries the scale
        dk[..., k_start:k_end, :] = dk_block
        dv[..., k_start:k_end, :] = dv_block

    grads = _sum_to_shape(dq, q_shape), _sum_to_shape(dk, k_shape), _sum_to_shape(dv, v_shape)
    return tuple(grad.astype(input_dtype, copy=False) for grad in grads)
