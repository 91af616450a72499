"""FlashAttention in NumPy: exact attention computed tile by tile, never holding an n_q x n_k array.

The heart is :func:`flash_step`, one tile in the book's notation: a block of queries that has already met some keys
carries the online-softmax state -- the running maximum ``m``, the running sum ``l`` and the unnormalised output
``acc`` -- and folds in one block of keys and values. When the block raises a row's maximum, the old ``l`` and
``acc`` were summed against the wrong reference and are multiplied by ``rescale = exp(m_old - m_new)``.

Around it, :func:`flash_attention_steps` walks the tiles in the FlashAttention-2 order (outer loop over blocks of
``block_q`` queries, inner loop over blocks of ``block_k`` keys, skipping those that causal masking or a sliding
``window`` hides, as listed by ``attnlib.tiling``) and yields a :class:`FlashStep` after each tile.
:func:`flash_attention` consumes that stream and divides by ``l`` once per query block; :class:`FlashTrace`
consumes the same stream and keeps it. The per-row log-sum-exp ``lse = m + log(l)`` is all the backward pass
needs to rebuild any tile of probabilities.

Grouped-query attention (q with ``n_heads`` heads, k and v with fewer, ``n_kv_heads``) needs no loop of its own:
q (..., n_kv_heads * G, n_q, d) is viewed as (..., n_kv_heads, G, n_q, d) and k, v as (..., n_kv_heads, 1, n_k, d),
and broadcasting lets the G query heads of a group share one key/value head without copying it.

Memory: the largest temporary is one tile of scores, ``block_q x block_k`` per batch entry, so big blocks are
both allowed and fast -- each tile is a pair of BLAS matrix products -- while the memory stays O(n), not O(n^2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .. import _checks, _settings, tiling
from .online_softmax import rescale_factor

# Defaults chosen by timing on a laptop-class CPU (float32, d = 64): a 128 x 1024 tile is 512 KiB in float32,
# small enough to stay in a core's L2 cache, and big enough that each tile is two efficient BLAS calls and the
# Python loop overhead is negligible. See benchmarks/bench_flash_cpu.py.
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 1024


def flash_step(q_block, k_block, v_block, m, l, acc, visible=None):
    """Fold one block of keys and values into the state (m, l, acc) of a block of queries.

    q_block (..., rows, d_k), already times ``scale``; k_block (..., cols, d_k);
    v_block (..., cols, d_v); m, l (..., rows) and acc (..., rows, d_v) as the previous
    tile left them (-inf, 0, 0 before the first); visible: boolean (rows, cols) or None.
    Returns the new (m, l, acc) and the ``rescale`` factor applied to the old l and acc.
    Pure: nothing passed in is modified.
    """
    s = q_block @ np.swapaxes(k_block, -1, -2)  # (..., rows, cols): one tile of scores
    if visible is not None:
        s = np.where(visible, s, -np.inf)  # masked: exactly zero weight after exp
    m_new = np.maximum(m, s.max(axis=-1))  # (..., rows): the running maximum
    rescale = rescale_factor(m, m_new)  # exp(m - m_new); 1 while only -inf was seen
    p = np.exp(s - _finite(m_new)[..., None])  # (..., rows, cols): all <= 1
    l_new = rescale * l + p.sum(axis=-1)
    acc_new = rescale[..., None] * acc + p @ v_block  # (..., rows, d_v)
    return m_new, l_new, acc_new, rescale


def _finite(m):
    """The shift for exp: m itself, or 0 where m is still -inf (then every score is -inf and exp gives 0, not NaN)."""
    return np.where(np.isneginf(m), 0.0, m).astype(m.dtype, copy=False)


@dataclass(eq=False)
class FlashStep:
    """The state of query block ``i`` after it met key block ``j``.

    ``q_range``/``k_range``: the rows and keys of the tile; ``kind``: ``tiling.FULL`` or ``tiling.MASKED``;
    ``visible``: the tile's causal (and window) mask (None when nothing in it is masked). ``m_old``/``l_old`` and
    ``m_new``/``l_new``: the online-softmax state before and after; ``rescale`` = exp(m_old - m_new);
    ``acc``: the unnormalised output after this tile (..., rows, d_v). ``last``: no key block follows for this
    query block, so acc / l is its output. ``scores`` is filled in by ``FlashTrace`` only. With grouped key/value
    heads the leading dimensions are the grouped ones, (..., n_kv_heads, G, rows, ...).
    """

    i: int
    j: int
    q_range: tuple[int, int]
    k_range: tuple[int, int]
    kind: int
    visible: np.ndarray | None
    m_old: np.ndarray
    m_new: np.ndarray
    l_old: np.ndarray
    l_new: np.ndarray
    rescale: np.ndarray
    acc: np.ndarray
    last: bool
    scores: np.ndarray | None = None


def _compute_dtype(dtype) -> np.dtype:
    """float16 inputs are computed in float32: m, l and acc need the range and the precision."""
    return np.promote_types(dtype, np.float32)


def _validate(q, k, v, causal, window, scale, block_q, block_k):
    """Check the arguments; return them with q, k, v in the grouped layout and ``group`` (1 without grouping)."""
    q, k, v = (_checks.numpy_array(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    group = _checks.query_groups(q, k, v)
    q, k, v = _grouped(q, k, v, group)
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    block_q = DEFAULT_BLOCK_Q if block_q is None else _checks.positive_int("block_q", block_q)
    block_k = DEFAULT_BLOCK_K if block_k is None else _checks.positive_int("block_k", block_k)
    causal = _checks.causal_fits(causal, q.shape[-2], k.shape[-2], f"q {q.shape} and k {k.shape}")
    window = _checks.window_fits(window, causal)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    return q, k, v, causal, window, float(scale), block_q, block_k, group


def _grouped(q, k, v, group: int):
    """Views (no copies) that let broadcasting share each key/value head among the ``group`` query heads using it."""
    if group == 1:
        return q, k, v
    q = q.reshape(q.shape[:-3] + (q.shape[-3] // group, group) + q.shape[-2:])  # (..., n_kv_heads, G, n_q, d_k)
    k = k[..., None, :, :]  # (..., n_kv_heads, 1, n_k, d_k)
    v = v[..., None, :, :] if v.ndim >= 3 else v  # (..., n_kv_heads, 1, n_k, d_v)
    return q, k, v


def _heads_shape(batch_shape: tuple, group: int) -> tuple:
    """The batch dims of the output as the caller sees them: grouped (..., n_kv_heads, G) -> (..., n_heads)."""
    if group == 1:
        return batch_shape
    return batch_shape[:-2] + (batch_shape[-2] * batch_shape[-1],)


def _ungrouped(x, group: int, rows_axis: int):
    """Merge the (n_kv_heads, G) axes in front of ``rows_axis`` back into one axis of n_heads = n_kv_heads * G."""
    if group == 1:
        return x
    head_axis = x.ndim + rows_axis - 2  # the n_kv_heads axis; G follows it
    return x.reshape(x.shape[:head_axis] + (x.shape[head_axis] * group,) + x.shape[head_axis + 2:])


def _steps(q, k, v, causal, window, scale, block_q, block_k) -> Iterator[FlashStep]:
    """The forward loop on checked arguments; yields the state after every tile."""
    n_q, n_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    for i, (q_start, q_end) in enumerate(tiling.query_blocks(n_q, block_q)):
        rows = q_end - q_start
        q_block = q[..., q_start:q_end, :] * q.dtype.type(scale)  # scaled once
        m = np.full(batch + (rows,), -np.inf, dtype=q.dtype)  # (..., rows)
        l = np.zeros_like(m)
        acc = np.zeros(batch + (rows, d_v), dtype=q.dtype)  # (..., rows, d_v)
        tiles = tiling.key_tiles(q_start, q_end, n_q, n_k, block_k, causal, window)
        for index, tile in enumerate(tiles):
            k_start, k_end = tile.k_start, tile.k_end
            visible = None
            if causal and tile.kind == tiling.MASKED:  # crosses the diagonal or the window's lower edge
                visible = tiling.causal_visible(q_start, q_end, k_start, k_end, n_k - n_q, window)
            m_new, l_new, acc, rescale = flash_step(
                q_block, k[..., k_start:k_end, :], v[..., k_start:k_end, :], m, l, acc, visible
            )
            yield FlashStep(i, tile.j, (q_start, q_end), (k_start, k_end), tile.kind,
                            visible, m, m_new, l, l_new, rescale, acc,
                            last=index == len(tiles) - 1)
            m, l = m_new, l_new


def flash_attention_steps(q, k, v, *, causal=False, window=None, scale=None, block_q=None, block_k=None):
    """The forward pass as a stream: a :class:`FlashStep` after every tile, in the order they are computed.

    Same arguments as :func:`flash_attention`; arrays in the stream are in the compute dtype (float32 for float16
    inputs), and with grouped key/value heads in the grouped layout (..., n_kv_heads, G, rows, ...). For teaching
    and for widgets: every step keeps its own arrays, so use small inputs if you keep them.
    """
    q, k, v, causal, window, scale, block_q, block_k, _ = _validate(q, k, v, causal, window, scale, block_q, block_k)
    dtype = _compute_dtype(q.dtype)
    return _steps(q.astype(dtype), k.astype(dtype), v.astype(dtype), causal, window, scale, block_q, block_k)


def flash_attention(q, k, v, *, causal=False, window=None, scale=None, block_q=None, block_k=None,
                    return_lse=False):
    """softmax(q k^T * scale) v, tile by tile, equal to ``attention(q, k, v, ...)[0]`` up to rounding.

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v); batch dims broadcast.
    ``causal`` masks like ``attention`` (bottom-right aligned when n_q != n_k) and skips key blocks that are
    masked for every row of a query block. ``window`` (needs ``causal``): each query sees only its ``window``
    most recent keys, itself included; key blocks outside every window of a query block are skipped.
    Grouped-query attention: q (..., n_heads, n_q, d_k) with k, v (..., n_kv_heads, n_k, d), n_heads a multiple
    of n_kv_heads; query head h uses key/value head h // (n_heads // n_kv_heads), and k, v are never copied.
    Blocks need not divide n_q or n_k (the last tiles are smaller); None means 128 x 1024. With ``return_lse``
    also returns the row log-sum-exp (..., n_q), which ``flash_attention_backward`` needs.
    Scores that overflow raise ``OverflowError``, as in ``attention``.
    """
    q, k, v, causal, window, scale, block_q, block_k, group = _validate(
        q, k, v, causal, window, scale, block_q, block_k
    )
    return_lse = _checks.flag("return_lse", return_lse)
    input_dtype, dtype = q.dtype, _compute_dtype(q.dtype)
    q, k, v = q.astype(dtype, copy=False), k.astype(dtype, copy=False), v.astype(dtype, copy=False)
    batch_shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    output = np.empty(batch_shape + (q.shape[-2], v.shape[-1]), dtype=dtype)
    lse = np.empty(batch_shape + (q.shape[-2],), dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _normalise, as in attention
        for step in _steps(q, k, v, causal, window, scale, block_q, block_k):
            if step.last:  # this query block has met all its keys
                _finish(step, output, lse)
    output = _ungrouped(output.astype(input_dtype, copy=False), group, rows_axis=-2)  # (..., n_heads, n_q, d_v)
    lse = _ungrouped(lse, group, rows_axis=-1)  # (..., n_heads, n_q)
    return (output, lse) if return_lse else output


def _finish(step: FlashStep, output, lse) -> None:
    """Write acc / l (the one division by l) and m + log l for the rows of a query block's last step."""
    rows = slice(*step.q_range)
    output[..., rows, :], lse[..., rows] = _normalise(step.m_new, step.l_new, step.acc)


