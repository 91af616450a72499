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

from .. import _checks

# Same defaults as the NumPy version (timed on a CPU, see benchmarks/bench_flash_cpu.py).
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 1024
BACKENDS = ("auto", "torch", "triton")


def _tile_causal_mask(q_start, q_end, k_start, k_end, offset, device) -> torch.Tensor:
    """(rows, cols) boolean, True where query q_start + r may attend key k_start + c (bottom-right aligned)."""
    query_positions = torch.arange(q_start, q_end, device=device)[:, None] + offset
    return torch.arange(k_start, k_end, device=device)[None, :] <= query_positions


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 inputs are accumulated in float32 (m, l and acc need the range and precision)."""
    return torch.promote_types(dtype, torch.float32)


def forward_tiled(q, k, v, causal: bool, scale: float, block_q: int, block_k: int):
    """Tiled forward in plain torch ops -> (output (..., n_q, d_v), lse (..., n_q)). Inputs already validated."""
    n_q, n_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    offset = n_k - n_q  # query row r sits at absolute position r + offset
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    dtype = _compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    output = torch.empty(batch_shape + (n_q, d_v), dtype=dtype, device=q.device)
    lse = torch.empty(batch_shape + (n_q,), dtype=dtype, device=q.device)

    for q_start in range(0, n_q, block_q):
        q_end = min(q_start + block_q, n_q)
        rows = q_end - q_start
        q_block = q[..., q_start:q_end, :] * scale  # (..., rows, d_k)
        m = torch.full(batch_shape + (rows,), float("-inf"), dtype=dtype, device=q.device)
        l = torch.zeros(batch_shape + (rows,), dtype=dtype, device=q.device)
        acc = torch.zeros(batch_shape + (rows, d_v), dtype=dtype, device=q.device)
        key_stop = min(n_k, q_end + offset) if causal else n_k  # later key blocks are masked for every row

        for k_start in range(0, key_stop, block_k):
            k_end = min(k_start + block_k, n_k)
            scores = q_block @ k[..., k_start:k_end, :].transpose(-1, -2)  # (..., rows, cols)
            if causal and k_end - 1 > q_start + offset:  # the tile crosses the diagonal
                allowed = _tile_causal_mask(q_start, q_end, k_start, k_end, offset, q.device)
                scores.masked_fill_(~allowed, float("-inf"))
            m_new = torch.maximum(m, scores.amax(dim=-1))  # finite: key 0 is visible to every row
            rescale = torch.exp(m - m_new)  # (..., rows)
            p = torch.exp(scores.sub_(m_new[..., None]))  # (..., rows, cols), unnormalised probabilities
            l = rescale * l + p.sum(dim=-1)
            acc = acc * rescale[..., None] + p @ v[..., k_start:k_end, :]
            m = m_new

        output[..., q_start:q_end, :] = acc / l[..., None]  # the one division by l
        lse[..., q_start:q_end] = m + torch.log(l)
    return output, lse


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
    scale, block_q, block_k = _validate(q, k, v, causal, scale, block_q, block_k)
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    output_shape = tuple(batch_shape) + (q.shape[-2], v.shape[-1])
    for name, x, expected in (
        ("output", output, output_shape), ("grad_output", grad_output, output_shape), ("lse", lse, output_shape[:-1])
    ):
        _checks.floating_array(name, x, min_ndim=1)
        if tuple(x.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
                f"got {tuple(x.shape)}"
            )
    grads = backward_tiled(q, k, v, output, lse, grad_output, causal, scale, block_q, block_k)
    return tuple(grad.to(x.dtype) for grad, x in zip(grads, (q, k, v), strict=True))


def _validate(q, k, v, causal, scale, block_q, block_k):
    """Check the inputs; return the scale (default 1/sqrt(d_k)) and the block sizes (None stays None)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _checks.qkv(q, k, v)
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    scale = _checks.scale(scale)
    block_q = None if block_q is None else _checks.positive_int("block_q", block_q)
    block_k = None if block_k is None else _checks.positive_int("block_k", block_k)
    if causal and k.shape[-2] < q.shape[-2]:
        raise ValueError(f"causal attention needs n_k >= n_q, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return float(scale), block_q, block_k


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
        and q.shape[-1] == v.shape[-1]
        and q.shape[-1] in flash_triton.HEAD_DIMS
    )


def _resolve_backend(backend: str, q, k, v) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if _triton_can_run(q, k, v) else "torch"
    return backend


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
    """
    scale, block_q, block_k = _validate(q, k, v, causal, scale, block_q, block_k)
    backend = _resolve_backend(backend, q, k, v)
    if backend == "torch":  # the triton kernel checks its own tiles (powers of two >= 16); None = its choice
        block_q = DEFAULT_BLOCK_Q if block_q is None else block_q
        block_k = DEFAULT_BLOCK_K if block_k is None else block_k
    output, lse = _FlashAttention.apply(q, k, v, bool(causal), scale, backend, block_q, block_k)
    if return_lse:
        return output, lse.reshape(output.shape[:-1])  # (..., n_q)
    return output
