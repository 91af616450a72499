"""FlashAttention-2 as Triton kernels: a forward pass and a backward pass that recomputes from the logsumexp.

The kernels read like the NumPy loop in ``attnlib.numpy.flash_attention``: one program owns a block of
``block_q`` queries, walks over the keys ``block_k`` at a time, and keeps the running maximum ``m``, the running
sum ``l`` and the unnormalised output ``acc`` in registers. Nothing of size n_q x n_k is ever written to memory.

Two Python entry points, used by ``attnlib.torch.flash_attention(..., backend="triton")``:

* ``forward(q, k, v, causal, scale, window=None) -> (output, lse)``
* ``backward(q, k, v, output, lse, grad_output, causal, scale, window=None) -> (dq, dk, dv)``

q is (B, H, n_q, d), k and v are (B, H_kv, n_k, d) with H a multiple of H_kv; any number of leading dimensions
works as long as q, k and v share them. ``lse`` is float32 (B, H, n_q): the natural-log logsumexp of each row of
scaled scores.

Grouped-query attention costs no copies: the program of query head h reads key/value head h // group, with
group = H // H_kv. Because the (batch, head) pairs are numbered b * H + h, that is simply ``batch_head // group``.
A sliding ``window`` (causal only) moves where a program's walk over the keys starts: key blocks wholly before the
window of its first query are never loaded, the blocks crossing the window's lower edge are masked like the ones
on the diagonal. The split into skipped, masked and full tiles uses the same four bounds as ``attnlib.tiling``:
``start_k``, ``start_full``, ``end_full`` and ``end_k``.

On a CUDA device the kernels are compiled. Without one they run under Triton's interpreter, which executes the
same kernel source with NumPy on the CPU -- slowly, but exactly enough to test it -- provided the environment
variable ``TRITON_INTERPRET=1`` was set before triton was first imported. Without triton installed at all this
module still imports; ``available()`` says False and the entry points raise ImportError saying why.
"""

from __future__ import annotations

import os

import torch

from .. import _checks

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR = None
except ImportError as error:  # e.g. macOS: PyTorch installs without triton there

    class _MissingTriton:
        """Stands in for ``triton`` and ``triton.language`` so the kernel definitions below still parse."""

        constexpr = None

        @staticmethod
        def jit(function):
            return function

    triton = tl = _MissingTriton
    _IMPORT_ERROR = error

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E), and exp2 is the native GPU instruction
LN2 = 0.6931471805599453  # ln(2): turns a base-2 logsumexp back into the natural-log one we return
HEAD_DIMS = (16, 32, 64, 128, 256)  # tl.arange needs a power of two; tl.dot needs at least 16


def available() -> bool:
    """True when triton imports, i.e. when the ``backend="triton"`` kernels can run (compiled or interpreted)."""
    return _IMPORT_ERROR is None


def interpreted() -> bool:
    """True when the kernels run under Triton's CPU interpreter rather than compiled for a GPU."""
    return available() and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _in_window(position, key, window):
    """True where the query at absolute ``position`` sees ``key``: causal (bottom-right aligned) and among its
    ``window`` most recent keys. Plain causal attention is the window of n_k keys, which hides nothing more."""
    return (key <= position) & (key > position - window)


