"""Online softmax: streaming states equal the softmax, merges are associative, the exam-grading numbers hold."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnlib import numpy as anp
from attnlib import torch as atorch
from attnlib.numpy.online_softmax import (
    SoftmaxState,
    merge,
    online_softmax,
    online_softmax_steps,
    rescale_factor,
    three_pass_softmax,
)


@st.composite
def rows(draw, max_len=40, allow_masked=True):
    """A (batch, length) float64 array of scores, possibly with -inf (masked) entries and extreme values."""
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, max_len))
    magnitude = draw(st.sampled_from([1.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length)) * magnitude
    if allow_masked and draw(st.booleans()):
        x[rng.random(x.shape) < 0.3] = -np.inf
    return x


def test_exam_grading_story():
    """The first batch's best score is 80; the second has a 90: the old sum is rescaled by exp(80 - 90)."""
    first = np.array([62.0, 71.0, 80.0, 55.0, 68.0, 74.0, 59.0, 77.0, 66.0, 70.0])
    second = np.array([64.0, 90.0, 58.0, 73.0, 81.0, 69.0, 60.0, 75.0, 52.0, 67.0])
    state_1 = SoftmaxState.empty().update(first)
    assert state_1.m == 80.0
    state_2 = state_1.update(second)
    assert state_2.m == 90.0
    factor = rescale_factor(state_1.m, state_2.m)
    assert factor == pytest.approx(np.exp(-10.0), rel=1e-15)
    assert state_2.l == pytest.approx(state_1.l * factor + np.exp(second - 90.0).sum(), rel=1e-15)
    both = np.concatenate([first, second])
    assert state_2.l == pytest.approx(np.exp(both - both.max()).sum(), rel=1e-14)
    np.testing.assert_allclose(state_2.probabilities(both), anp.softmax(both), rtol=1e-14, atol=0)


@given(rows())
def test_three_pass_equals_softmax(x):
    np.testing.assert_allclose(three_pass_softmax(x), anp.softmax(x), rtol=1e-13, atol=1e-300)


@given(rows(), st.sampled_from([1, 2, 3, 7, 16, 1000]))
def test_online_equals_softmax_any_block_size(x, block_size):
    got = online_softmax(x, block_size)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, anp.softmax(x), rtol=1e-12, atol=1e-300)


@given(rows(), st.integers(1, 9))
def test_steps_track_prefix_max_and_sum(x, block_size):
    """After each block the state summarises exactly the prefix seen so far."""
    for index, state in enumerate(online_softmax_steps(x, block_size)):
        prefix = x[:, : (index + 1) * block_size]
        m = prefix.max(axis=-1)
        np.testing.assert_array_equal(state.m, m)
        shift = np.where(np.isneginf(m), 0.0, m)
        np.testing.assert_allclose(state.l, np.exp(prefix - shift[:, None]).sum(-1), rtol=1e-12, atol=0)


@given(rows(max_len=30), st.data())
def test_merge_is_associative_for_any_split_and_tree(x, data):
    """Cut a row into random pieces, summarise each, merge them in a random tree: always the full softmax."""
    length = x.shape[-1]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, length - 1)), max_size=6)) if length > 1 else [])
    pieces = np.split(x, cuts, axis=-1)
    states = [SoftmaxState.from_block(piece) for piece in pieces]
    while len(states) > 1:  # merge a random adjacent-or-not pair until one state is left
        a = states.pop(data.draw(st.integers(0, len(states) - 1)))
        b = states.pop(data.draw(st.integers(0, len(states) - 1)))
        states.append(merge(a, b) if data.draw(st.booleans()) else merge(b, a))
    full = SoftmaxState.from_block(x)
    np.testing.assert_array_equal(states[0].m, full.m)
    np.testing.assert_allclose(states[0].l, full.l, rtol=1e-12, atol=0)
    np.testing.assert_allclose(states[0].probabilities(x), anp.softmax(x), rtol=1e-12, atol=1e-300)


def test_empty_state_is_the_identity_and_logsumexp():
    x = np.array([[1.0, 2.0, 3.0], [-np.inf, -np.inf, -np.inf]])
    state = SoftmaxState.from_block(x)
    for merged in (merge(SoftmaxState.empty((2,)), state), merge(state, SoftmaxState.empty((2,)))):
        np.testing.assert_array_equal(merged.m, state.m)
        np.testing.assert_array_equal(merged.l, state.l)
    lse = state.logsumexp()
    assert lse[0] == pytest.approx(np.log(np.exp(x[0]).sum()), rel=1e-15)
    assert lse[1] == -np.inf
    np.testing.assert_array_equal(state.probabilities(x)[1], np.zeros(3))  # fully masked row: zeros, not NaN


def test_extreme_values_stay_finite():
    x = np.array([[1e4, -1e4, 9999.0, 0.0], [-1e4, -1e4 + 1.0, -1e4 + 2.0, -np.inf]])
    got = online_softmax(x, 1)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, anp.softmax(x), rtol=1e-13, atol=1e-300)


@given(rows(), st.integers(1, 9))
def test_torch_twin_matches_numpy(x, block_size):
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(atorch.online_softmax(xt, block_size).numpy(), online_softmax(x, block_size), rtol=1e-13)
    np.testing.assert_allclose(atorch.three_pass_softmax(xt).numpy(), three_pass_softmax(x), rtol=1e-13)
    for numpy_state, torch_state in zip(
        online_softmax_steps(x, block_size), atorch.online_softmax_steps(xt, block_size), strict=True
    ):
        np.testing.assert_array_equal(torch_state.m.numpy(), numpy_state.m)
        np.testing.assert_allclose(torch_state.l.numpy(), numpy_state.l, rtol=1e-13)
    a, b = atorch.SoftmaxState.from_block(xt[:, :1]), atorch.SoftmaxState.from_block(xt)
    np.testing.assert_allclose(
        atorch.merge(a, b).logsumexp().numpy(), merge(SoftmaxState.from_block(x[:, :1]), SoftmaxState.from_block(x))
        .logsumexp(), rtol=1e-13
    )


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: online_softmax(np.ones(4), 0), ValueError, "block_size"),
        (lambda: online_softmax(np.ones(4), 1.5), TypeError, "block_size"),
        (lambda: online_softmax(np.array([1.0, np.nan]), 1), ValueError, "NaN"),
        (lambda: online_softmax(np.array([1.0, np.inf]), 1), ValueError, "+inf"),
        (lambda: online_softmax(np.arange(4), 2), TypeError, "floating-point"),
        (lambda: online_softmax(np.ones((2, 0)), 2), ValueError, "empty"),
        (lambda: SoftmaxState.from_block(np.float64(1.0)), ValueError, "dimension"),
        (lambda: merge(SoftmaxState.empty(), (0.0, 1.0)), TypeError, "SoftmaxState"),
        (lambda: merge(SoftmaxState.empty((2,)), SoftmaxState.empty((3,))), ValueError, "(2,) and (3,)"),
        (lambda: atorch.online_softmax(torch.ones(4), 0), ValueError, "block_size"),
        (lambda: atorch.online_softmax(np.ones(4), 2), TypeError, "x is a NumPy array.*torch.from_numpy"),
        (lambda: atorch.merge(atorch.SoftmaxState.empty((2,)), atorch.SoftmaxState.empty((3,))), ValueError, "(3,)"),
    ],
)
def test_bad_input_is_reported(call, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        call()
