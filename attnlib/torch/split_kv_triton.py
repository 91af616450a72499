"""The split-KV decode kernel (Flash-Decoding) in Triton: one program per (batch · head, chunk of keys).

``attnlib.torch.split_kv_attention(..., backend="triton")`` calls :func:`partials`. Its kernel is the algorithm of
``attnlib.numpy.split_kv`` written for a GPU grid:

* grid axis 0 picks one (batch, head) pair, grid axis 1 one of the ``n_splits`` chunks of its keys -- the same
  balanced cut as ``attnlib.occupancy.split_bounds``, chunk s starting at ``s * n_k // n_splits``;
* the program loads its few queries once, walks its chunk ``BLOCK_K`` keys at a time with the very tile step of
  the FlashAttention forward kernel (``attnlib.torch.flash_triton._forward_step``), keeping the online-softmax
  state ``m``, ``l`` and the unnormalised ``acc`` in registers;
* it writes that state -- not a normalised output -- for its chunk. The merge over the chunks is a few torch
  operations on a tensor of size (batch · heads, n_splits, n_q, d), done by the caller.

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
    # last tile of the chunk, the tile step masks; the tile step masks keys >= its n_k, here the chunk's end.
    offset = n_k - n_q
    end_full = end_k
    if CAUSAL:
        end_full = tl.minimum(end_k, offset + 1)
    end_full = start_k + tl.maximum(end_full - start_k, 0) // BLOCK_K * BLOCK_K  # whole tiles only

    # 1) Tiles that every query sees in full: no mask.
    for tile_start in range(start_k, end_full, BLOCK_K):
        m, l, acc = flash_triton._forward_step(
            q, m, l, acc, K, V, stride_k_n, stride_v_n, tile_start, offs_q, end_k, offset, qk_scale,
            CAUSAL, False, HEAD_DIM, BLOCK_K, PRECISION,
        )
    # 2) The chunk's ragged end and, causal, the keys some queries must not see: masked.
    for tile_start in range(end_full, end_k, BLOCK_K):
        m, l, acc = flash_triton._forward_step(
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
        PRECISION=flash_triton._precision(q3.dtype),
    )
    parts = tuple(batch_shape) + (n_splits, n_q)
    # The kernel keeps base-2 scores (exp2 is the native instruction); m * ln 2 is the natural-log maximum.
    return (m * LN2).reshape(parts), l.reshape(parts), acc.reshape(parts + (head_dim,))