@triton.jit
def _forward_step(
    q, m, l, acc, K, V, stride_k_n, stride_v_n, start_k, offs_q, n_k, offset, window, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Fold one block of keys and values into the running statistics (m, l, acc) of one block of queries."""
    offs_k = start_k + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = K + offs_k[:, None] * stride_k_n + offs_d[None, :]
    v_ptrs = V + offs_k[:, None] * stride_v_n + offs_d[None, :]
    if MASKED:  # the block may run past the last key: read zeros there instead of someone else's memory
        k = tl.load(k_ptrs, mask=offs_k[:, None] < n_k, other=0.0)  # (block_k, d)
        v = tl.load(v_ptrs, mask=offs_k[:, None] < n_k, other=0.0)  # (block_k, d)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)

    # Scores in base 2: qk_scale = scale * log2(e) was folded in once, so exp2 below equals exp of the real scores.
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (block_q, block_k)
    if MASKED:
        # Only blocks on the causal diagonal, on the window's lower edge or at the ragged end get here; every other
        # block skips this work.
        visible = offs_k[None, :] < n_k
        if CAUSAL:
            visible = visible & _in_window(offs_q[:, None] + offset, offs_k[None, :], window)
        s = tl.where(visible, s, float("-inf"))  # -inf: exactly zero probability after exp2

    # Online softmax: a larger maximum shrinks everything summed so far by rescale = 2^(m_old - m_new).
    m_new = tl.maximum(m, tl.max(s, 1))  # (block_q,)
    # While a row has seen nothing but -inf, m_new is -inf too: shift by 0 instead, so that 2^(-inf - -inf) never
    # makes a NaN (every p is then 0 and rescale is 0 against l = 0, acc = 0).
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.exp2(m - m_shift)  # (block_q,): 0 on the first block, where m is still -inf
    p = tl.exp2(s - m_shift[:, None])  # (block_q, block_k): unnormalised probabilities, all <= 1
    l = l * rescale + tl.sum(p, 1)
    acc = acc * rescale[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)  # acc += p @ v, accumulated in float32
    return m_new, l, acc


@triton.jit
def _forward_kernel(
    Q, K, V, Out, Lse,
    stride_q_bh, stride_q_n, stride_k_bh, stride_k_n, stride_v_bh, stride_v_n, stride_o_bh, stride_o_n,
    n_q, n_k, group, window, qk_scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = one block of ``BLOCK_Q`` queries of one (batch, head)."""
    start_q = tl.program_id(0) * BLOCK_Q
    batch_head = tl.program_id(1).to(tl.int64)  # int64: batch_head * stride can pass 2^31 on big inputs
    Q += batch_head * stride_q_bh
    K += (batch_head // group) * stride_k_bh  # the key/value head this query head shares with its group
    V += (batch_head // group) * stride_v_bh
    Out += batch_head * stride_o_bh
    Lse += batch_head * n_q

    offs_q = start_q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, HEAD_DIM)
    # The query block is read once and stays in registers for the whole loop. Rows past n_q read zeros;
    # they compute harmless numbers that are never stored.
    q = tl.load(Q + offs_q[:, None] * stride_q_n + offs_d[None, :], mask=offs_q[:, None] < n_q, other=0.0)

    m = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)  # running maximum of the base-2 scores
    l = tl.zeros([BLOCK_Q], dtype=tl.float32)  # running sum of exp2(score - m)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)  # running sum of exp2(score - m) * v

    # Which keys does this block need? Causal attention is aligned bottom-right: query i sits at absolute
    # position p = i + offset and sees keys p - window < j <= p.
    offset = n_k - n_q
    last_q = tl.minimum(start_q + BLOCK_Q, n_q) - 1  # the block's last real query
    if CAUSAL:
        start_k = tl.maximum(start_q + offset - window + 1, 0)  # the first key of the first query's window
        start_full = tl.maximum(last_q + offset - window + 1, 0)  # the first key of the last query's window
        end_full = tl.minimum(start_q + offset + 1, n_k)  # keys that even the block's first query sees
        end_k = tl.minimum(last_q + offset + 1, n_k)  # keys its last query sees
    else:
        start_k = 0
        start_full = 0
        end_full = n_k
        end_k = n_k
    start_k = (start_k // BLOCK_K) * BLOCK_K  # the block holding it; earlier blocks are never loaded
    start_full = tl.cdiv(start_full, BLOCK_K) * BLOCK_K  # whole blocks only: one starting earlier needs a mask
    end_full = (end_full // BLOCK_K) * BLOCK_K  # whole blocks only; a ragged remainder needs masking

    # 1) The blocks on the window's lower edge (only with a window): masked.
    for k_start in range(start_k, tl.minimum(start_full, end_k), BLOCK_K):
        m, l, acc = _forward_step(
            q, m, l, acc, K, V, stride_k_n, stride_v_n, k_start, offs_q, n_k, offset, window, qk_scale,
            CAUSAL, True, HEAD_DIM, BLOCK_K, PRECISION,
        )
    # 2) Blocks that every query sees in full: no mask at all. This is where almost all the time goes.
    for k_start in range(start_full, end_full, BLOCK_K):
        m, l, acc = _forward_step(
            q, m, l, acc, K, V, stride_k_n, stride_v_n, k_start, offs_q, n_k, offset, window, qk_scale,
            CAUSAL, False, HEAD_DIM, BLOCK_K, PRECISION,
        )
    # 3) The diagonal blocks (causal) and the ragged last block: masked. Blocks past end_k are never visited.
    for k_start in range(tl.maximum(start_full, end_full), end_k, BLOCK_K):
        m, l, acc = _forward_step(
            q, m, l, acc, K, V, stride_k_n, stride_v_n, k_start, offs_q, n_k, offset, window, qk_scale,
            CAUSAL, True, HEAD_DIM, BLOCK_K, PRECISION,
        )

    # Normalise once at the end instead of at every step, and keep the logsumexp for the backward pass. A row with
    # l = 0 (every score -inf) has m = -inf too: it is written as zeros with lse = -inf, and the Python wrapper
    # reports it. (Padding rows past n_q can have l = 0 as well; they are never stored.)
    l = tl.where(l > 0, l, 1.0)
    acc = acc / l[:, None]
    lse = (m + tl.log2(l)) * 0.6931471805599453  # ln(2): back from base 2 to the natural log
    in_range = offs_q < n_q
    tl.store(Out + offs_q[:, None] * stride_o_n + offs_d[None, :], acc.to(Out.dtype.element_ty), mask=in_range[:, None])
    tl.store(Lse + offs_q, lse, mask=in_range)


# --------------------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _backward_preprocess_kernel(
    Out, dOut, Delta, stride_o_bh, stride_o_n, stride_do_bh, stride_do_n, n_q,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """delta_i = sum_d dO_id * O_id, the term that softmax's Jacobian subtracts from every dP_ij of row i."""
    start_q = tl.program_id(0) * BLOCK_Q
    batch_head = tl.program_id(1).to(tl.int64)
    offs_q = start_q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, HEAD_DIM)
    Out += batch_head * stride_o_bh
    dOut += batch_head * stride_do_bh
    in_range = offs_q[:, None] < n_q
    o = tl.load(Out + offs_q[:, None] * stride_o_n + offs_d[None, :], mask=in_range, other=0.0)
    do = tl.load(dOut + offs_q[:, None] * stride_do_n + offs_d[None, :], mask=in_range, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (block_q,)
    tl.store(Delta + batch_head * n_q + offs_q, delta, mask=offs_q < n_q)


@triton.jit
def _backward_dk_dv_step(
    dk, dv, k, v, Q, dOut, Lse, Delta, stride_q_n, stride_do_n, start_q, offs_k, n_q, offset, window, qk_scale,
    MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, PRECISION: tl.constexpr,
):
    """Add one block of queries' contribution to dk and dv of one block of keys."""
    offs_q = start_q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, HEAD_DIM)
    in_range = offs_q < n_q
    # Rows past n_q read q = 0, dO = 0 and delta = 0, so they add exactly nothing to dk or dv.
    q = tl.load(Q + offs_q[:, None] * stride_q_n + offs_d[None, :], mask=in_range[:, None], other=0.0)
    do = tl.load(dOut + offs_q[:, None] * stride_do_n + offs_d[None, :], mask=in_range[:, None], other=0.0)
    lse = tl.load(Lse + offs_q, mask=in_range, other=0.0) * 1.4426950408889634  # log2(e): base-2 logsumexp
    delta = tl.load(Delta + offs_q, mask=in_range, other=0.0)

    # Recompute the probabilities instead of having stored them: P_ij = exp(s_ij - lse_i), exact, no max needed.
    # Work with the transpose (keys along rows) so that P^T and dS^T multiply straight into dv and dk.
    s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (block_k, block_q), base 2
    p_t = tl.exp2(s_t - lse[None, :])  # (block_k, block_q)
    if MASKED:  # the diagonal or the window's lower edge crosses this tile: hide the keys a query does not see
        p_t = tl.where(_in_window(offs_q[None, :] + offset, offs_k[:, None], window), p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)  # dV += P^T dO

    # dS = P * (dP - delta), the softmax backward, with dP = dO V^T (transposed here: V dO^T).
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (block_k, block_q)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)  # dK += dS^T Q (times scale, applied at the end)
    return dk, dv


@triton.jit
def _backward_dk_dv_kernel(
    Q, K, V, dOut, Lse, Delta, dK, dV,
    stride_q_bh, stride_q_n, stride_k_bh, stride_k_n, stride_v_bh, stride_v_n, stride_do_bh, stride_do_n,
    stride_dk_bh, stride_dk_n, stride_dv_bh, stride_dv_n,
    n_q, n_k, group, window, qk_scale, scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = one block of ``BLOCK_K`` keys of one key/value head: it owns their dk and dv, so no two
    programs write the same row. With grouped heads it walks the queries of every head of its group in turn."""
    start_k = tl.program_id(0) * BLOCK_K
    kv_head = tl.program_id(1).to(tl.int64)  # (batch, key/value head) pair
    K += kv_head * stride_k_bh
    V += kv_head * stride_v_bh
    dK += kv_head * stride_dk_bh
    dV += kv_head * stride_dv_bh

    offs_k = start_k + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    in_range = offs_k[:, None] < n_k
    k = tl.load(K + offs_k[:, None] * stride_k_n + offs_d[None, :], mask=in_range, other=0.0)  # (block_k, d)
    v = tl.load(V + offs_k[:, None] * stride_v_n + offs_d[None, :], mask=in_range, other=0.0)  # (block_k, d)
    dk = tl.zeros([BLOCK_K, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_K, HEAD_DIM], dtype=tl.float32)

    # Which queries see these keys? Query i (position p = i + offset) sees key j when p - window < j <= p.
    offset = n_k - n_q
    if CAUSAL:
        # Earlier query blocks see none of these keys: start at the block holding the first query that does.
        start_q = (tl.maximum(start_k - offset, 0) // BLOCK_Q) * BLOCK_Q
        # From this query on, every query sees the block's last key: the diagonal no longer crosses it.
        full_q = tl.cdiv(tl.maximum(start_k + BLOCK_K - 1 - offset, 0), BLOCK_Q) * BLOCK_Q
        # From this query on, the block's first key has left the window (whole query blocks only; rows past n_q
        # are not real, so a block that reaches n_q counts as full).
        end_full_q = tl.maximum(start_k + window - offset, 0)
        end_full_q = tl.where(end_full_q >= n_q, n_q, (end_full_q // BLOCK_Q) * BLOCK_Q)
        # From this query on, the block's last key has left the window too: none of these keys is seen.
        end_q = tl.minimum(start_k + BLOCK_K - 1 + window - offset, n_q)
    else:
        start_q = 0
        full_q = 0
        end_full_q = n_q
        end_q = n_q

    for member in range(0, group):  # the query heads that share this key/value head
        q_head = kv_head * group + member
        Q_head = Q + q_head * stride_q_bh
        dOut_head = dOut + q_head * stride_do_bh
        Lse_head = Lse + q_head * n_q
        Delta_head = Delta + q_head * n_q
        # 1) Query blocks that the causal diagonal of this key block crosses: masked.
        for block_start in range(start_q, tl.minimum(full_q, end_q), BLOCK_Q):
            dk, dv = _backward_dk_dv_step(
                dk, dv, k, v, Q_head, dOut_head, Lse_head, Delta_head, stride_q_n, stride_do_n, block_start, offs_k,
                n_q, offset, window, qk_scale, True, HEAD_DIM, BLOCK_Q, PRECISION,
            )
        # 2) Query blocks that see every key of this block: no mask.
        for block_start in range(full_q, end_full_q, BLOCK_Q):
            dk, dv = _backward_dk_dv_step(
                dk, dv, k, v, Q_head, dOut_head, Lse_head, Delta_head, stride_q_n, stride_do_n, block_start, offs_k,
                n_q, offset, window, qk_scale, False, HEAD_DIM, BLOCK_Q, PRECISION,
            )
        # 3) Query blocks that the window's lower edge crosses (only with a window): masked.
        for block_start in range(tl.maximum(full_q, end_full_q), end_q, BLOCK_Q):
            dk, dv = _backward_dk_dv_step(
                dk, dv, k, v, Q_head, dOut_head, Lse_head, Delta_head, stride_q_n, stride_do_n, block_start, offs_k,
                n_q, offset, window, qk_scale, True, HEAD_DIM, BLOCK_Q, PRECISION,
            )

    dk = dk * scale  # s = scale * q k^T, so dL/dk = scale * dS^T q
    tl.store(dK + offs_k[:, None] * stride_dk_n + offs_d[None, :], dk.to(dK.dtype.element_ty), mask=in_range)
    tl.store(dV + offs_k[:, None] * stride_dv_n + offs_d[None, :], dv.to(dV.dtype.element_ty), mask=in_range)


@triton.jit
def _backward_dq_step(
    dq, q, do, lse, delta, K, V, stride_k_n, stride_v_n, start_k, offs_q, n_k, offset, window, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Add one block of keys' contribution to dq of one block of queries."""
    offs_k = start_k + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = K + offs_k[:, None] * stride_k_n + offs_d[None, :]
    v_ptrs = V + offs_k[:, None] * stride_v_n + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptrs, mask=offs_k[:, None] < n_k, other=0.0)
        v = tl.load(v_ptrs, mask=offs_k[:, None] < n_k, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)

    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (block_q, block_k), base 2
    p = tl.exp2(s - lse[:, None])  # the forward's probabilities, recomputed from the saved logsumexp
    if MASKED:
        visible = offs_k[None, :] < n_k
        if CAUSAL:
            visible = visible & _in_window(offs_q[:, None] + offset, offs_k[None, :], window)
        p = tl.where(visible, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (block_q, block_k): dP = dO V^T
    ds = p * (dp - delta[:, None])  # softmax backward
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)  # dQ += dS K (times scale, applied at the end)
    return dq


@triton.jit
def _backward_dq_kernel(
    Q, K, V, dOut, Lse, Delta, dQ,
    stride_q_bh, stride_q_n, stride_k_bh, stride_k_n, stride_v_bh, stride_v_n, stride_do_bh, stride_do_n,
    stride_dq_bh, stride_dq_n,
    n_q, n_k, group, window, qk_scale, scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = one block of ``BLOCK_Q`` queries: it owns their dq. Same key walk as the forward."""
    start_q = tl.program_id(0) * BLOCK_Q
    batch_head = tl.program_id(1).to(tl.int64)
    Q += batch_head * stride_q_bh
    K += (batch_head // group) * stride_k_bh  # the key/value head this query head shares with its group
    V += (batch_head // group) * stride_v_bh
    dOut += batch_head * stride_do_bh
    dQ += batch_head * stride_dq_bh
    Lse += batch_head * n_q
    Delta += batch_head * n_q

    offs_q = start_q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, HEAD_DIM)
    in_range = offs_q < n_q
    q = tl.load(Q + offs_q[:, None] * stride_q_n + offs_d[None, :], mask=in_range[:, None], other=0.0)
    do = tl.load(dOut + offs_q[:, None] * stride_do_n + offs_d[None, :], mask=in_range[:, None], other=0.0)
    lse = tl.load(Lse + offs_q, mask=in_range, other=0.0) * 1.4426950408889634  # log2(e): base-2 logsumexp
    delta = tl.load(Delta + offs_q, mask=in_range, other=0.0)
    dq = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)

    offset = n_k - n_q
    last_q = tl.minimum(start_q + BLOCK_Q, n_q) - 1
    if CAUSAL:
        start_k = tl.maximum(start_q + offset - window + 1, 0)
        start_full = tl.maximum(last_q + offset - window + 1, 0)
        end_full = tl.minimum(start_q + offset + 1, n_k)
        end_k = tl.minimum(last_q + offset + 1, n_k)
    else:
        start_k = 0
        start_full = 0
        end_full = n_k
        end_k = n_k
    start_k = (start_k // BLOCK_K) * BLOCK_K
    start_full = tl.cdiv(start_full, BLOCK_K) * BLOCK_K
    end_full = (end_full // BLOCK_K) * BLOCK_K

    for k_start in range(start_k, tl.minimum(start_full, end_k), BLOCK_K):  # the window's lower edge: masked
        dq = _backward_dq_step(
            dq, q, do, lse, delta, K, V, stride_k_n, stride_v_n, k_start, offs_q, n_k, offset, window, qk_scale,
            CAUSAL, True, HEAD_DIM, BLOCK_K, PRECISION,
        )
    for k_start in range(start_full, end_full, BLOCK_K):  # seen in full: no mask
        dq = _backward_dq_step(
            dq, q, do, lse, delta, K, V, stride_k_n, stride_v_n, k_start, offs_q, n_k, offset, window, qk_scale,
            CAUSAL, False, HEAD_DIM, BLOCK_K, PRECISION,
        )
    for k_start in range(tl.maximum(start_full, end_full), end_k, BLOCK_K):  # the diagonal, the ragged end: masked
        dq = _backward_dq_step(
            dq, q, do, lse, delta, K, V, stride_k_n, stride_v_n, k_start, offs_q, n_k, offset, window, qk_scale,
            CAUSAL, True, HEAD_DIM, BLOCK_K, PRECISION,
        )

    dq = dq * scale
    tl.store(dQ + offs_q[:, None] * stride_dq_n + offs_d[None, :], dq.to(dQ.dtype.element_ty), mask=in_range[:, None])


# --------------------------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------------------------

# Under the interpreter the block sizes only change how many NumPy calls run, so one small configuration is used
# (the autotuner's benchmarking loop does not work there). Compiled, the autotuner times a handful of
# configurations the first time it meets a new (n_q, n_k, head dim, causal, window) and keeps the fastest.
INTERPRETER_BLOCKS = {"BLOCK_Q": 32, "BLOCK_K": 32}
_TUNING_KEY = ["n_q", "n_k", "HEAD_DIM", "CAUSAL", "window"]


def _configs(blocks):
    return [
        triton.Config({"BLOCK_Q": block_q, "BLOCK_K": block_k}, num_warps=warps, num_stages=stages)
        for block_q, block_k, warps, stages in blocks
    ]


# (block_q, block_k, num_warps, num_stages): large query blocks amortise each key load over many queries;
# the head dimension limits how large a block still fits in registers and shared memory.
_FORWARD_BLOCKS = [
    (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 2),
    (64, 64, 4, 4), (128, 64, 8, 4),
]
# The dK/dV pass owns a key block and streams query blocks, the dQ pass the other way round, so each gets its own
# list: a large owned block amortises the streamed loads, a small streamed block keeps the registers in check.
_DK_DV_BLOCKS = [
    (32, 128, 8, 2), (64, 128, 8, 3), (64, 64, 4, 2), (64, 64, 8, 3), (32, 64, 4, 3), (64, 32, 8, 2), (32, 32, 4, 2),
]
_DQ_BLOCKS = [
    (128, 32, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 8, 3), (64, 32, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2),
]
_autotuned_kernels = {}


def _kernel(name: str, kernel, blocks, block_q, block_k):
    """The kernel plus the meta-parameters to launch it with: fixed blocks, or the autotuned wrapper."""
    if block_q is not None or block_k is not None or interpreted():
        chosen = dict(INTERPRETER_BLOCKS)
        if block_q is not None:
            chosen["BLOCK_Q"] = block_q
        if block_k is not None:
            chosen["BLOCK_K"] = block_k
        return kernel, chosen
    if name not in _autotuned_kernels:
        _autotuned_kernels[name] = triton.autotune(configs=_configs(blocks), key=_TUNING_KEY)(kernel)
    return _autotuned_kernels[name], {}


# --------------------------------------------------------------------------------------------------------------
# Python entry points
# --------------------------------------------------------------------------------------------------------------


def _require_triton() -> None:
    if _IMPORT_ERROR is not None:
        raise ImportError(
            "backend='triton' needs the triton package, which failed to import "
            f"({_IMPORT_ERROR}). Install it (it ships with PyTorch on Linux) or use backend='torch'."
        ) from _IMPORT_ERROR


def _block(name: str, value):
    if value is None:
        return None
    value = _checks.positive_int(name, value)
    if value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16 for backend='triton' (tl.dot needs at least 16), "
                         f"got {value}")
    return value


def check_supported(q, k, v, block_q, block_k):
    """Refuse, by name, what the kernels cannot compute correctly; return the checked block sizes.

    Called at the door of ``attnlib.torch.flash_attention(..., backend="triton")`` on arguments it has already
    checked as attention inputs (shapes, dtypes, devices, values).
    """
    _require_triton()
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"backend='triton' needs q, k and v in float32, float16 or bfloat16, got {q.dtype}")
    if q.dtype == torch.bfloat16 and interpreted():
        raise TypeError(
            "backend='triton' cannot run bfloat16 under Triton's CPU interpreter (its bfloat16 tl.dot gives wrong "
            "results): use float16 or float32 there, or backend='torch'"
        )
    head_dim = q.shape[-1]
    if head_dim not in HEAD_DIMS or k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        raise ValueError(f"backend='triton' needs q, k and v to share a head dimension in {HEAD_DIMS}, got {shapes}")
    if not interpreted() and q.device.type != "cuda":
        raise ValueError(
            f"backend='triton' compiles for a GPU and needs CUDA tensors, got q on {q.device}. To run the kernel on "
            "the CPU, set TRITON_INTERPRET=1 before triton is first imported."
        )
    return _block("block_q", block_q), _block("block_k", block_k)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(..., n, d) -> (batch_head, n, d), contiguous: one program grid axis for all leading dimensions."""
    return x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous()


def _group(q, k, v) -> int:
    """How many query heads share each key/value head (dimension -3); the arguments come checked, so assert."""
    assert q.dtype == k.dtype == v.dtype and k.shape[:-1] == v.shape[:-1], "unchecked arguments"
    if q.ndim < 3:
        assert q.shape[:-2] == k.shape[:-2], "unchecked arguments"
        return 1
    assert q.shape[:-3] == k.shape[:-3] and q.shape[-3] % k.shape[-3] == 0, "unchecked arguments"
    return q.shape[-3] // k.shape[-3]


def _window(causal: bool, window: int | None, n_k: int) -> int:
    """The window the kernels compute with: causal attention without one is the window of all n_k keys."""
    return n_k if window is None or not causal else min(window, n_k)


def forward(
    q, k, v, causal: bool, scale: float, *, window: int | None = None, block_q: int | None = None,
    block_k: int | None = None,
):
    """softmax(q k^T * scale) v without materialising the scores -> (output like q, lse float32 (..., n_q)).

    ``block_q``/``block_k`` fix the tile sizes (powers of two >= 16); by default the interpreter uses 32 x 32 and
    a GPU uses the autotuned choice. q (..., H, n_q, d), k and v (..., H_kv, n_k, d) share their other leading
    dimensions, H is a multiple of H_kv, and they were checked by ``attnlib.torch.flash_attention`` (with
    ``check_supported``). ``window`` (causal only): each query sees its ``window`` most recent keys.
    """
    group = _group(q, k, v)
    q3, k3, v3 = _flat(q), _flat(k), _flat(v)
    batch_heads, n_q, head_dim = q3.shape
    n_k = k3.shape[1]
    output = torch.empty_like(q3)  # (batch_head, n_q, d)
    lse = torch.empty((batch_heads, n_q), device=q.device, dtype=torch.float32)  # (batch_head, n_q)

    kernel, meta = _kernel("forward", _forward_kernel, _FORWARD_BLOCKS, block_q, block_k)
    grid = lambda chosen: (triton.cdiv(n_q, chosen["BLOCK_Q"]), batch_heads)  # noqa: E731
    kernel[grid](
        q3, k3, v3, output, lse,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        output.stride(0), output.stride(1),
        n_q, n_k, group, _window(causal, window, n_k), scale * LOG2E,
        CAUSAL=causal, HEAD_DIM=head_dim, PRECISION=_precision(q3.dtype), **meta,
    )
    return output.reshape(q.shape), lse.reshape(q.shape[:-1])


def backward(
    q, k, v, output, lse, grad_output, causal: bool, scale: float, *, window: int | None = None,
    block_q: int | None = None, block_k: int | None = None,
):
    """Gradients (dq, dk, dv) of the attention whose ``forward`` returned ``output`` and ``lse``.

    With grouped heads, dk and dv of a key/value head sum over the query heads of its group (no atomics: one
    program owns a block of keys and walks every query head of the group)."""
    assert output.shape == grad_output.shape == q.shape and lse.shape == q.shape[:-1], "unchecked arguments"
    group = _group(q, k, v)
    q3, k3, v3 = _flat(q), _flat(k), _flat(v)
    batch_heads, n_q, head_dim = q3.shape
    n_k = k3.shape[1]
    window = _window(causal, window, n_k)
    o3 = output.reshape(batch_heads, n_q, head_dim).contiguous()  # (batch_head, n_q, d)
    do3 = grad_output.to(q.dtype).reshape(batch_heads, n_q, head_dim).contiguous()  # (batch_head, n_q, d)
    lse2 = lse.float().reshape(batch_heads, n_q).contiguous()  # (batch_head, n_q)
    delta = torch.empty_like(lse2)  # (batch_head, n_q)
    dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
    precision = _precision(q3.dtype)

    # Pass 0: delta = rowsum(dO * O), needed by every dS in both passes below.
    preprocess_block = 64
    _backward_preprocess_kernel[(triton.cdiv(n_q, preprocess_block), batch_heads)](
        o3, do3, delta, o3.stride(0), o3.stride(1), do3.stride(0), do3.stride(1), n_q,
        HEAD_DIM=head_dim, BLOCK_Q=preprocess_block,
    )
    # Pass 1: one program per key block writes dk and dv. Pass 2: one program per query block writes dq.
    # Splitting them means every program owns its output rows: no atomics, no races.
    kernel, meta = _kernel("dk_dv", _backward_dk_dv_kernel, _DK_DV_BLOCKS, block_q, block_k)
    grid = lambda chosen: (triton.cdiv(n_k, chosen["BLOCK_K"]), batch_heads // group)  # noqa: E731
    kernel[grid](
        q3, k3, v3, do3, lse2, delta, dk, dv,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        do3.stride(0), do3.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        n_q, n_k, group, window, scale * LOG2E, scale,
        CAUSAL=causal, HEAD_DIM=head_dim, PRECISION=precision, **meta,
    )
    kernel, meta = _kernel("dq", _backward_dq_kernel, _DQ_BLOCKS, block_q, block_k)
    grid = lambda chosen: (triton.cdiv(n_q, chosen["BLOCK_Q"]), batch_heads)  # noqa: E731
    kernel[grid](
        q3, k3, v3, do3, lse2, delta, dq,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        do3.stride(0), do3.stride(1), dq.stride(0), dq.stride(1),
        n_q, n_k, group, window, scale * LOG2E, scale,
        CAUSAL=causal, HEAD_DIM=head_dim, PRECISION=precision, **meta,
    )
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def _precision(dtype) -> str:
    # float32 inputs: full-precision products (TF32 would cost three decimal digits). Half precision inputs use
    # the tensor cores natively whatever this says.
    return "ieee" if dtype == torch.float32 else "tf32"
