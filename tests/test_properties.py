"""Property tests: the invariants the book states, checked on many random inputs."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import attnlib.numpy as anp
import attnlib.torch as at

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
shapes = st.tuples(st.integers(1, 4), st.integers(1, 9))


@given(arrays(np.float64, shapes, elements=finite), st.floats(-1e3, 1e3))
def test_softmax_rows_sum_to_one_and_ignore_shifts(x, shift):
    p = anp.softmax(x)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(anp.softmax(x + shift), p, atol=1e-12)
    np.testing.assert_allclose(at.softmax(torch.from_numpy(x)).numpy(), p, atol=1e-14)


@given(st.integers(1, 8), st.integers(0, 8), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_causal_weights_above_bottom_right_diagonal_are_exactly_zero(n_q, extra, d, seed):
    n_k = n_q + extra
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(n_q, d)), rng.normal(size=(n_k, d)), rng.normal(size=(n_k, d))
    _, weights = anp.attention(q, k, v, causal=True)
    rows, cols = np.indices((n_q, n_k))
    future = cols > rows + (n_k - n_q)
    assert np.all(weights[future] == 0.0)
    assert np.all(weights[~future] > 0.0)
    np.testing.assert_allclose(weights[-1].sum(), 1.0)  # the last query sees every key
    _, torch_weights = at.attention(*(torch.from_numpy(a) for a in (q, k, v)), causal=True)
    assert torch.all(torch_weights[torch.from_numpy(future)] == 0.0)


@given(st.integers(2, 8), st.integers(0, 7), st.integers(0, 2**31 - 1))
def test_layer_norm_is_position_wise(n, position, seed):
    position = position % n
    rng = np.random.default_rng(seed)
    norm = anp.LayerNorm(6)
    norm.weight, norm.bias = rng.normal(size=6), rng.normal(size=6)
    x = rng.normal(size=(n, 6)) * 4
    changed = x.copy()
    others = np.arange(n) != position
    changed[others] = rng.normal(size=(others.sum(), 6)) * 100
    np.testing.assert_array_equal(norm(x)[position], norm(changed)[position])
    out = norm(x)  # standard scores before the affine map: mean 0, variance 1 per position
    z = (out - norm.bias) / norm.weight
    np.testing.assert_allclose(z.mean(-1), 0, atol=1e-10)
    np.testing.assert_allclose(z.var(-1), 1, rtol=1e-4)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_stacked_linear_maps_collapse_but_relu_breaks_it(d_in, d_hidden, d_out, seed):
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(d_in, d_hidden)), rng.normal(size=d_hidden)
    w2, b2 = rng.normal(size=(d_hidden, d_out)), rng.normal(size=d_out)
    x = rng.normal(size=(64, d_in))
    stacked = (x @ w1 + b1) @ w2 + b2
    np.testing.assert_allclose(stacked, x @ (w1 @ w2) + (b1 @ w2 + b2), atol=1e-10)
    # With ReLU in between, the best single affine map (least squares) leaves a residual, unless ReLU was
    # inactive or fully active on every sample (then it is linear on this data): check that case explicitly.
    pre = x @ w1 + b1
    relu_out = anp.relu(pre) @ w2 + b2
    design = np.hstack([x, np.ones((64, 1))])
    fit, *_ = np.linalg.lstsq(design, relu_out, rcond=None)
    residual = np.abs(design @ fit - relu_out).max()
    mixed_units = [j for j in range(d_hidden) if (pre[:, j] > 0).any() and (pre[:, j] < 0).any()]
    if mixed_units and np.abs(w2[mixed_units]).max() > 1e-6:
        assert residual > 1e-6
    else:
        assert residual < 1e-8


@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_kv_cached_decoding_equals_full_forward(prompt_length, n_new, seed):
    torch.manual_seed(seed)
    model = at.TransformerLM(17, 16, 4, 32, 2, 16).double().eval()
    ids = torch.randint(0, 17, (2, prompt_length + n_new))
    full = model(ids)
    cache = model.new_cache()
    steps = [model(ids[:, :prompt_length], kv_cache=cache)]
    for t in range(prompt_length, prompt_length + n_new):
        steps.append(model(ids[:, t:t + 1], kv_cache=cache))  # one new token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-12)
    assert cache.length == prompt_length + n_new
    prompt = ids[:1, :prompt_length]
    assert torch.equal(model.generate(prompt, n_new), model.generate(prompt, n_new, use_kv_cache=False))


def test_numpy_kv_cached_decoding_equals_full_forward():
    model = anp.TransformerLM(11, 8, 2, 16, 2, 12, seed=3)
    ids = np.random.default_rng(0).integers(0, 11, size=(1, 9))
    cache = model.new_cache()
    steps = [model(ids[:, :4], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(4, 9)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), model(ids), rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_give_zero_weights_and_zero_output_not_nan():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    mask = np.ones((3, 5), dtype=bool)
    mask[1] = False  # query 1 may attend to nothing
    for output, weights in (anp.attention(q, k, v, mask=mask),
                            [t.numpy() for t in at.attention(*map(torch.from_numpy, (q, k, v)),
                                                             mask=torch.from_numpy(mask))]):
        assert np.all(weights[1] == 0) and np.all(output[1] == 0)
        assert np.isfinite(output).all()
        np.testing.assert_allclose(weights[[0, 2]].sum(-1), 1.0)
    qt, kt, vt = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    at.attention(qt, kt, vt, mask=torch.from_numpy(mask))[0].sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (qt, kt, vt))
