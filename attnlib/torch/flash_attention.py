"""FlashAttention for torch tensors, as a ``torch.autograd.Function`` with two interchangeable backends.

* ``backend="torch"``: the tiled algorithm of ``attnlib.numpy.flash_attention`` in plain torch ops (any device).
  Forward keeps the online-softmax state (``m``, ``l``) and the unnormalised ``acc`` per query block and saves
  only the row log-sum-exp ``lse``; backward rebuilds each tile's probabilities from ``lse``.
* ``backend="triton"``: the fused GPU kernel in ``attnlib.torch.flash_triton`` (imported only when asked for,
  so attnlib works without triton).
* ``backend="auto"``: triton for CUDA tensors when triton is importable, otherwise torch.

Neither backend stores an n_q x n_k matrix; autograd saves q, k, v, the output and ``lse``. A sliding ``window``
skips the key blocks outside every window of a query block, in both backends. Grouped key/value heads are never
copied: the torch backend views q (..., n_heads, n_q, d) as (..., n_kv_heads, G, n_q, d) and k, v as
(..., n_kv_heads, 1, n_k, d) so that broadcasting shares them; the kernel reads key/value head h // G for query
head h.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _checks, _settings, tiling
from .online_softmax import rescale_factor

# Same defaults as the NumPy version (timed on a CPU, see benchmarks/bench_flash_cpu.py).
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 1024
BACKENDS = ("auto", "torch", "triton")


def _tile_causal_mask(q_start, q_end, k_start, k_end, offset, window, device) -> torch.Tensor:
    """``tiling.causal_visible`` as a tensor on ``device``."""
    return torch.from_numpy(tiling.causal_visible(q_start, q_end, k_start, k_end, offset, window)).to(device)


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


def _grouped(q, k, v, group: int):
    """Views that let broadcasting share each key/value head among the ``group`` query heads using it (no copies)."""
    if group == 1:
        return q, k, v
    q = q.reshape(tuple(q.shape[:-3]) + (q.shape[-3] // group, group) + tuple(q.shape[-2:]))  # (..., H_kv, G, n_q, d)
    k = k[..., None, :, :]  # (..., n_kv_heads, 1, n_k, d_k)
    v = v[..., None, :, :] if v.ndim >= 3 else v  # (..., n_kv_heads, 1, n_k, d_v)
    return q, k, v


def _ungrouped(x: torch.Tensor, group: int, rows_axis: int) -> torch.Tensor:
    """Merge the (n_kv_heads, G) axes in front of ``rows_axis`` back into one axis of n_heads = n_kv_heads * G."""
    if group == 1:
        return x
    head_axis = x.ndim + rows_axis - 2  # the n_kv_heads axis; G follows it
    return x.reshape(tuple(x.shape[:head_axis]) + (x.shape[head_axis] * group,) + tuple(x.shape[head_axis + 2:]))


def _regrouped(x: torch.Tensor, group: int, rows_axis: int) -> torch.Tensor:
    """The inverse of ``_ungrouped``: split the n_heads axis in front of ``rows_axis`` into (n_kv_heads, G)."""
    if group == 1:
        return x
    head_axis = x.ndim + rows_axis - 1
    return x.reshape(tuple(x.shape[:head_axis]) + (x.shape[head_axis] // group, group) + tuple(x.shape[head_axis + 1:]))


def _sum_to(x: torch.Tensor, shape) -> torch.Tensor:
    """Undo broadcasting for a gradient (a no-op when nothing was broadcast)."""
    return x if x.shape == shape else x.sum_to_size(shape)


def forward_tiled(q, k, v, causal: bool, scale: float, block_q: int, block_k: int, window: int | None = None):
    """Tiled forward in plain torch ops -> (output (..., n_q, d_v), lse (..., n_q)). Inputs already validated.

    q, k, v broadcast over their batch dims; grouped heads come in the grouped layout (see ``_grouped``).
    """
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
        for tile in tiling.key_tiles(q_start, q_end, n_q, n_k, block_k, causal, window):
            visible = None
            if causal and tile.kind == tiling.MASKED:  # the diagonal or the window's edge crosses the tile
                visible = _tile_causal_mask(q_start, q_end, tile.k_start, tile.k_end, n_k - n_q, window, q.device)
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


def backward_tiled(
    q, k, v, output, lse, grad_output, causal: bool, scale: float, block_q: int, block_k: int, window: int | None = None
):
    """Tiled backward in plain torch ops -> (dq, dk, dv) with the shapes of q, k, v. Inputs already validated.

    Outer loop over key blocks (accumulating dk, dv), inner over the query blocks that the forward's tile plan
    pairs with it (adding to dq); each tile's probabilities are rebuilt as exp(scores - lse); dS = P * (dP - D)
    with D = rowsum(dO * O). dk and dv never grow beyond k and v: each tile's share is summed right away over the
    query heads (and batch entries) that share those keys.
    """
    n_q, n_k = q.shape[-2], k.shape[-2]
    offset = n_k - n_q
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    dtype = _compute_dtype(q.dtype)
    q_shape = q.shape
    q, k, v = q.to(dtype).expand(batch_shape + q.shape[-2:]), k.to(dtype), v.to(dtype)  # a view of q, no copies
    output, lse, grad_output = output.to(dtype), lse.to(dtype), grad_output.to(dtype)
    delta = (grad_output * output).sum(dim=-1)  # (..., n_q)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    plan = tiling.tile_plan(n_q, n_k, block_q, block_k, causal=causal, window=window)  # the forward's tiles

    for j, k_start in enumerate(range(0, n_k, block_k)):
        k_end = min(k_start + block_k, n_k)
        k_block, v_block = k[..., k_start:k_end, :], v[..., k_start:k_end, :]  # (..., cols, d)
        dk_block, dv_block = torch.zeros_like(k_block), torch.zeros_like(v_block)
        for i in np.flatnonzero(plan[:, j] != tiling.SKIPPED):  # the query blocks that see some of these keys
            q_start, q_end = i * block_q, min((i + 1) * block_q, n_q)
            q_block = q[..., q_start:q_end, :] * scale  # (..., rows, d_k)
            do_block = grad_output[..., q_start:q_end, :]  # (..., rows, d_v)
            scores = q_block @ k_block.transpose(-1, -2)  # (..., rows, cols)
            if causal and plan[i, j] == tiling.MASKED:  # the diagonal or the window's edge crosses the tile
                allowed = _tile_causal_mask(q_start, q_end, k_start, k_end, offset, window, q.device)
                scores.masked_fill_(~allowed, float("-inf"))
            p = torch.exp(scores.sub_(lse[..., q_start:q_end, None]))  # this tile's probabilities
            dv_block += _sum_to(p.transpose(-1, -2) @ do_block, v_block.shape)
            dp = do_block @ v_block.transpose(-1, -2)  # (..., rows, cols)
            ds = p * (dp - delta[..., q_start:q_end, None])
            dq[..., q_start:q_end, :] += scale * (ds @ k_block)
            # q_block already carries the scale
            dk_block += _sum_to(ds.transpose(-1, -2) @ q_block, k_block.shape)
        dk[..., k_start:k_end, :] = dk_block
        dv[..., k_start:k_end, :] = dv_block

    return _sum_to(dq, q_shape), dk, dv  # dq summed back over any batch dims that q broadcast over


def _grouped_forward(q, k, v, causal, window, scale, block_q, block_k, group):
    """``forward_tiled`` on q, k, v as the caller gave them: grouped on the way in, ungrouped on the way out."""
    output, lse = forward_tiled(*_grouped(q, k, v, group), causal, scale, block_q, block_k, window)
    return _ungrouped(output, group, rows_axis=-2), _ungrouped(lse, group, rows_axis=-1)  # (..., n_heads, n_q, ...)


def _grouped_backward(q, k, v, output, lse, grad_output, causal, window, scale, block_q, block_k, group):
    """``backward_tiled`` on q, k, v as the caller gave them -> (dq, dk, dv) with their shapes."""
    output, grad_output = (_regrouped(x, group, rows_axis=-2) for x in (output, grad_output))
    dq, dk, dv = backward_tiled(
        *_grouped(q, k, v, group), output, _regrouped(lse, group, rows_axis=-1), grad_output, causal, scale,
        block_q, block_k, window,
    )
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)  # drop the axes of length 1 grouping added


def flash_attention_backward(
    q, k, v, output, lse, grad_output, *, causal=False, window=None, scale=None, block_q=DEFAULT_BLOCK_Q,
    block_k=DEFAULT_BLOCK_K,
):
    """(dq, dk, dv) of ``flash_attention`` from the saved output and ``lse`` (torch twin of the NumPy function)."""
    block_q = DEFAULT_BLOCK_Q if block_q is None else block_q
    block_k = DEFAULT_BLOCK_K if block_k is None else block_k
    causal, window, scale, block_q, block_k, group = _validate(q, k, v, causal, window, scale, block_q, block_k)
    output_shape = _output_shape(q, k, v, group)
    for name, x, expected in (
        ("output", output, output_shape), ("grad_output", grad_output, output_shape), ("lse", lse, output_shape[:-1])
    ):
        _checks.floating_array(name, _checks.torch_tensor(name, x), min_ndim=1, finite=name != "lse")
        if tuple(x.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
                f"got {tuple(x.shape)}"
            )
    grads = _grouped_backward(q, k, v, output, lse, grad_output, causal, window, scale, block_q, block_k, group)
    return tuple(grad.to(x.dtype) for grad, x in zip(grads, (q, k, v), strict=True))


def _output_shape(q, k, v, group: int) -> tuple:
    """(..., n_q, d_v): the batch dims of q, k, v broadcast, with n_heads query heads when they are grouped."""
    q, k, v = _grouped(q, k, v, group)
    batch_shape = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    if group > 1:
        batch_shape = batch_shape[:-2] + (batch_shape[-2] * group,)  # (..., n_kv_heads, G) -> (..., n_heads)
    return batch_shape + (q.shape[-2], v.shape[-1])


def _validate(q, k, v, causal, window, scale, block_q, block_k):
    """Check the inputs; return causal, the window, the scale (default 1/sqrt(d_k)), the block sizes (None stays
    None) and how many query heads share a key/value head (1 without grouping)."""
    q, k, v = (_checks.torch_tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    group = _checks.query_groups(q, k, v)
    _checks.qkv(*_grouped(q, k, v, group))
    scale = _checks.scale(scale)
    block_q = None if block_q is None else _checks.positive_int("block_q", block_q)
    block_k = None if block_k is None else _checks.positive_int("block_k", block_k)
    causal = _checks.causal_fits(causal, q.shape[-2], k.shape[-2], f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    window = _checks.window_fits(window, causal)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return causal, window, float(scale), block_q, block_k, group


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


def _kernel_layout(q, k, v):
    """q (B, n_heads, n_q, d) and k, v (B, n_kv_heads, n_k, d), contiguous: the layout the Triton kernel takes.

    Dimension -3 is the head axis (a missing one counts as 1 head); all dims before it are folded into B after
    broadcasting. Key/value heads are not repeated for grouped or multi-query attention: the kernel reads head
    h // (n_heads // n_kv_heads). Only a q with one head against several key/value heads is broadcast (copied).
    """
    q, k, v = (x.reshape((1,) * (3 - x.ndim) + tuple(x.shape)) for x in (q, k, v))  # (..., heads, n, d)
    batch_shape = tuple(torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3]))
    n_kv_heads = max(k.shape[-3], v.shape[-3])  # equal, or one of them is 1 and broadcasts
    n_heads = q.shape[-3] if q.shape[-3] % n_kv_heads == 0 else n_kv_heads  # else q has 1 head: broadcast it

    def four_dims(x, heads):
        x = x.expand(batch_shape + (heads,) + tuple(x.shape[-2:]))
        return x.reshape((-1, heads) + tuple(x.shape[-2:])).contiguous()  # (B, heads, n, d)

    return four_dims(q, n_heads), four_dims(k, n_kv_heads), four_dims(v, n_kv_heads)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, window, scale, backend, block_q, block_k, group):
        output_shape = _output_shape(q, k, v, group)
        if backend == "triton":
            q4, k4, v4 = _kernel_layout(q, k, v)
            output, lse = _triton_module().forward(
                q4, k4, v4, causal, scale, window=window, block_q=block_q, block_k=block_k
            )
            output, lse = output.reshape(output_shape), lse.reshape(output_shape[:-1])
        else:
            output, lse = _grouped_forward(q, k, v, causal, window, scale, block_q, block_k, group)
            output = output.to(q.dtype)
        _check_result(output, lse)
        ctx.save_for_backward(q, k, v, output, lse)
        ctx.settings = (causal, window, scale, backend, block_q, block_k, group)
        ctx.mark_non_differentiable(lse)
        return output, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, _grad_lse):
        q, k, v, output, lse = ctx.saved_tensors
        causal, window, scale, backend, block_q, block_k, group = ctx.settings
        if backend == "triton":
            q4, k4, v4 = _kernel_layout(q, k, v)
            output4, grad4 = (x.reshape(q4.shape[:-1] + x.shape[-1:]) for x in (output, grad_output))
            dq4, dk4, dv4 = _triton_module().backward(
                q4, k4, v4, output4, lse.reshape(q4.shape[:-1]), grad4, causal, scale, window=window,
                block_q=block_q, block_k=block_k,
            )
            # Back from (B, heads, n, d) to the caller's shapes, summing over what was broadcast.
            grads = [g.reshape(output.shape[:-3] + g.shape[-3:]) if output.ndim >= 3 else g[0, 0]
                     for g in (dq4, dk4, dv4)]
            grads = tuple(_sum_to(g, x.shape) for g, x in zip(grads, (q, k, v), strict=True))
        else:
            grads = _grouped_backward(q, k, v, output, lse, grad_output, causal, window, scale, block_q, block_k, group)
        return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v), strict=True)) + (None,) * 7


def flash_attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    backend: str = "auto",
    block_q: int | None = None,
    block_k: int | None = None,
    return_lse: bool = False,
):
    """softmax(q k^T * scale) v without an n_q x n_k matrix; differentiable (q, k, v all get gradients).

    q (..., n_q, d_k), k (..., n_k, d_k), v (..., n_k, d_v) -> output (..., n_q, d_v); batch dims broadcast.
    ``causal`` is bottom-right aligned as in ``attention``. ``window`` (needs ``causal``): each query sees only its
    ``window`` most recent keys, itself included; tiles outside every window are skipped. Grouped-query attention:
    q (..., n_heads, n_q, d_k) with k, v (..., n_kv_heads, n_k, d), n_heads a multiple of n_kv_heads; query head
    h uses key/value head h // (n_heads // n_kv_heads), as ``scaled_dot_product_attention(..., enable_gqa=True)``,
    and k, v are never copied per query head. ``backend``: "torch" (tiled, plain torch ops, any
    device), "triton" (the fused CUDA kernel) or "auto" (triton on CUDA when available, else torch).
    ``block_q``/``block_k`` set the tile (None: 128 x 1024 for torch, the kernel's own choice for triton, which
    needs powers of two >= 16). With ``return_lse`` also returns the row log-sum-exp (..., n_q), not differentiable.
    Scores that overflow raise ``OverflowError``, as in ``attention``; what a backend cannot compute correctly
    (e.g. bfloat16 under Triton's CPU interpreter) is refused by name instead of returning garbage.
    """
    causal, window, scale, block_q, block_k, group = _validate(q, k, v, causal, window, scale, block_q, block_k)
    return_lse = _checks.flag("return_lse", return_lse)
    backend, block_q, block_k = _resolve_backend(backend, q, k, v, block_q, block_k)
    output, lse = _FlashAttention.apply(q, k, v, causal, window, scale, backend, block_q, block_k, group)
    if return_lse:
        return output, lse
    return output
