"""FlashAttention for torch tensors, as a ``torch.autograd.Function`` with two interchangeable backends.

* ``backend="torch"``: the tiled algorithm of ``attnlib.numpy.flash_attention`` in plain torch ops (any device).
  Forward keeps the online-softmax state (``m``, ``l``) and the unnormalised ``acc`` per query block and saves
  only the row log-sum-exp ``lse``; backward rebuilds each tile's probabilities from ``lse``.
* ``backend="triton"``: the fused GPU kernel in ``attnlib.torch.flash_triton`` (imported only when asked for,
  so attnlib works without triton).
* ``backend="auto"``: triton for CUDA tensors when triton is importable, otherwise torch.

Neither backend stores an n_q x n_k matrix; autograd saves q, k, v, the output and ``lse``.
"""

from __future__ import annotations

import math

import torch

from .. import _checks, _settings, tiling
from .online_softmax import rescale_factor

# Same defaults as the NumPy version (timed on a CPU, see benchmarks/bench_flash_cpu.py).
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 1024
BACKENDS = ("auto", "torch", "triton")


def _tile_causal_mask(q_start, q_end, k_start, k_end, offset, device) -> torch.Tensor:
    """``tiling.causal_visible`` as a tensor on ``device``."""
    return torch.from_numpy(tiling.causal_visible(q_start, q_end, k_start, k_end, offset)).to(device)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 inputs are accumulated in float32 (m, l and acc need the range and precision)."""
    return torch.promote_types(dtype, torch.float32)


def flash_step(q_block, k_block, v_block, m, l, acc, visible=None):
    """Fold one block of keys and values into the running state (m, l, acc) of one block of queries.

    The twin of ``attnlib.numpy.flash_step``: q_block (..., rows, d_k) already times ``scale``; returns the new
    (m, l, acc) and the ``rescale`` factor exp(m_old - m_new) applied to the old l and acc. Pure.
    """
    s = q_block @ k_block.transpose(-1, -2)  # (..., rows, cols): this tile of scores
    if visible is not None:
        s = torch.where(visible, s, float("-inf"))  # masked: exactly zero weight after exp
    m_new = torch.maximum(m, s.amax(dim=-1))  # (..., rows): the running maximum
    rescale = rescale_factor(m, m_new)  # exp(m - m_new), 1 while a row has seen nothing but -inf
    p = torch.exp(s - _finite(m_new)[..., None])  # (..., rows, cols): unnormalised probabilities, all <= 1
    l_new = rescale * l + p.sum(dim=-1)
    acc_new = rescale[..., None] * acc + p @ v_block  # (..., rows, d_v)
    return m_new, l_new, acc_new, rescale


def _finite(m):
    """The shift for exp: m itself, or 0 where m is still -inf (then every score is -inf and exp gives 0, not NaN)."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def forward_tiled(q, k, v, causal: bool, scale: float, block_q: int, block_k: int):
    """Tiled forward in plain torch ops -> (output (..., n_q, d_v), lse (..., n_q)). Inputs already validated."""
    n_q, n_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    dtype = _compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    output = torch.empty(batch_shape + (n_q, d_v), dtype=dtype, device=q.device)
    lse = torch.empty(batch_shape + (n_q,), dtype=dtype, device=q.device)

    for q_start, q_end in tiling.query_blocks(n_q, block_q):
        q_block = q[..., q_start:q_end, :] * scale  # (..., rows, d_k): scale q once, not every tile
        m = torch.full(batch_shape + (q_end - q_start,), float("-inf"), dtype=dtype, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(batch_shape + (q_end - q_start, d_v), dtype=dtype, device=q.device)
        for tile in tiling.key_tiles(q_start, q_end, n_q, n_k, block_k, causal):
            visible = None
            if causal and tile.kind == tiling.MASKED:  # the tile crosses the diagonal: hide the future
                visible = _tile_causal_mask(q_start, q_end, tile.k_start, tile.k_end, n_k - n_q, q.device)
            keys = slice(tile.k_start, tile.k_end)
            m, l, acc, _ = flash_step(q_block, k[..., keys, :], v[..., keys, :], m, l, acc, visible)
        output[..., q_start:q_end, :] = acc / torch.where(l > 0, l, torch.ones_like(l))[..., None]  # one division
        lse[..., q_start:q_end] = m + torch.log(l)
    return output, lse


def _check_result(output, lse) -> None:
    """The overflow policy of ``attention``, applied to what a tiled pass returns (both backends)."""
    if not _settings.finite_checks():
        return
    if not bool(torch.isfinite(output).all()) or bool(torch.isnan(lse).any() | torch.isposinf(lse).any()):
        raise _checks.scores_overflowed(output.dtype)
    if bool(torch.isneginf(lse).any()):  # l = 0: every score of an unmasked row fell to -inf
        raise _checks.scores_underflowed(output.dtype, int(torch.isneginf(lse).sum()))


def backward_tiled(q, k, v, output, lse, grad_output, causal: bool, scale: float, block_q: int, block_k: int):
    """Tiled backward in plain torch ops -> (dq, dk, dv) with the shapes of q, k, v. Inputs already validated.

    Outer loop over key blocks (accumulating dk, dv), inner over query blocks (adding to dq); each tile's
    probabilities are rebuilt as exp(scores - lse); dS = P * (dP - D) with D = rowsum(dO * O).
    """
    n_q, n_k = q.shape[-2], k.shape[-2]
    offset = n_k - n_q
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    dtype = _compute_dtype(q.dtype)
    shapes = (q.shape, k.shape, v.shape)
    q, k, v = (x.to(dtype).expand(batch_shape + x.shape[-2:]) for x in (q, k, v))  # views, no copies
    output, lse, grad_output = output.to(dtype), lse.to(dtype), grad_output.to(dtype)
    delta = (grad_output * output).sum(dim=-1)  # (..., n_q)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    for k_start in range(0, n_k, block_k):
        k_end = min(k_start + block_k, n_k)
        k_block, v_block = k[..., k_start:k_end, :], v[..., k_start:k_end, :]  # (..., cols, d)
        dk_block, dv_block = torch.zeros_like(k_block), torch.zeros_like(v_block)
        first_row = max(0, k_start - offset) if causal else 0  # earlier rows see none of these keys
        for q_start in range((first_row // block_q) * block_q, n_q, block_q):
            q_end = min(q_start + block_q, n_q)
            q_block = q[..., q_start:q_end, :] * scale  # (..., rows, d_k)
            do_block = grad_output[..., q_start:q_end, :]  # (..., rows, d_v)
            scores = q_block @ k_block.transpose(-1, -2)  # (..., rows, cols)
            if causal and k_end - 1 > q_start + offset:
                allowed = _tile_causal_mask(q_start, q_end, k_start, k_end, offset, q.device)
                scores.masked_fill_(~allowed, float("-inf"))
            p = torch.exp(scores.sub_(lse[..., q_start:q_end, None]))  # this tile's probabilities
            dv_block += p.transpose(-1, -2) @ do_block
            dp = do_block @ v_block.transpose(-1, -2)  # (..., rows, cols)
            ds = p * (dp - delta[..., q_start:q_end, None])
            dq[..., q_start:q_end, :] += scale * (ds @ k_block)
            dk_block += ds.transpose(-1, -2) @ q_block  # q_block already carries the scale
        dk[..., k_start:k_end, :] = dk_block
        dv[..., k_start:k_end, :] = dv_block

    # Undo broadcasting: sum each gradient back to its input's shape.
    return tuple(grad.sum_to_size(shape) for grad, shape in zip((dq, dk, dv), shapes, strict=True))


def flash_attention_backward(
    q, k, v, output, lse, grad_output, *, causal=False, scale=None, block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K
):
    """(dq, dk, dv) of ``flash_attention`` from the saved output and ``lse`` (torch twin of the NumPy function)."""
    block_q = DEFAULT_BLOCK_Q if block_q is None else block_q
    block_k = DEFAULT_BLOCK_K if block_k is None else block_k
    causal, scale, block_q, block_k = _validate(q, k, v, causal, scale, block_q, block_k)
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    output_shape = tuple(batch_shape) + (q.shape[-2], v.shape[-1])
    for name, x, expected in (
        ("output", output, output_shape), ("grad_output", grad_output, output_shape), ("lse", lse, output_shape[:-1])
    ):
        _checks.floating_array(name, _checks.torch_tensor(name, x), min_ndim=1, finite=name != "lse")
        if tuple(x.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
                f"got {tuple(x.shape)}"
            )
    grads = backward_tiled(q, k, v, output, lse, grad_output, causal, scale, block_q, block_k)
    return tuple(grad.to(x.dtype) for grad, x in zip(grads, (q, k, v), strict=True))


def _validate(q, k, v, causal, scale, block_q, block_k):
    """Check the inputs; return causal, the scale (default 1/sqrt(d_k)) and the block sizes (None stays None)."""
    q, k, v = (_checks.torch_tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v)
    scale = _checks.scale(scale)
    block_q = None if block_q is None else _checks.positive_int("block_q", block_q)
    block_k = None if block_k is None else _checks.positive_int("block_k", block_k)
    causal = _checks.causal_fits(causal, q.shape[-2], k.shape[-2], f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return causal, float(scale), block_q, block_k


def _triton_module():
    from . import flash_triton  # lazy: the kernel module is only loaded when a triton backend is asked for

    return flash_triton


def _triton_can_run(q, k, v) -> bool:
    """Whether "auto" should pick the kernel: CUDA tensors, triton installed, and a dtype/head size it supports."""
    if not q.is_cuda:
        return False
    flash_triton = _triton_module()
    return (
        flash_triton.available()
        and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and q.shape[-1] == k.shape[-1] == v.shape[-1]
        and q.shape[-1] in flash_triton.HEAD_DIMS
    )


def _resolve_backend(backend, q, k, v, block_q, block_k):
    """The backend to run and its block sizes; an explicit "triton" is refused by name where it cannot run right."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if _triton_can_run(q, k, v) else "torch"
    if backend == "triton":
        return backend, *_triton_module().check_supported(q, k, v, block_q, block_k)
    return backend, DEFAULT_BLOCK_Q if block_q is None else block_q, DEFAULT_BLOCK_K if block_k is None else block_k


def _as_four_dims(x: torch.Tensor, batch_shape) -> torch.Tensor:
    """(..., n, d) -> (B, H, n, d), the layout the Triton kernel takes; batch dims broadcast to batch_shape."""
    x = x.expand(tuple(batch_shape) + x.shape[-2:])
    if x.ndim < 4:
        x = x.reshape((-1, 1) + x.shape[-2:])  # (B, 1, n, d)
    elif x.ndim > 4:
        x = x.reshape((-1,) + x.shape[-3:])  # (B, H, n, d): all leading dims folded into B
    return x.contiguous()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, backend, block_q, block_k):
        if backend == "triton":
            batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
            q4, k4, v4 = (_as_four_dims(x, batch_shape) for x in (q, k, v))
            output4, lse = _triton_module().forward(q4, k4, v4, causal, scale, block_q=block_q, block_k=block_k)
            output = output4.reshape(tuple(batch_shape) + output4.shape[-2:])
        else:
            output, lse = forward_tiled(q, k, v, causal, scale, block_q, block_k)
            output = output.to(q.dtype)
        _check_result(output, lse)
        ctx.save_for_backward(q, k, v, output, lse)
        ctx.settings = (causal, scale, backend, block_q, block_k)
        ctx.mark_non_differentiable(lse)
        return output, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, _grad_lse):
        q, k, v, output, lse = ctx.saved_tensors
        causal, scale, backend, block_q, block_k = ctx.settings
        if backend == "triton":
            batch_shape = output.shape[:-2]
            q4, k4, v4, output4, grad4 = (_as_four_dims(x, batch_shape) for x in (q, k, v, output, grad_output))
            dq4, dk4, dv4 = _triton_module().backward(
                q4, k4, v4, output4, lse, grad4, causal, scale, block_q=block_q, block_k=block_k
            )
            grads = [g.reshape(tuple(batch_shape) + g.shape[-2:]) for g in (dq4, dk4, dv4)]
            return tuple(g.sum_to_size(x.shape) for g, x in zip(grads, (q, k, v), strict=True)) + (None,) * 5
        dq, dk, dv = backward_tiled(q, k, v, output, lse, grad_output, causal, scale, block_q, block_k)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def flash_attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: str = "auto",
    block_q: int | None = None,
    block_k: int | None = None,
    return_lse: bool = False,
):
    """softmax(q k^T * scale) v without an n_q x n_k matrix; differentiable (q, k, v all get gradients).

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v); batch dims broadcast.
    ``causal`` is bottom-right aligned as in ``attention``. ``backend``: "torch" (tiled, plain torch ops, any
    device), "triton" (the fused CUDA kernel) or "auto" (triton on CUDA when available, else torch).
    ``block_q``/``block_k`` set the tile (None: 128 x 1024 for torch, the kernel's own choice for triton, which
    needs powers of two >= 16). With ``return_lse`` also returns the row log-sum-exp (..., n_q), not differentiable.
    Scores that overflow raise ``OverflowError``, as in ``attention``; what a backend cannot compute correctly
    (e.g. bfloat16 under Triton's CPU interpreter) is refused by name instead of returning garbage.
    """
    causal, scale, block_q, block_k = _validate(q, k, v, causal, scale, block_q, block_k)
    return_lse = _checks.flag("return_lse", return_lse)
    backend, block_q, block_k = _resolve_backend(backend, q, k, v, block_q, block_k)
    output, lse = _FlashAttention.apply(q, k, v, causal, scale, backend, block_q, block_k)
    if return_lse:
        return output, lse.reshape(output.shape[:-1])  # (..., n_q)
    return output
