"""The split-KV decode kernel (Flash-Decoding) in Triton: one program per (batch · head, chunk of keys).

``attnlib.torch.split_kv_attention(..., backend="triton")`` calls :func:`partials`. Its kernel is the algorithm of
``attnlib.numpy.split_kv`` written for a GPU grid:

* grid axis 0 picks one (batch, head) pair, grid axis 1 one of the ``n_splits`` chunks of its keys -- the same
  balanced cut as ``attnlib.occupancy.split_bounds``, chunk s starting at ``s * n_k // n_splits``;
* the program loads its few queries once and walks its chunk ``BLOCK_K`` keys at a time, keeping the
  online-softmax state ``m``, ``l`` and the unnormalised ``acc`` in registers -- the tile step of the FlashAttention
  forward kernel (``attnlib.torch.flash_triton``), whose query block is here the handful of decoding queries;
* it writes that state -- not a normalised output -- for its chunk. The merge over the chunks is a few torch
  operations on a tensor of size (batch · heads, n_splits, n_q, d), done by the caller.

A second kernel, for :func:`paged_partials`, is the same program reading a ``PagedKVCache``: its chunk is a run
of the sequence's blocks, and before each block it looks up in the block table where that block lies in the pool.

The queries of a program are padded to a block of at least 16 rows (``tl.dot`` needs 16), so the kernel is for
decoding: at most ``MAX_QUERIES`` queries; longer query blocks belong to ``flash_attention``. There is no backward
kernel: the decode path is for inference, and a call that would need gradients is refused.

On a CUDA device the kernel is compiled. Without one it runs under Triton's interpreter when ``TRITON_INTERPRET=1``
was set before triton was first imported (see ``attnlib.torch.flash_triton``), in float32 or float16.
"""

from __future__ import annotations

import torch

from . import flash_triton
from .flash_triton import LN2, LOG2E, tl, triton

MAX_QUERIES = 64  # queries per (batch, head) that one program holds in registers
BLOCK_K_COMPILED = 64  # keys per tile step on a GPU: fixed (no autotuning) so that the kernel reads plainly
BLOCK_K_INTERPRETED = 16  # under the interpreter, a small tile keeps the NumPy work per step small


