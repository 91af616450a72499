"""Torch FlashAttention: the autograd Function against naive attention, gradcheck, backends and errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlib.numpy as anp
from attnlib.torch import attention, flash_attention, flash_attention_backward
from attnlib.torch.flash_attention import _resolve_backend

BLOCKS = st.sampled_from([1, 2, 3, 7, 64])


@st.composite
def problems(draw, max_n=20):
    causal = draw(st.booleans())
    n_q = draw(st.integers(1, max_n))
    n_k = draw(st.integers(n_q if causal else 1, max_n + (n_q if causal else 0)))
    d_k, d_v = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    batch_q, batch_k = draw(st.sampled_from([((), ()), ((2, 3), (2, 3)), ((3, 1), (1, 2))]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(batch_q + (n_q, d_k), generator=generator, dtype=torch.float64)
    k = torch.randn(batch_k + (n_k, d_k), generator=generator, dtype=torch.float64)
    v = torch.randn(batch_k + (n_k, d_v), generator=generator, dtype=torch.float64)
    return q, k, v, causal


@settings(max_examples=25)
@given(problems(), BLOCKS, BLOCKS)
def test_forward_and_backward_equal_naive_attention(problem, block_q, block_k):
    q, k, v, causal = (x.requires_grad_() if isinstance(x, torch.Tensor) else x for x in problem)
    got, lse = flash_attention(q, k, v, causal=causal, backend="torch", block_q=block_q, block_k=block_k,
                               return_lse=True)
    expected, _ = attention(q, k, v, causal=causal)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    _, numpy_lse = anp.flash_attention(q.detach().numpy(), k.detach().numpy(), v.detach().numpy(), causal=causal,
                                       return_lse=True)
    np.testing.assert_allclose(lse.numpy(), numpy_lse, rtol=0, atol=1e-10)

    grad_output = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got_grads = torch.autograd.grad(got, (q, k, v), grad_output)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_output)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "shape_q, shape_k, causal, block_q, block_k",
    [((5, 3), (5, 3), True, 2, 2), ((2, 4, 3), (2, 7, 3), True, 3, 2), ((2, 1, 3, 2), (1, 2, 6, 2), False, 2, 4)],
)
def test_gradcheck(shape_q, shape_k, causal, block_q, block_k):
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(shape_q, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(shape_k, dtype=torch.float64, generator=generator, requires_grad=True)
    v = torch.randn(shape_k, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v, causal=causal, backend="torch", block_q=block_q, block_k=block_k),
        (q, k, v),
    )


def test_public_backward_matches_numpy_twin():
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 11, 4)), rng.standard_normal((2, 11, 3))
    output, lse = anp.flash_attention(q, k, v, causal=True, block_q=4, block_k=3, return_lse=True)
    grad_output = rng.standard_normal(output.shape)
    expected = anp.flash_attention_backward(q, k, v, output, lse, grad_output, causal=True, block_q=4, block_k=3)
    got = flash_attention_backward(*(torch.from_numpy(x) for x in (q, k, v, output, lse, grad_output)), causal=True,
                                   block_q=4, block_k=3)
    for got_grad, expected_grad in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_grad.numpy(), expected_grad, rtol=0, atol=1e-12)


def test_half_precision_accumulates_in_float32():
    generator = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 3, 70, 16, generator=generator).to(torch.bfloat16) for _ in range(3))
    got = flash_attention(q, k, v, causal=True, backend="torch", block_q=16, block_k=32)
    assert got.dtype == torch.bfloat16
    expected, _ = attention(q.float(), k.float(), v.float(), causal=True)
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=2e-2)


def test_auto_picks_torch_on_cpu():
    q = torch.randn(4, 16)
    assert _resolve_backend("auto", q, q, q, None, None) == ("torch", 128, 1024)
    torch.testing.assert_close(flash_attention(q, q, q), flash_attention(q, q, q, backend="torch"), rtol=0, atol=0)


def test_triton_backend_through_the_same_function():
    """On a machine without CUDA this runs the kernel under Triton's interpreter (switched on in conftest)."""
    flash_triton = pytest.importorskip("attnlib.torch.flash_triton")
    if not flash_triton.available() or not (torch.cuda.is_available() or flash_triton.interpreted()):
        pytest.skip("triton cannot run here (no CUDA and no interpreter)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(7)
    q = torch.randn(2, 1, 40, 16, generator=generator).to(device).requires_grad_()
    k = torch.randn(2, 3, 48, 16, generator=generator).to(device).requires_grad_()  # broadcast over heads
    v = torch.randn(1, 3, 48, 16, generator=generator).to(device).requires_grad_()
    got = flash_attention(q, k, v, causal=True, backend="triton")
    expected, _ = attention(q, k, v, causal=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    grad_output = torch.randn(got.shape, generator=generator).to(device)
    for got_grad, expected_grad in zip(
        torch.autograd.grad(got, (q, k, v), grad_output), torch.autograd.grad(expected, (q, k, v), grad_output),
        strict=True,
    ):
        assert got_grad.shape == expected_grad.shape
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-4)


def _qkv(n_q=4, n_k=4, d=3):
    return torch.ones(n_q, d), torch.ones(n_k, d), torch.ones(n_k, d)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: flash_attention(*_qkv(), backend="torch", block_q=0), ValueError, "block_q must be a positive"),
        (lambda: flash_attention(*_qkv(), block_k=-1), ValueError, "block_k must be a positive"),
        (lambda: flash_attention(*_qkv(), backend="cuda"), ValueError, "backend must be one of"),
        (lambda: flash_attention(np.ones((4, 3)), *_qkv()[1:]), TypeError,
             "q is a NumPy array.*attnlib.torch takes torch tensors"),
        (lambda: flash_attention(torch.ones(4, 3), torch.ones(4, 2), torch.ones(4, 3)), ValueError, "d_k"),
        (lambda: flash_attention(torch.ones(3), torch.ones(4, 3), torch.ones(4, 3)), ValueError, "dimension"),
        (lambda: flash_attention(*_qkv(n_q=5), causal=True), ValueError, "n_k >= n_q"),
        (lambda: flash_attention(*_qkv(), scale=0.0), ValueError, "scale"),
        (lambda: flash_attention_backward(*_qkv(), torch.ones(4, 3), torch.ones(3), torch.ones(4, 3)), ValueError,
         "lse must have shape"),
    ],
)
def test_bad_input_is_reported(call, error, words):
    with pytest.raises(error, match=words):
        call()
