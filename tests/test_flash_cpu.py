"""NumPy FlashAttention: exact against naive attention, its trace, its backward, its memory, its errors."""

import json
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from attnlib.numpy import FlashTrace, attention, causal_mask, flash_attention, flash_attention_backward
from attnlib.torch import attention as torch_attention

BLOCKS = st.sampled_from([1, 2, 3, 5, 8, 13, 64, 1000])  # 1, ragged sizes, and sizes >= n


@st.composite
def problems(draw, max_n=24):
    """Random attention inputs in float64: batch dims that broadcast, n_q != n_k, causal or not."""
    causal = draw(st.booleans())
    n_q = draw(st.integers(1, max_n))
    n_k = draw(st.integers(n_q if causal else 1, max_n + (n_q if causal else 0)))
    d_k, d_v = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    batch_q, batch_k = draw(st.sampled_from([((), ()), ((2,), (2,)), ((2, 3), (1, 3)), ((1,), (3, 2, 1))]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal(batch_q + (n_q, d_k)) * draw(st.sampled_from([0.5, 3.0]))
    k = rng.standard_normal(batch_k + (n_k, d_k))
    v = rng.standard_normal(batch_k + (n_k, d_v))
    return q, k, v, causal


def naive_scores(q, k, causal, scale=None):
    """The masked, scaled score matrix that flash_attention must never build (for checking it)."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        scores = np.where(causal_mask(q.shape[-2], k.shape[-2]), scores, -np.inf)
    return scores


@given(problems(), BLOCKS, BLOCKS)
@example((np.ones((5, 2)), np.ones((5, 2)), np.ones((5, 2)), True), 1, 1)
@example((np.ones((3, 4)), np.ones((7, 4)), np.ones((7, 2)), True), 100, 100)
def test_equals_naive_attention(problem, block_q, block_k):
    q, k, v, causal = problem
    expected, _ = attention(q, k, v, causal=causal)
    got, lse = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k, return_lse=True)
    assert got.shape == expected.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    scores = naive_scores(q, k, causal)
    top = scores.max(axis=-1)
    np.testing.assert_allclose(lse, top + np.log(np.exp(scores - top[..., None]).sum(-1)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_extreme_logits_are_finite_and_correct(causal):
    """Scores of +-1e4 after scaling: exp would overflow without the running max; the result must be exact."""
    rng = np.random.default_rng(0)
    n, d = 37, 4
    q = rng.choice([-1.0, 1.0], size=(n, d)) * 50.0
    k = rng.choice([-1.0, 1.0], size=(n, d)) * 50.0
    v = rng.standard_normal((n, 3))
    scale = 1.0  # scores are sums of four +-2500 terms: up to +-1e4
    assert np.abs(q @ k.T).max() == 1e4
    expected, _ = attention(q, k, v, causal=causal, scale=scale)
    for block_q, block_k in [(1, 1), (4, 5), (64, 64)]:
        got = flash_attention(q, k, v, causal=causal, scale=scale, block_q=block_q, block_k=block_k)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@given(problems(max_n=12), st.integers(1, 5), st.integers(1, 5))
def test_trace_invariants(problem, block_q, block_k):
    q, k, v, causal = problem
    trace = FlashTrace.record(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    output, lse = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k, return_lse=True)
    np.testing.assert_array_equal(output, trace.output)  # the trace is built from the very same loop
    np.testing.assert_array_equal(lse, trace.lse)
    scores = naive_scores(q, k, causal)
    n_q, n_k = q.shape[-2], k.shape[-2]
    n_blocks_q, n_blocks_k = -(-n_q // block_q), -(-n_k // block_k)
    # Every tile is either computed once or skipped because causal masking hides all of it.
    done = [(step.i, step.j) for step in trace.steps]
    assert sorted(done + trace.skipped) == [(i, j) for i in range(n_blocks_q) for j in range(n_blocks_k)]
    for i, j in trace.skipped:
        tile = scores[..., i * block_q : (i + 1) * block_q, j * block_k : (j + 1) * block_k]
        assert causal and np.isneginf(tile).all()

    for i in range(n_blocks_q):
        steps = trace.steps_for_query_block(i)
        rows = slice(i * block_q, min((i + 1) * block_q, n_q))
        row_scores = scores[..., rows, :]
        for step in steps:  # each tile holds exactly the scores it claims to hold
            np.testing.assert_allclose(step.scores, row_scores[..., :, slice(*step.k_range)], rtol=0, atol=1e-12)
            np.testing.assert_array_equal(step.rescale, np.exp(step.m_old - step.m_new))
        for before, after in zip(steps, steps[1:], strict=False):  # the state is handed from tile to tile
            np.testing.assert_array_equal(after.m_old, before.m_new)
            np.testing.assert_array_equal(after.l_old, before.l_new)
        last = steps[-1]
        m = row_scores.max(axis=-1)
        np.testing.assert_allclose(last.m_new, m, rtol=1e-14, atol=1e-14)  # final m is the row max
        np.testing.assert_allclose(last.l_new, np.exp(row_scores - m[..., None]).sum(-1), rtol=1e-12)  # final l
        np.testing.assert_allclose(last.acc / last.l_new[..., None], output[..., rows, :], rtol=0, atol=1e-12)
        np.testing.assert_allclose(trace.lse[..., rows], m + np.log(last.l_new), rtol=0, atol=1e-12)
        # The first tile starts from m = -inf (factor 0); the later factors multiply to exp(m_first - m_final).
        assert (steps[0].rescale == 0).all()
        np.testing.assert_array_equal(last.m_new, np.maximum.reduce([step.scores.max(-1) for step in steps]))
        product = np.prod([step.rescale for step in steps[1:]], axis=0)
        np.testing.assert_allclose(product, np.exp(steps[0].m_new - last.m_new), rtol=1e-12, atol=1e-300)
    json.dumps(trace.to_dict(), allow_nan=False)  # plain JSON: -inf (masked, or m before the first tile) is null


@given(problems(max_n=16), BLOCKS, BLOCKS)
def test_backward_equals_autograd_of_naive_attention(problem, block_q, block_k):
    q, k, v, causal = problem
    output, lse = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k, return_lse=True)
    grad_output = np.random.default_rng(1).standard_normal(output.shape)
    dq, dk, dv = flash_attention_backward(
        q, k, v, output, lse, grad_output, causal=causal, block_q=block_q, block_k=block_k
    )
    tensors = [torch.tensor(x, requires_grad=True) for x in (q, k, v)]
    expected_output, _ = torch_attention(*tensors, causal=causal)
    expected = torch.autograd.grad(expected_output, tensors, torch.from_numpy(grad_output))
    for got, want, x in zip((dq, dk, dv), expected, (q, k, v), strict=True):
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-10)


def test_dtype_is_kept_and_scale_is_used():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 50, 16)).astype(np.float32) for _ in range(3))
    got = flash_attention(q, k, v, scale=0.3, block_q=16, block_k=32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, attention(q, k, v, scale=0.3)[0], rtol=0, atol=1e-5)
    # float16 in, float16 out, but m, l and acc are kept in float32: the error is float16 rounding only.
    half = flash_attention(*(x.astype(np.float16) for x in (q, k, v)), scale=0.3, block_q=16, block_k=32)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), got, rtol=0, atol=2e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_never_builds_an_n_by_n_array(causal):
    """Peak memory of forward and backward stays far below one n x n float64 matrix."""
    rng = np.random.default_rng(3)
    n, d = 1024, 16
    q, k, v, grad_output = (rng.standard_normal((n, d)) for _ in range(4))
    one_square = n * n * 8
    tracemalloc.start()
    try:
        output, lse = flash_attention(q, k, v, causal=causal, block_q=64, block_k=256, return_lse=True)
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        flash_attention_backward(q, k, v, output, lse, grad_output, causal=causal, block_q=64, block_k=256)
        backward_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert forward_peak < one_square / 8, forward_peak
    assert backward_peak < one_square / 4, backward_peak


def _qkv(n_q=4, n_k=4, d=3):
    return np.ones((n_q, d)), np.ones((n_k, d)), np.ones((n_k, d))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: flash_attention(*_qkv(), block_q=0), ValueError, "block_q must be a positive integer, got 0"),
        (lambda: flash_attention(*_qkv(), block_k=-3), ValueError, "block_k must be a positive integer, got -3"),
        (lambda: flash_attention(*_qkv(), block_k=2.5), TypeError, "block_k"),
        (lambda: flash_attention(np.ones((4, 3)), np.ones((4, 2)), np.ones((4, 3))), ValueError, "d_k"),
        (lambda: flash_attention(np.ones((4, 3)), np.ones((4, 3)), np.ones((5, 3))), ValueError, "positions"),
        (lambda: flash_attention(np.ones(3), np.ones((4, 3)), np.ones((4, 3))), ValueError, "dimension"),
        (lambda: flash_attention(*_qkv(n_q=5, n_k=4), causal=True), ValueError, "n_k >= n_q"),
        (lambda: flash_attention(*_qkv(), scale=-1.0), ValueError, "scale"),
        (lambda: flash_attention(np.ones((4, 3), int), np.ones((4, 3)), np.ones((4, 3))), TypeError, "floating"),
        (lambda: flash_attention(*_qkv(), return_lse="yes"), TypeError, "return_lse must be True or False"),
        (lambda: flash_attention_backward(*_qkv(), np.ones((4, 3)), np.ones(5), np.ones((4, 3))), ValueError, "lse"),
        (lambda: flash_attention_backward(*_qkv(), np.ones((4, 2)), np.ones(4), np.ones((4, 3))), ValueError, "output"),
        (lambda: flash_attention_backward(*_qkv(), np.ones((4, 3)), np.ones(4), np.ones((4, 3)), block_q=0),
         ValueError, "block_q"),
    ],
)
def test_bad_input_is_reported(call, error, words):
    with pytest.raises(error, match=words):
        call()
