"""FlashAttention with grouped key/value heads (GQA/MQA) and sliding windows, in every implementation.

The reference is PyTorch's scaled_dot_product_attention: ``enable_gqa=True`` for grouped heads, and a boolean banded
mask written out here from the definition for the window (query i at position p = i + n_k - n_q sees key j iff
p - window < j <= p). The NumPy loop and the torch tiled path are checked in float64 at rounding; the Triton kernels
under the CPU interpreter (conftest.py) in float32 and float16, on small shapes because the interpreter is slow.
"""

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlib.numpy as anp
import attnlib.torch as at
from attnlib import tiling
from attnlib.torch import flash_triton
from attnlib.torch.flash_attention import _kernel_layout


def banded_mask(n_q, n_k, window):
    """(n_q, n_k) boolean: causal, bottom-right aligned, and only the ``window`` most recent keys (None: all)."""
    positions = torch.arange(n_q)[:, None] + n_k - n_q
    keys = torch.arange(n_k)[None, :]
    visible = keys <= positions
    if window is not None:
        visible &= keys > positions - window
    return visible


def sdpa(q, k, v, grad_output, causal, window, scale=None):
    """SDPA's output and (dq, dk, dv) for this loss; dk and dv come out with k's and v's own (grouped) shapes."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    mask = banded_mask(q.shape[-2], k.shape[-2], window).to(q.device) if causal else None
    grouped = q.ndim >= 3 and q.shape[-3] != k.shape[-3]
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=grouped)
    output.backward(grad_output)
    return output.detach(), q.grad, k.grad, v.grad


def max_error(a, b):
    return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


@st.composite
def problems(draw, max_n=24):
    """float64 inputs with n_heads = G * n_kv_heads (G = 1 too), n_q <= n_k or not, windows from 1 to past n_k."""
    causal = draw(st.booleans())
    n_q = draw(st.integers(1, max_n))
    n_k = draw(st.integers(n_q if causal else 1, max_n + (n_q if causal else 0)))
    n_kv_heads, group = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 4]))
    window = draw(st.one_of(st.none(), st.integers(1, n_k + 3))) if causal else None
    batch = draw(st.sampled_from([(), (2,)]))
    d_k, d_v = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def normal(*shape):
        return torch.randn(batch + shape, generator=generator, dtype=torch.float64)

    q, k, v = normal(n_kv_heads * group, n_q, d_k), normal(n_kv_heads, n_k, d_k), normal(n_kv_heads, n_k, d_v)
    return q, k, v, normal(n_kv_heads * group, n_q, d_v), causal, window


BLOCKS = st.sampled_from([1, 2, 3, 5, 8, 64])


# ---------------------------------------------------------------------------------------------------------------
# The NumPy loop and the torch tiled path, in float64
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(problems(), BLOCKS, BLOCKS)
def test_numpy_loop_equals_sdpa_forward_and_backward(problem, block_q, block_k):
    q, k, v, grad_output, causal, window = problem
    expected = sdpa(q, k, v, grad_output, causal, window)
    q_np, k_np, v_np, do_np = (x.numpy() for x in (q, k, v, grad_output))
    output, lse = anp.flash_attention(q_np, k_np, v_np, causal=causal, window=window, block_q=block_q,
                                      block_k=block_k, return_lse=True)
    grads = anp.flash_attention_backward(q_np, k_np, v_np, output, lse, do_np, causal=causal, window=window,
                                         block_q=block_q, block_k=block_k)
    assert lse.shape == output.shape[:-1]
    for name, got, want in zip(("output", "dq", "dk", "dv"), (output, *grads), expected, strict=True):
        assert got.shape == tuple(want.shape), name
        assert max_error(got, want) < 1e-12, f"{name}: {max_error(got, want):.3g}"


@settings(max_examples=30)
@given(problems(), BLOCKS, BLOCKS)
def test_torch_tiled_path_equals_sdpa_forward_and_backward(problem, block_q, block_k):
    q, k, v, grad_output, causal, window = problem
    expected = sdpa(q, k, v, grad_output, causal, window)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    output, lse = at.flash_attention(q, k, v, causal=causal, window=window, backend="torch", block_q=block_q,
                                     block_k=block_k, return_lse=True)
    through_autograd = torch.autograd.grad(output, (q, k, v), grad_output)
    public_backward = at.flash_attention_backward(q, k, v, output.detach(), lse, grad_output, causal=causal,
                                                  window=window, block_q=block_q, block_k=block_k)
    for name, got, want in zip(("output", "dq", "dk", "dv"), (output, *through_autograd), expected, strict=True):
        assert got.shape == want.shape, name
        assert max_error(got, want) < 1e-12, f"{name}: {max_error(got, want):.3g}"
    for got, want in zip(public_backward, through_autograd, strict=True):
        assert max_error(got, want) < 1e-12


def test_the_twins_agree_and_the_trace_walks_the_windowed_plan():
    generator = torch.Generator().manual_seed(11)
    q = torch.randn(2, 6, 21, 8, generator=generator, dtype=torch.float64)  # 6 query heads
    k, v = (torch.randn(2, 2, 37, 8, generator=generator, dtype=torch.float64) for _ in range(2))  # 2 kv heads
    torch_output = at.flash_attention(q, k, v, causal=True, window=9, backend="torch", block_q=4, block_k=5)
    trace = anp.FlashTrace.record(q.numpy(), k.numpy(), v.numpy(), causal=True, window=9, block_q=4, block_k=5)
    numpy_output = anp.flash_attention(q.numpy(), k.numpy(), v.numpy(), causal=True, window=9, block_q=4, block_k=5)
    np.testing.assert_allclose(torch_output.numpy(), numpy_output, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(trace.output, numpy_output)
    plan = tiling.tile_plan(21, 37, 4, 5, causal=True, window=9)
    assert {(step.i, step.j) for step in trace.steps} == {tuple(t) for t in np.argwhere(plan != tiling.SKIPPED)}
    assert sorted(trace.skipped) == sorted(tuple(t) for t in np.argwhere(plan == tiling.SKIPPED))
    assert trace.to_dict()["window"] == 9
    # Each step's scores hide exactly what the window hides: -inf where the banded mask says False.
    visible = banded_mask(21, 37, 9).numpy()
    for step in trace.steps:
        rows, keys = slice(*step.q_range), slice(*step.k_range)
        assert step.scores.shape[-3:-2] == (3,), "steps keep the grouped layout (..., n_kv_heads, G, rows, cols)"
        np.testing.assert_array_equal(np.isfinite(step.scores[0, 0, 0]), visible[rows, keys])


def test_a_window_as_long_as_the_keys_is_plain_causal_attention():
    generator = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(3, n, 4, generator=generator, dtype=torch.float64) for n in (10, 16, 16))
    plain = at.flash_attention(q, k, v, causal=True, backend="torch", block_q=3, block_k=4)
    for window in (16, 17, 1000):
        windowed = at.flash_attention(q, k, v, causal=True, window=window, backend="torch", block_q=3, block_k=4)
        torch.testing.assert_close(windowed, plain, rtol=0, atol=0)
    # And a window of one key is each query's own value.
    np.testing.assert_allclose(anp.flash_attention(q.numpy(), k.numpy(), v.numpy(), causal=True, window=1),
                               v[:, 6:].numpy(), rtol=0, atol=1e-15)


def test_grouped_heads_are_not_copied_numpy():
    # 16 query heads share one key/value head of 4096 keys (2 MiB each for k and v). Repeating them per query head
    # would allocate 2 x 16 x 2 MiB; the grouped loops stay within a few tiles, forward and backward.
    rng = np.random.default_rng(13)
    q, grad_output = rng.standard_normal((16, 8, 64)), rng.standard_normal((16, 8, 64))
    k, v = rng.standard_normal((1, 4096, 64)), rng.standard_normal((1, 4096, 64))
    copies = 16 * k.nbytes
    tracemalloc.start()
    output, lse = anp.flash_attention(q, k, v, block_q=8, block_k=64, return_lse=True)
    forward_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    _, dk, dv = anp.flash_attention_backward(q, k, v, output, lse, grad_output, block_q=8, block_k=64)
    backward_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert dk.shape == k.shape and dv.shape == v.shape
    assert forward_peak < copies / 8, f"forward peak {forward_peak / 2**20:.1f} MiB"
    assert backward_peak < 2 * k.nbytes + copies / 8, f"backward peak {backward_peak / 2**20:.1f} MiB"


def test_the_kernel_layout_shares_key_value_heads_without_copies():
    q, k, v = torch.randn(2, 8, 5, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    q4, k4, v4 = _kernel_layout(q, k, v)
    assert q4.shape == (2, 8, 5, 16) and k4.shape == v4.shape == (2, 2, 7, 16)
    assert (q4.data_ptr(), k4.data_ptr(), v4.data_ptr()) == (q.data_ptr(), k.data_ptr(), v.data_ptr())
    q4, k4, _ = _kernel_layout(torch.randn(3, 4, 16), torch.randn(1, 4, 16), torch.randn(1, 4, 16))  # one kv head
    assert q4.shape == (1, 3, 4, 16) and k4.shape == (1, 1, 4, 16)


# ---------------------------------------------------------------------------------------------------------------
# The Triton kernels under the interpreter
# ---------------------------------------------------------------------------------------------------------------

requires_triton = pytest.mark.skipif(not flash_triton.available(), reason="triton is not importable here")

# (n_heads, n_kv_heads, n_q, n_k, window, block_q, block_k): GQA, MQA, window alone, both, n_q < n_k, ragged sizes,
# a window that is not a multiple of the tile, a window of one, one query.
TRITON_CASES = [
    (4, 2, 40, 40, None, 16, 16),
    (4, 1, 30, 50, 20, 16, 32),
    (2, 2, 50, 77, 7, 16, 16),
    (6, 3, 33, 33, 16, 32, 16),
    (2, 1, 24, 40, 1, 16, 16),
    (4, 2, 1, 45, 9, 16, 16),
]


def kernel_with_grads(q, k, v, grad_output, window, block_q, block_k, scale):
    output, lse = flash_triton.forward(q, k, v, True, scale, window=window, block_q=block_q, block_k=block_k)
    grads = flash_triton.backward(q, k, v, output, lse, grad_output, True, scale, window=window, block_q=block_q,
                                  block_k=block_k)
    return (output, *grads), lse


@requires_triton
@pytest.mark.parametrize(("n_heads", "n_kv_heads", "n_q", "n_k", "window", "block_q", "block_k"), TRITON_CASES)
def test_kernels_equal_sdpa_in_float32(n_heads, n_kv_heads, n_q, n_k, window, block_q, block_k):
    generator = torch.Generator().manual_seed(n_q * n_k + n_heads)
    q, grad_output = (torch.randn(1, n_heads, n_q, 16, generator=generator) for _ in range(2))
    k, v = (torch.randn(1, n_kv_heads, n_k, 16, generator=generator) for _ in range(2))
    ours, lse = kernel_with_grads(q, k, v, grad_output, window, block_q, block_k, 0.25)
    expected = sdpa(*(x.double() for x in (q, k, v, grad_output)), True, window, scale=0.25)
    for name, got, want in zip(("output", "dq", "dk", "dv"), ours, expected, strict=True):
        assert got.shape == want.shape and got.dtype == torch.float32, name
        assert max_error(got, want) < 2e-5, f"{name}: max error {max_error(got, want):.3g}"
    scores = (q.double() @ k.double().repeat_interleave(n_heads // n_kv_heads, dim=1).transpose(-1, -2)) * 0.25
    scores = scores.masked_fill(~banded_mask(n_q, n_k, window), float("-inf"))
    assert max_error(lse, torch.logsumexp(scores, dim=-1)) < 2e-5


@requires_triton
def test_kernels_in_float16_within_twice_sdpa_error():
    generator = torch.Generator().manual_seed(21)
    q, grad_output = (torch.randn(1, 4, 48, 32, generator=generator).half() for _ in range(2))
    k, v = (torch.randn(1, 2, 64, 32, generator=generator).half() for _ in range(2))
    ours, _ = kernel_with_grads(q, k, v, grad_output, 24, 16, 16, 32**-0.5)
    exact = sdpa(*(x.float() for x in (q, k, v, grad_output)), True, 24)
    pytorch_half = sdpa(q, k, v, grad_output, True, 24)
    for name, mine, theirs, reference in zip(("output", "dq", "dk", "dv"), ours, pytorch_half, exact, strict=True):
        assert mine.dtype == torch.float16
        allowed = 2 * max_error(theirs, reference) + 1e-4
        assert max_error(mine, reference) <= allowed, f"{name}: {max_error(mine, reference):.3g} > {allowed:.3g}"


@requires_triton
def test_the_public_function_trains_through_the_kernel_with_groups_and_a_window():
    generator = torch.Generator().manual_seed(22)
    q = torch.randn(2, 4, 20, 16, generator=generator).requires_grad_()
    k, v = (torch.randn(2, 2, 36, 16, generator=generator).requires_grad_() for _ in range(2))
    grad_output = torch.randn(2, 4, 20, 16, generator=generator)
    output = at.flash_attention(q, k, v, causal=True, window=10, backend="triton", block_q=16, block_k=16)
    grads = torch.autograd.grad(output, (q, k, v), grad_output)
    expected = sdpa(*(x.detach().double() for x in (q, k, v, grad_output)), True, 10)
    for got, want in zip((output, *grads), expected, strict=True):
        assert got.shape == want.shape
        assert max_error(got, want) < 2e-5


# ---------------------------------------------------------------------------------------------------------------
# Bad input is refused at the door, naming the argument
# ---------------------------------------------------------------------------------------------------------------


def _grouped_inputs(n_heads=6, n_kv_heads=4):
    return torch.randn(1, n_heads, 8, 16), torch.randn(1, n_kv_heads, 8, 16), torch.randn(1, n_kv_heads, 8, 16)


CALLS = {
    "numpy": lambda q, k, v, **options: anp.flash_attention(q.numpy(), k.numpy(), v.numpy(), **options),
    "numpy trace": lambda q, k, v, **options: anp.FlashTrace.record(q.numpy(), k.numpy(), v.numpy(), **options),
    "torch": lambda q, k, v, **options: at.flash_attention(q, k, v, backend="torch", **options),
    "triton": lambda q, k, v, **options: at.flash_attention(q, k, v, backend="triton", **options),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(("inputs", "options", "error", "words"), [
    ((6, 6), {"window": 4}, ValueError, r"window=4 needs causal=True"),
    ((6, 6), {"causal": True, "window": 0}, ValueError, r"window must be a positive integer, got 0"),
    ((6, 6), {"causal": True, "window": 2.0}, TypeError, r"window must be a positive integer"),
    ((6, 4), {}, ValueError, r"q has 6 heads and k has 4: .*multiple of the number of key/value heads"),
    ((2, 4), {"causal": True}, ValueError, r"q \(1, 2, 8, 16\), k \(1, 4, 8, 16\).*q has 2 heads and k has 4"),
])
def test_bad_windows_and_head_counts_are_refused(call, inputs, options, error, words):
    if call == "triton" and not flash_triton.available():
        pytest.skip("triton is not importable here")
    with pytest.raises(error, match=words):
        CALLS[call](*_grouped_inputs(*inputs), **options)


def test_k_and_v_must_have_the_same_heads_and_backward_checks_the_grouped_shapes():
    q, k, _ = _grouped_inputs(4, 2)
    with pytest.raises(ValueError, match=r"k and v must have the same number of heads"):
        at.flash_attention(q, k, torch.randn(1, 4, 8, 16))
    v = torch.randn(1, 2, 8, 16)
    output, lse = at.flash_attention(q, k, v, return_lse=True)
    assert output.shape == (1, 4, 8, 16) and lse.shape == (1, 4, 8)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(1, 4, 8, 16\)"):
        at.flash_attention_backward(q, k, v, output, lse, torch.randn(1, 2, 8, 16))
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 4, 8\)"):
        anp.flash_attention_backward(q.numpy(), k.numpy(), v.numpy(), output.numpy(), lse[:, :2].numpy(),
                                     output.numpy())


# ---------------------------------------------------------------------------------------------------------------
# Compiled kernels on a CUDA device
# ---------------------------------------------------------------------------------------------------------------

GPU_CASES = [  # (batch, n_heads, n_kv_heads, n, d, window)
    (2, 8, 2, 1000, 64, None),
    (1, 8, 1, 2048, 128, 256),
    (1, 4, 4, 4097, 64, 1000),
    (2, 16, 4, 1024, 128, 100),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: compiled-kernel tests need a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize(("batch", "n_heads", "n_kv_heads", "n", "d", "window"), GPU_CASES)
def test_gpu_within_twice_sdpa_error(batch, n_heads, n_kv_heads, n, d, window, dtype, monkeypatch):
    assert not flash_triton.interpreted(), "with CUDA present the kernels must be compiled, not interpreted"
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # a float32 reference without TF32
    generator = torch.Generator(device="cuda").manual_seed(n + d)
    q, grad_output = (torch.randn(batch, n_heads, n, d, generator=generator, device="cuda").to(dtype)
                      for _ in range(2))
    k, v = (torch.randn(batch, n_kv_heads, n, d, generator=generator, device="cuda").to(dtype) for _ in range(2))
    ours, _ = kernel_with_grads(q, k, v, grad_output, window, None, None, d**-0.5)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        exact = sdpa(*(x.float() for x in (q, k, v, grad_output)), True, window)
    pytorch_low = sdpa(q, k, v, grad_output, True, window)
    for name, mine, theirs, reference in zip(("output", "dq", "dk", "dv"), ours, pytorch_low, exact, strict=True):
        allowed = 2 * max_error(theirs, reference) + 1e-3
        assert max_error(mine, reference) <= allowed, f"{name}: {max_error(mine, reference):.3g} > {allowed:.3g}"