@triton.jit
def _chunk_step(
    q, m, l, acc, K, V, stride_k_n, stride_v_n, tile_start, offs_q, end_k, offset, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Fold keys tile_start .. tile_start + BLOCK_K - 1 of the chunk (ending at end_k) into (m, l, acc)."""
    offs_k = tile_start + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = K + offs_k[:, None] * stride_k_n + offs_d[None, :]
    v_ptrs = V + offs_k[:, None] * stride_v_n + offs_d[None, :]
    if MASKED:  # the tile may run past the chunk: read zeros there, the next chunk's keys are not ours
        k = tl.load(k_ptrs, mask=offs_k[:, None] < end_k, other=0.0)  # (block_k, d)
        v = tl.load(v_ptrs, mask=offs_k[:, None] < end_k, other=0.0)  # (block_k, d)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)

    # Base-2 scores: qk_scale = scale * log2(e), so exp2 below is exp of the real scores (exp2 is the GPU's own).
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (block_q, block_k)
    if MASKED:
        visible = offs_k[None, :] < end_k
        if CAUSAL:
            visible = visible & (offs_k[None, :] <= offs_q[:, None] + offset)  # bottom-right aligned
        s = tl.where(visible, s, float("-inf"))  # -inf: exactly zero weight

    # The online-softmax update: a larger maximum shrinks what was summed so far by rescale = 2^(m_old - m_new).
    m_new = tl.maximum(m, tl.max(s, 1))  # (block_q,)
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # a query that saw only -inf: shift by 0, not by -inf
    rescale = tl.exp2(m - m_shift)  # (block_q,)
    p = tl.exp2(s - m_shift[:, None])  # (block_q, block_k): unnormalised weights, all <= 1
    l = l * rescale + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * rescale[:, None], input_precision=PRECISION)  # acc = acc·rescale + p @ v
    return m_new, l, acc


@triton.jit
def _split_kv_kernel(
    Q, K, V, Acc, M, L,
    stride_q_bh, stride_q_n, stride_k_bh, stride_k_n, stride_v_bh, stride_v_n,
    n_q, n_k, n_splits, qk_scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = the n_q queries of one (batch, head) against one chunk of its keys."""
    batch_head = tl.program_id(0).to(tl.int64)  # int64: batch_head * stride can pass 2^31 on big caches
    split = tl.program_id(1).to(tl.int64)
    # The chunk: keys start_k .. end_k - 1, cut as attnlib.occupancy.split_bounds cuts them.
    start_k = (split * n_k // n_splits).to(tl.int32)
    end_k = ((split + 1) * n_k // n_splits).to(tl.int32)
    Q += batch_head * stride_q_bh
    K += batch_head * stride_k_bh
    V += batch_head * stride_v_bh

    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, HEAD_DIM)
    # The queries are read once and stay in registers; rows past n_q read zeros and are never stored.
    q = tl.load(Q + offs_q[:, None] * stride_q_n + offs_d[None, :], mask=offs_q[:, None] < n_q, other=0.0)

    m = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)  # running maximum of the base-2 scores
    l = tl.zeros([BLOCK_Q], dtype=tl.float32)  # running sum of exp2(score - m)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)  # running sum of exp2(score - m) * v

    # Which tiles need a mask? Causal attention is aligned bottom-right: query i sees keys j <= i + offset, so
    # every query sees the keys before offset + 1 (those the first query sees). Beyond them, and in the ragged
    # last tile of the chunk, the tile step masks.
    offset = n_k - n_q
    end_full = end_k
    if CAUSAL:
        end_full = tl.minimum(end_k, offset + 1)
    end_full = start_k + tl.maximum(end_full - start_k, 0) // BLOCK_K * BLOCK_K  # whole tiles only

    # 1) Tiles that every query sees in full: no mask.
    for tile_start in range(start_k, end_full, BLOCK_K):
        m, l, acc = _chunk_step(
            q, m, l, acc, K, V, stride_k_n, stride_v_n, tile_start, offs_q, end_k, offset, qk_scale,
            CAUSAL, False, HEAD_DIM, BLOCK_K, PRECISION,
        )
    # 2) The chunk's ragged end and, causal, the keys some queries must not see: masked.
    for tile_start in range(end_full, end_k, BLOCK_K):
        m, l, acc = _chunk_step(
            q, m, l, acc, K, V, stride_k_n, stride_v_n, tile_start, offs_q, end_k, offset, qk_scale,
            CAUSAL, True, HEAD_DIM, BLOCK_K, PRECISION,
        )

    # Write the chunk's state, unnormalised: the merge needs m, l and acc, and divides once at the very end.
    # Layouts: Acc (batch_head, n_splits, n_q, HEAD_DIM), M and L (batch_head, n_splits, n_q), contiguous.
    row = (batch_head * n_splits + split) * n_q + offs_q  # (BLOCK_Q,): this chunk's rows
    in_range = offs_q < n_q
    tl.store(Acc + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=in_range[:, None])
    tl.store(M + row, m, mask=in_range)
    tl.store(L + row, l, mask=in_range)


def _precision(dtype) -> str:
    # float32: full-precision products (TF32 would cost three decimal digits); half precision uses the tensor
    # cores natively whatever this says.
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_q(n_q: int) -> int:
    """The query rows a program holds: n_q rounded up to a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(n_q))


def check_supported(q, k, v) -> None:
    """Refuse, by name, what the decode kernel cannot compute correctly (arguments already checked as attention's).

    The dtype, head-dimension and device rules are the FlashAttention kernel's (``flash_triton.check_supported``);
    on top of them, at most ``MAX_QUERIES`` queries, and no gradients.
    """
    flash_triton.check_supported(q, k, v, None, None)
    if q.shape[-2] > MAX_QUERIES:
        raise ValueError(
            f"backend='triton' decodes at most {MAX_QUERIES} queries per (batch, head), got n_q = {q.shape[-2]} "
            f"(q {tuple(q.shape)}): use flash_attention for long query blocks, or backend='torch'"
        )
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise ValueError(
            "backend='triton' of split_kv_attention has no backward pass (decoding is inference): call it under "
            "torch.no_grad(), detach q, k and v, or use backend='torch'"
        )


def can_run(q, k, v) -> bool:
    """Whether ``backend="auto"`` should pick the kernel for these (checked) arguments."""
    try:
        check_supported(q, k, v)
    except (ImportError, TypeError, ValueError):
        return False
    return True


def _flat(x: torch.Tensor, batch_shape) -> torch.Tensor:
    """(..., n, d) -> (batch_head, n, d), contiguous, batch dims broadcast to ``batch_shape``."""
    x = x.expand(tuple(batch_shape) + x.shape[-2:])
    return x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous()  # (batch_head, n, d)


def partials(q, k, v, n_splits: int, causal: bool, scale: float):
    """Each chunk's online-softmax state from the kernel -> (m, l, acc), float32.

    m and l are (..., n_splits, n_q), acc (..., n_splits, n_q, d); m is in natural-log units like the NumPy
    reference's. The arguments come checked from ``attnlib.torch.split_kv_attention`` (with ``check_supported``).
    """
    assert q.dtype == k.dtype == v.dtype and 1 <= n_splits <= k.shape[-2], "unchecked arguments"
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q3, k3, v3 = (_flat(x, batch_shape) for x in (q, k, v))
    batch_heads, n_q, head_dim = q3.shape
    n_k = k3.shape[1]
    acc = torch.empty((batch_heads, n_splits, n_q, head_dim), device=q.device, dtype=torch.float32)
    m = torch.empty((batch_heads, n_splits, n_q), device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)  # (batch_head, n_splits, n_q)

    block_k = BLOCK_K_INTERPRETED if flash_triton.interpreted() else BLOCK_K_COMPILED
    _split_kv_kernel[(batch_heads, n_splits)](
        q3, k3, v3, acc, m, l,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        n_q, n_k, n_splits, scale * LOG2E,
        CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_Q=_block_q(n_q), BLOCK_K=block_k,
        PRECISION=_precision(q3.dtype),
    )
    parts = tuple(batch_shape) + (n_splits, n_q)
    # The kernel keeps base-2 scores (exp2 is the native instruction); m * ln 2 is the natural-log maximum.
    return (m * LN2).reshape(parts), l.reshape(parts), acc.reshape(parts + (head_dim,))


# --------------------------------------------------------------------------------------------------------------
# The same decode, reading the keys and values through a paged cache's block tables
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _paged_split_kv_kernel(
    Q, KeyPool, ValuePool, Tables, Lengths, Acc, M, L,
    stride_q_seq, stride_q_head, stride_q_n, stride_pool_block, stride_pool_head, stride_table_seq,
    n_heads, n_q, n_splits, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program = the n_q queries of one (sequence, head) against one chunk of that sequence's blocks."""
    seq_head = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    seq, head = seq_head // n_heads, seq_head % n_heads
    length = tl.load(Lengths + seq)  # positions this sequence holds; its queries are the last n_q of them
    n_blocks = tl.cdiv(length, BLOCK_SIZE)
    # The chunk: the sequence's logical blocks first_block .. end_block - 1 (none when it has fewer than n_splits).
    first_block = (split * n_blocks // n_splits).to(tl.int32)
    end_block = ((split + 1) * n_blocks // n_splits).to(tl.int32)

    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + seq * stride_q_seq + head * stride_q_head + offs_q[:, None] * stride_q_n + offs_d[None, :],
                mask=offs_q[:, None] < n_q, other=0.0)
    m = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)

    for block in range(first_block, end_block):
        # The block table says where logical block `block` lies in the pool: the only change paging makes.
        physical = tl.load(Tables + seq * stride_table_seq + block).to(tl.int64)
        block_start = block * BLOCK_SIZE  # the position of the block's first key in the sequence
        m, l, acc = _chunk_step(
            q, m, l, acc,
            KeyPool + physical * stride_pool_block + head * stride_pool_head,
            ValuePool + physical * stride_pool_block + head * stride_pool_head,
            HEAD_DIM, HEAD_DIM, 0, offs_q,
            length - block_start,  # keys of the block past the sequence's end are masked
            length - n_q - block_start,  # causal, bottom-right aligned, counted from the block's first key
            qk_scale, True, True, HEAD_DIM, BLOCK_SIZE, PRECISION,
        )

    row = (seq_head * n_splits + split) * n_q + offs_q  # (BLOCK_Q,): this chunk's rows
    in_range = offs_q < n_q
    tl.store(Acc + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=in_range[:, None])
    tl.store(M + row, m, mask=in_range)
    tl.store(L + row, l, mask=in_range)


def check_supported_paged(q, cache) -> None:
    """Refuse, by name, what the paged decode kernel cannot compute correctly (arguments already checked)."""
    pool = cache.key_pool
    flash_triton.check_supported(q, pool[0, 0], pool[0, 0], None, None)  # dtype, head dimension, device
    if q.shape[-2] > MAX_QUERIES:
        raise ValueError(f"backend='triton' decodes at most {MAX_QUERIES} queries per (sequence, head), got "
                         f"n_q = {q.shape[-2]}: use backend='torch'")
    block_size = cache.block_size
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"backend='triton' reads a block as one tile, so the cache's block_size must be a power of "
                         f"two >= 16 (tl.dot needs 16), got block_size={block_size}: use backend='torch'")
    if torch.is_grad_enabled() and q.requires_grad:
        raise ValueError("backend='triton' of paged_attention has no backward pass (decoding is inference): call it "
                         "under torch.no_grad(), detach q, or use backend='torch'")


def can_run_paged(q, cache) -> bool:
    """Whether ``backend="auto"`` should pick the paged kernel."""
    try:
        check_supported_paged(q, cache)
    except (ImportError, TypeError, ValueError):
        return False
    return True


def paged_partials(q, cache, seqs, layer: int, n_splits: int, scale: float):
    """Each chunk's state from the paged kernel -> (m, l, acc), float32, shaped (S, H, n_splits, n_q[, d]).

    The block tables of ``seqs`` are padded into one (S, max blocks) int32 tensor for the kernel; every program
    reads only the blocks its sequence owns. Arguments come checked from ``attnlib.torch.paged_attention``.
    """
    n_seqs, n_heads, n_q, head_dim = q.shape
    tables = [cache.block_table(seq) for seq in seqs]
    width = max(1, max(len(table) for table in tables))
    padded = torch.zeros((n_seqs, width), dtype=torch.int32)  # (S, max blocks): unused entries are never read
    for index, table in enumerate(tables):
        padded[index, :len(table)] = torch.tensor(table, dtype=torch.int32)
    lengths = torch.tensor([cache.length(seq) for seq in seqs], dtype=torch.int32, device=q.device)  # (S,)
    padded = padded.to(q.device)
    q4 = q.contiguous()  # (S, H, n_q, d)
    key_pool, value_pool = cache.key_pool[layer], cache.value_pool[layer]  # (n_blocks, H, block_size, d)
    acc = torch.empty((n_seqs * n_heads, n_splits, n_q, head_dim), device=q.device, dtype=torch.float32)
    m = torch.empty((n_seqs * n_heads, n_splits, n_q), device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    _paged_split_kv_kernel[(n_seqs * n_heads, n_splits)](
        q4, key_pool, value_pool, padded, lengths, acc, m, l,
        q4.stride(0), q4.stride(1), q4.stride(2), key_pool.stride(0), key_pool.stride(1), padded.stride(0),
        n_heads, n_q, n_splits, scale * LOG2E,
        HEAD_DIM=head_dim, BLOCK_Q=_block_q(n_q), BLOCK_SIZE=cache.block_size, PRECISION=_precision(q4.dtype),
    )
    parts = (n_seqs, n_heads, n_splits, n_q)
    return (m * LN2).reshape(parts), l.reshape(parts), acc.reshape(parts + (head_dim,))
