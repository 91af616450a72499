"""Rotary embeddings, sinusoidal positions and ALiBi: their defining properties, the twins, and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnlib.numpy as anp
import attnlib.torch as at

DOUBLE = dict(rtol=0, atol=1e-12)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rope_by_complex_numbers(x, positions, base, interleaved):
    """RoPE as the RoFormer paper writes it: each pair of features is a complex number, multiplied by e^(i theta)."""
    d = x.shape[-1]
    if interleaved:
        pairs = torch.complex(x[..., 0::2], x[..., 1::2])
    else:
        pairs = torch.complex(x[..., : d // 2], x[..., d // 2:])
    theta = positions.double()[:, None] * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    turned = pairs * torch.polar(torch.ones_like(theta), theta)
    if interleaved:
        return torch.stack([turned.real, turned.imag], dim=-1).flatten(-2)
    return torch.cat([turned.real, turned.imag], dim=-1)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_torch_rope_equals_complex_multiplication(interleaved, base):
    x = _x(2, 3, 7, 16)
    positions = torch.tensor([0, 1, 2, 5, 9, 100, 4096])
    expected = _rope_by_complex_numbers(x, positions, base, interleaved)
    torch.testing.assert_close(at.apply_rope(x, positions, base=base, interleaved=interleaved), expected, **DOUBLE)


@pytest.mark.parametrize("interleaved", [False, True])
def test_numpy_twin_equals_torch(interleaved):
    x, positions = _x(3, 9, 12, seed=1), torch.arange(3, 12)
    ours = anp.apply_rope(x.numpy(), positions.numpy(), interleaved=interleaved)
    np.testing.assert_allclose(ours, at.apply_rope(x, positions, interleaved=interleaved).numpy(), **DOUBLE)
    np.testing.assert_allclose(anp.rope_angles(positions.numpy(), 12), at.rope_angles(positions, 12).numpy(),
                               **DOUBLE)
    np.testing.assert_allclose(anp.sinusoidal_positions(9, 12), at.sinusoidal_positions(9, 12, dtype=torch.float64)
                               .numpy(), **DOUBLE)
    for heads in (1, 6, 8, 12):
        np.testing.assert_allclose(anp.alibi_bias(heads, 4, 9), at.alibi_bias(heads, 4, 9, dtype=torch.float64)
                                   .numpy(), **DOUBLE)


def test_the_two_layouts_agree_up_to_a_fixed_permutation_of_features():
    d = 10
    # Feature order that puts the interleaved pairs (0, 1), (2, 3), ... at (i, i + d/2): evens first, then odds.
    to_halves = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    x, positions = _x(4, 6, d, seed=2), torch.arange(6)
    interleaved = at.apply_rope(x, positions, interleaved=True)
    halves = at.apply_rope(x[..., to_halves], positions, interleaved=False)
    torch.testing.assert_close(halves, interleaved[..., to_halves], **DOUBLE)
    # ... and they are genuinely different layouts: without the permutation they disagree.
    assert not torch.allclose(at.apply_rope(x, positions), interleaved)


def test_position_zero_is_the_identity_and_positions_are_per_row():
    x = _x(5, 8, seed=3)
    torch.testing.assert_close(at.apply_rope(x, torch.zeros(5, dtype=torch.long)), x, **DOUBLE)
    rotated = at.apply_rope(x, torch.tensor([0, 3, 3, 7, 1]))
    torch.testing.assert_close(rotated[1], at.apply_rope(x[1:2], torch.tensor([3]))[0], **DOUBLE)
    assert not torch.allclose(rotated[3], x[3])


offsets = st.integers(min_value=0, max_value=5000)


@given(p=offsets, p_other=offsets, shift=offsets, interleaved=st.booleans(), seed=st.integers(0, 2**16))
def test_scores_depend_only_on_the_offset(p, p_other, shift, interleaved, seed):
    q, k = _x(2, 16, seed=seed)
    def score(position_q, position_k):
        turned_q = at.apply_rope(q[None], torch.tensor([position_q]), interleaved=interleaved)
        turned_k = at.apply_rope(k[None], torch.tensor([position_k]), interleaved=interleaved)
        return float((turned_q * turned_k).sum())

    assert score(p + shift, p_other + shift) == pytest.approx(score(p, p_other), abs=1e-9)


@given(p=offsets, interleaved=st.booleans(), seed=st.integers(0, 2**16))
def test_rotation_preserves_norms(p, interleaved, seed):
    x = _x(3, 1, 8, seed=seed)
    rotated = anp.apply_rope(x.numpy(), np.array([p]), interleaved=interleaved)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x.numpy(), axis=-1), rtol=1e-12)


def test_float32_stays_float32_and_gradients_flow():
    x = _x(4, 8).float().requires_grad_(True)
    y = at.apply_rope(x, torch.arange(4))
    assert y.dtype == torch.float32
    y.square().sum().backward()  # a rotation keeps the norm, so d|y|^2/dx = 2x
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-5, atol=1e-5)
    assert anp.apply_rope(x.detach().numpy(), np.arange(4)).dtype == np.float32


def test_sinusoidal_positions_are_the_transformer_table():
    table = anp.sinusoidal_positions(50, 8)
    p, i = 37, 3
    assert table[p, 2 * i] == pytest.approx(np.sin(p / 10000 ** (2 * i / 8)))
    assert table[p, 2 * i + 1] == pytest.approx(np.cos(p / 10000 ** (2 * i / 8)))
    # The vector at p + s is a fixed rotation of the one at p: the dot products depend only on s.
    assert table[3] @ table[10] == pytest.approx(table[20] @ table[27])


def test_alibi_slopes_follow_press_et_al():
    np.testing.assert_allclose(anp.alibi_slopes(8), [2.0 ** -(h + 1) for h in range(8)], rtol=0, atol=0)
    np.testing.assert_allclose(anp.alibi_slopes(4), [2.0 ** -(2 * (h + 1)) for h in range(4)], rtol=0, atol=0)
    # Not a power of two: the 8-head slopes, then every other slope of 16 heads: 2^-0.5, 2^-1.5, ...
    expected_12 = [2.0 ** -(h + 1) for h in range(8)] + [2.0 ** -(0.5 + h) for h in range(4)]
    np.testing.assert_allclose(anp.alibi_slopes(12), expected_12, rtol=1e-15)
    torch.testing.assert_close(at.alibi_slopes(12, dtype=torch.float64), torch.tensor(expected_12,
                                                                                     dtype=torch.float64))
    assert len(anp.alibi_slopes(5)) == 5 and len(set(anp.alibi_slopes(7))) == 7


def test_alibi_bias_is_slope_times_distance_bottom_right():
    bias = anp.alibi_bias(4, 3, 6)
    slopes = anp.alibi_slopes(4)
    for h in range(4):
        for i in range(3):
            p = i + 3
            for j in range(6):
                assert bias[h, i, j] == slopes[h] * (j - p)
    assert np.all(bias[:, -1, -1] == 0)  # a token's distance to itself is zero
    assert np.array_equal(anp.alibi_bias(2, 5), anp.alibi_bias(2, 5, 5))


def test_alibi_through_attention_equals_sdpa_float_mask():
    q, k, v = _x(2, 4, 5, 8, seed=4), _x(2, 4, 5, 8, seed=5), _x(2, 4, 5, 8, seed=6)
    bias = at.alibi_bias(4, 5, dtype=torch.float64)
    output, _ = at.attention(q, k, v, causal=True, bias=bias)
    attn_mask = bias.masked_fill(~at.causal_mask(5), float("-inf"))
    torch.testing.assert_close(output, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask),
                               **DOUBLE)


BAD = [
    ("odd d", lambda: at.apply_rope(_x(4, 7), torch.arange(4)), ValueError, r"x must have an even last dim.*\(4, 7\)"),
    ("odd d numpy", lambda: anp.apply_rope(np.ones((4, 5)), np.arange(4)), ValueError, r"even last dimension"),
    ("float positions", lambda: at.apply_rope(_x(4, 8), torch.arange(4.0)), TypeError,
     r"positions must hold integer positions.*float32"),
    ("bool positions", lambda: anp.apply_rope(np.ones((2, 8)), np.array([True, False])), TypeError,
     r"positions must hold integer positions.*bool"),
    ("wrong length", lambda: at.apply_rope(_x(4, 8), torch.arange(5)), ValueError,
     r"positions must have shape \(4,\).*got shape \(5,\)"),
    ("2-D positions", lambda: anp.apply_rope(np.ones((4, 8)), np.zeros((1, 4), dtype=int)), ValueError,
     r"positions must have shape \(4,\)"),
    ("negative positions", lambda: at.apply_rope(_x(2, 8), torch.tensor([0, -1])), ValueError,
     r"positions must be non-negative, got a minimum of -1"),
    ("1-D x", lambda: at.apply_rope(_x(8), torch.arange(1)), ValueError, r"x must have at least 2 dim"),
    ("NaN x", lambda: anp.apply_rope(np.full((2, 4), np.nan), np.arange(2)), ValueError, r"x contains NaN"),
    ("base", lambda: at.apply_rope(_x(2, 4), torch.arange(2), base=0.0), ValueError, r"base must be a finite pos"),
    ("numpy into torch", lambda: at.apply_rope(np.ones((2, 4)), torch.arange(2)), TypeError, r"x is a NumPy array"),
    ("odd sinusoidal", lambda: anp.sinusoidal_positions(4, 5), ValueError, r"d must be even"),
    ("alibi heads", lambda: at.alibi_slopes(0), ValueError, r"n_heads must be a positive integer, got 0"),
    ("alibi n_k < n_q", lambda: anp.alibi_bias(2, 5, 3), ValueError, r"n_k >= n_q.*n_q=5, n_k=3"),
    ("angles odd d", lambda: anp.rope_angles(np.arange(3), 7), ValueError, r"d must be even.*7"),
]


@pytest.mark.parametrize("description,call,error,message", BAD, ids=[case[0] for case in BAD])
def test_bad_input_is_refused_by_name(description, call, error, message):
    with pytest.raises(error, match=message):
        call()