def _normalise(m, l, acc):
    """(acc / l, m + log l) for one query block, raising on overflow as ``attention`` does."""
    if _settings.finite_checks():
        if not (np.isfinite(acc).all() and np.isfinite(l).all()):
            raise _checks.scores_overflowed(acc.dtype)
        if (l == 0).any():  # no key is masked for every row here, so l = 0 means every score fell to -inf
            raise _checks.scores_underflowed(acc.dtype, int((l == 0).sum()))
    output = np.divide(acc, l[..., None], out=np.zeros_like(acc), where=l[..., None] > 0)
    with np.errstate(divide="ignore"):  # log(0) = -inf for a row with nothing to attend (checks switched off)
        return output, m + np.log(l)


@dataclass(eq=False)
class FlashTrace:
    """Every step of one forward pass, kept for teaching (small inputs): ``FlashTrace.record(q, k, v, ...)``.

    ``steps`` in execution order, each with its tile of ``scores`` (masked entries -inf); ``skipped`` lists the
    (i, j) tiles that causal masking (or the window) skipped entirely; ``output`` and ``lse`` are the results, in
    the layout of q; the remaining fields describe the tiling.
    """

    steps: list[FlashStep] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)
    n_q: int = 0
    n_k: int = 0
    block_q: int = 0
    block_k: int = 0
    causal: bool = False
    window: int | None = None
    scale: float = 0.0
    output: np.ndarray | None = None
    lse: np.ndarray | None = None

    @classmethod
    def record(cls, q, k, v, *, causal=False, window=None, scale=None, block_q=None, block_k=None):
        """Run :func:`flash_attention_steps` and keep what it yields, plus each tile's scores and the result."""
        q, k, v, causal, window, scale, block_q, block_k, group = _validate(
            q, k, v, causal, window, scale, block_q, block_k
        )
        trace = cls(n_q=q.shape[-2], n_k=k.shape[-2], block_q=block_q, block_k=block_k, causal=causal,
                    window=window, scale=scale)
        dtype = _compute_dtype(q.dtype)
        batch_shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        output = np.empty(batch_shape + (q.shape[-2], v.shape[-1]), dtype=dtype)
        lse = np.empty(batch_shape + (q.shape[-2],), dtype=dtype)
        # q, k, v are already grouped, so the steps come out in the grouped layout.
        for step in flash_attention_steps(q, k, v, causal=causal, window=window, scale=scale, block_q=block_q,
                                          block_k=block_k):
            if step.last:
                _finish(step, output, lse)
            rows, keys = slice(*step.q_range), slice(*step.k_range)
            scores = (q[..., rows, :].astype(dtype) * dtype.type(scale)) @ np.swapaxes(k[..., keys, :], -1, -2)
            step.scores = scores if step.visible is None else np.where(step.visible, scores, -np.inf)
            trace.steps.append(step)
        plan = tiling.tile_plan(trace.n_q, trace.n_k, block_q, block_k, causal=causal, window=window)
        trace.skipped = [(int(i), int(j)) for i, j in np.argwhere(plan == tiling.SKIPPED)]
        trace.output = _ungrouped(output.astype(q.dtype, copy=False), group, rows_axis=-2)  # (..., n_heads, n_q, d_v)
        trace.lse = _ungrouped(lse, group, rows_axis=-1)  # (..., n_heads, n_q)
        return trace

    def steps_for_query_block(self, i: int) -> list[FlashStep]:
        return [step for step in self.steps if step.i == i]

    def to_dict(self) -> dict:
        """Plain lists and numbers (JSON-ready), e.g. for a widget drawing the tiles."""

        def plain(x):
            if isinstance(x, np.ndarray):
                return np.where(np.isneginf(x), None, x).tolist() if x.dtype.kind == "f" else x.tolist()
            return x

        keep = ("i", "j", "q_range", "k_range", "scores", "m_old", "m_new", "l_old", "l_new", "rescale", "acc")
        return {
            "n_q": self.n_q,
            "n_k": self.n_k,
            "block_q": self.block_q,
            "block_k": self.block_k,
            "causal": self.causal,
            "window": self.window,
            "scale": self.scale,
            "skipped": [list(tile) for tile in self.skipped],
            "steps": [{name: plain(getattr(step, name)) for name in keep} for step in self.steps],
            "output": plain(self.output),
            "lse": plain(self.lse),
        }


def _sum_to_shape(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Undo broadcasting for a gradient: sum over the dims that broadcasting added or stretched."""
    if x.shape == tuple(shape):
        return x
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
    window: int | None = None,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
):
    """Gradients (dq, dk, dv) of ``flash_attention`` given the upstream gradient ``grad_output``.

    Tile by tile again: each tile's probabilities are rebuilt as exp(q_i k_j^T * scale - lse) from the saved
    row log-sum-exp, so no n_q x n_k array is stored. Loop order as in FlashAttention-2's backward pass: the
    outer loop holds one key block and accumulates its dk and dv; the inner loop visits the query blocks and
    adds each one's share of dq. With P the probabilities and dP = dO v^T, the softmax gradient is
    dS = P * (dP - D), where D = rowsum(dO * O) is computed once up front. With a ``window`` the key blocks
    outside every query's window are skipped, as in the forward pass; with grouped key/value heads, dk and dv
    sum the contributions of all the query heads of a group.
    """
    shapes = f"q {np.shape(q)}, k {np.shape(k)}, v {np.shape(v)}"
    q, k, v, causal, window, scale, block_q, block_k, group = _validate(
        q, k, v, causal, window, scale, block_q, block_k
    )
    output, lse, grad_output = (_checks.numpy_array(name, x) for name, x in
                                (("output", output), ("lse", lse), ("grad_output", grad_output)))
    n_q, n_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    batch_shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    _checks.floating_array("output", output, min_ndim=2)
    _checks.floating_array("grad_output", grad_output, min_ndim=2)
    _checks.floating_array("lse", lse, min_ndim=1)
    output_shape = _heads_shape(batch_shape, group) + (n_q, d_v)
    for name, x, expected in (
        ("output", output, output_shape), ("grad_output", grad_output, output_shape), ("lse", lse, output_shape[:-1])
    ):
        if tuple(x.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} for {shapes}; got {tuple(x.shape)}")
    # Into the grouped layout that _validate gave q: (..., n_kv_heads, G, n_q, ...).
    output, grad_output = output.reshape(batch_shape + (n_q, d_v)), grad_output.reshape(batch_shape + (n_q, d_v))
    lse = lse.reshape(batch_shape + (n_q,))

    dtype = _compute_dtype(q.dtype)
    input_dtype = q.dtype
    offset = n_k - n_q
    q_shape = q.shape
    q, k, v, output, lse, grad_output = (x.astype(dtype, copy=False) for x in (q, k, v, output, lse, grad_output))
    q = np.broadcast_to(q, batch_shape + q.shape[-2:])  # a view: dq gets the full batch shape, summed back at the end
    delta = np.sum(grad_output * output, axis=-1)  # (..., n_q): D_i = sum_j P_ij dP_ij = dO_i . O_i
    dq = np.zeros(q.shape, dtype=dtype)
    # dk and dv keep the shapes of k and v: each tile's share is summed over the query heads (and batch entries)
    # that share the keys right away, so no gradient buffer is ever larger than k or v.
    dk = np.zeros(k.shape, dtype=dtype)
    dv = np.zeros(v.shape, dtype=dtype)
    plan = tiling.tile_plan(n_q, n_k, block_q, block_k, causal=causal, window=window)  # the forward's tiles

    for j, k_start in enumerate(range(0, n_k, block_k)):
        k_end = min(k_start + block_k, n_k)
        k_block, v_block = k[..., k_start:k_end, :], v[..., k_start:k_end, :]  # (..., cols, d)
        dk_block = np.zeros(k_block.shape, dtype=dtype)
        dv_block = np.zeros(v_block.shape, dtype=dtype)
        # The query blocks that see some key of this block: the forward's plan, read by column.
        for i in np.flatnonzero(plan[:, j] != tiling.SKIPPED):
            q_start, q_end = i * block_q, min((i + 1) * block_q, n_q)
            q_block = q[..., q_start:q_end, :] * scale  # (..., rows, d_k)
            do_block = grad_output[..., q_start:q_end, :]  # (..., rows, d_v)
            scores = q_block @ np.swapaxes(k_block, -1, -2)  # (..., rows, cols)
            if causal and plan[i, j] == tiling.MASKED:  # the diagonal or the window's edge crosses the tile
                visible = tiling.causal_visible(q_start, q_end, k_start, k_end, offset, window)
                np.copyto(scores, -np.inf, where=~visible)
            scores -= lse[..., q_start:q_end, None]
            p = np.exp(scores, out=scores)  # (..., rows, cols): this tile's probabilities, recomputed
            dv_block += _sum_to_shape(np.swapaxes(p, -1, -2) @ do_block, v_block.shape)
            dp = do_block @ np.swapaxes(v_block, -1, -2)  # (..., rows, cols)
            dp -= delta[..., q_start:q_end, None]
            ds = np.multiply(p, dp, out=dp)  # gradient w.r.t. the scaled scores
            dq[..., q_start:q_end, :] += scale * (ds @ k_block)
            # q_block already carries the scale
            dk_block += _sum_to_shape(np.swapaxes(ds, -1, -2) @ q_block, k_block.shape)
        dk[..., k_start:k_end, :] = dk_block
        dv[..., k_start:k_end, :] = dv_block

    dq = _ungrouped(_sum_to_shape(dq, q_shape), group, rows_axis=-2)  # (..., n_heads, n_q, d_k)
    if group > 1:  # drop the axis of length 1 that let the group share each key/value head
        dk = dk[..., 0, :, :]
        dv = dv[..., 0, :, :] if v.ndim >= 4 else dv  # a v without a head axis was not grouped
    return tuple(grad.astype(input_dtype, copy=False) for grad in (dq, dk, dv))
