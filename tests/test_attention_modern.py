"""attention with a sliding window, an additive bias and grouped key/value heads, against PyTorch's SDPA."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import attnlib
import attnlib.numpy as anp
import attnlib.torch as at

DOUBLE = dict(rtol=0, atol=1e-12)


def _qkv(batch, heads, kv_heads, n_q, n_k, d, *, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    tensors = (torch.randn(*batch, heads, n_q, d, generator=generator, dtype=torch.float64),
               torch.randn(*batch, kv_heads, n_k, d, generator=generator, dtype=torch.float64),
               torch.randn(*batch, kv_heads, n_k, d, generator=generator, dtype=torch.float64))
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


def _band(n_q, n_k, window):
    """The sliding-window mask written out by hand: query i at p = i + n_k - n_q sees p - window < j <= p."""
    rows = []
    for i in range(n_q):
        p = i + n_k - n_q
        rows.append([p - window < j <= p for j in range(n_k)])
    return torch.tensor(rows)


@pytest.mark.parametrize("n_q,n_k,window", [(7, 7, 1), (7, 7, 3), (4, 9, 2), (1, 9, 4), (6, 6, 10)])
def test_causal_mask_with_window_is_the_band(n_q, n_k, window):
    expected = _band(n_q, n_k, window)
    assert torch.equal(at.causal_mask(n_q, n_k, window=window), expected)
    assert np.array_equal(anp.causal_mask(n_q, n_k, window=window), expected.numpy())
    # Every query sees exactly min(window, keys up to itself) keys, itself included.
    positions = torch.arange(n_q) + n_k - n_q
    assert torch.equal(expected.sum(-1), torch.clamp(positions + 1, max=window))


def test_window_as_long_as_the_keys_is_plain_causal():
    assert torch.equal(at.causal_mask(5, 8, window=8), at.causal_mask(5, 8))


@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (6, 3), (6, 2), (6, 1), (4, 4)])
@pytest.mark.parametrize("n_q,n_k", [(5, 5), (3, 8), (1, 8)])
def test_grouped_heads_equal_sdpa(heads, kv_heads, n_q, n_k):
    q, k, v = _qkv((2,), heads, kv_heads, n_q, n_k, 8)
    output, weights = at.attention(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(output, expected, **DOUBLE)
    assert weights.shape == (2, heads, n_q, n_k)
    # Query head h reads key/value head h // (heads // kv_heads): recompute one head by hand.
    h = heads - 1
    by_hand = torch.softmax(q[:, h] @ k[:, h // (heads // kv_heads)].transpose(-1, -2) / np.sqrt(8), dim=-1)
    torch.testing.assert_close(weights[:, h], by_hand, **DOUBLE)


@pytest.mark.parametrize("window", [1, 2, 5])
@pytest.mark.parametrize("n_q,n_k", [(6, 6), (3, 8), (1, 8)])
def test_window_equals_sdpa_with_a_banded_mask(window, n_q, n_k):
    q, k, v = _qkv((2,), 4, 2, n_q, n_k, 8, seed=1)
    output, weights = at.attention(q, k, v, causal=True, window=window)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=_band(n_q, n_k, window), enable_gqa=True)
    torch.testing.assert_close(output, expected, **DOUBLE)
    assert torch.all(weights[..., ~_band(n_q, n_k, window)] == 0)


def test_window_combines_with_mask_and_key_mask_by_and():
    q, k, v = _qkv((2,), 4, 2, 6, 6, 8, seed=2)
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(3)) > 0.3
    mask |= torch.eye(6, dtype=torch.bool)  # every query keeps itself, so no row is empty
    key_mask = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    output, _ = at.attention(q, k, v, causal=True, window=3, mask=mask, key_mask=key_mask[:, None])
    combined = _band(6, 6, 3) & mask & key_mask[:, None, None, :]  # (2, 1, 6, 6)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=combined, enable_gqa=True)
    torch.testing.assert_close(output, expected, **DOUBLE)


@pytest.mark.parametrize("bias_shape", [(5, 7), (1, 5, 7), (6, 5, 7), (2, 6, 5, 7), (2, 1, 1, 7)])
def test_bias_equals_sdpa_float_mask(bias_shape):
    q, k, v = _qkv((2,), 6, 3, 5, 7, 8, seed=4)
    bias = torch.randn(*bias_shape, dtype=torch.float64)
    output, weights = at.attention(q, k, v, bias=bias)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    torch.testing.assert_close(output, expected, **DOUBLE)
    # The bias really moved the weights (a test that passes with the bias ignored would be worthless).
    assert not torch.allclose(weights, at.attention(q, k, v)[1])


def test_bias_window_causal_and_groups_together():
    q, k, v = _qkv((3,), 8, 2, 4, 10, 16, seed=5)
    bias = torch.randn(8, 4, 10, dtype=torch.float64)
    output, _ = at.attention(q, k, v, causal=True, window=4, bias=bias, scale=0.3)
    attn_mask = bias.masked_fill(~_band(4, 10, 4), float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True, scale=0.3)
    torch.testing.assert_close(output, expected, **DOUBLE)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_numpy_twin_equals_torch(kv_heads):
    q, k, v = _qkv((2,), 4, kv_heads, 5, 9, 8, seed=6)
    bias = torch.randn(4, 5, 9, dtype=torch.float64)
    mask = torch.rand(2, 1, 5, 9, generator=torch.Generator().manual_seed(7)) > 0.2
    arguments = dict(causal=True, window=3)
    out_t, w_t = at.attention(q, k, v, bias=bias, mask=mask, **arguments)
    out_n, w_n = anp.attention(q.numpy(), k.numpy(), v.numpy(), bias=bias.numpy(), mask=mask.numpy(), **arguments)
    np.testing.assert_allclose(out_n, out_t.numpy(), **DOUBLE)
    np.testing.assert_allclose(w_n, w_t.numpy(), **DOUBLE)


def test_gradients_through_the_grouped_path_equal_sdpa():
    q, k, v = _qkv((2,), 6, 2, 5, 5, 8, seed=8, requires_grad=True)
    bias = torch.randn(6, 5, 5, dtype=torch.float64, requires_grad=True)
    grad_output = torch.randn(2, 6, 5, 8, dtype=torch.float64)
    ours, _ = at.attention(q, k, v, causal=True, window=2, bias=bias)
    ours_grads = torch.autograd.grad(ours, (q, k, v, bias), grad_output)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~_band(5, 5, 2), float("-inf")),
                                            enable_gqa=True)
    theirs_grads = torch.autograd.grad(theirs, (q, k, v, bias), grad_output)
    for name, a, b in zip("q k v bias".split(), ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, **DOUBLE, msg=name)


class _LargestNewTensor(TorchDispatchMode):
    """Records the bytes of the largest new storage any aten operation allocates (views of inputs do not count)."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for tensor in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, tensor.untyped_storage().nbytes())
        return result


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_path_never_copies_keys_per_query_head(kv_heads):
    # One query per head against many keys: a copy of k or v per query head (repeat_interleave, or an expand that
    # a matmul materialises) is 8 / kv_heads times k; nothing the grouped path allocates is even as large as k.
    q, k, v = _qkv((2,), 8, kv_heads, 1, 1000, 64, seed=9)
    k_bytes = k.numel() * k.element_size()
    # The door's NaN scan reads every element of k (that is its job); measure the computation itself.
    with attnlib.finite_checks_set_to(False), _LargestNewTensor() as recorder:
        output, _ = at.attention(q, k, v)
    assert recorder.largest < k_bytes, (recorder.largest, k_bytes)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(q, k, v, enable_gqa=True), **DOUBLE)
    with _LargestNewTensor() as copying:  # the recorder does see a copy when one is made
        torch.repeat_interleave(k, 8 // kv_heads, dim=-3)
    assert copying.largest == 8 * k_bytes // kv_heads


def _n(*shape):
    return np.ones(shape)


def _t(*shape):
    return torch.ones(*shape, dtype=torch.float64)


BAD = [
    ("window without causal", lambda: at.attention(_t(4, 3), _t(4, 3), _t(4, 3), window=2), ValueError,
     r"window=2 needs causal=True"),
    ("window without causal numpy", lambda: anp.attention(_n(4, 3), _n(4, 3), _n(4, 3), window=2), ValueError,
     r"window=2 needs causal=True"),
    ("window zero", lambda: at.attention(_t(4, 3), _t(4, 3), _t(4, 3), causal=True, window=0), ValueError,
     r"window must be a positive integer.*got 0"),
    ("window float", lambda: anp.attention(_n(4, 3), _n(4, 3), _n(4, 3), causal=True, window=2.0), TypeError,
     r"window must be a positive integer or None.*2.0"),
    ("window mask zero", lambda: anp.causal_mask(4, window=0), ValueError, r"window must be a positive integer"),
    ("bias -inf", lambda: at.attention(_t(4, 3), _t(4, 3), _t(4, 3), bias=torch.full((4, 4), float("-inf"),
                                                                                      dtype=torch.float64)),
     ValueError, r"bias contains NaN or infinity.*boolean mask"),
    ("bias NaN numpy", lambda: anp.attention(_n(4, 3), _n(4, 3), _n(4, 3), bias=np.full((4, 4), np.nan)),
     ValueError, r"bias contains NaN"),
    ("bias shape", lambda: at.attention(_t(2, 4, 3), _t(2, 5, 3), _t(2, 5, 3), bias=_t(4, 4)), ValueError,
     r"bias of shape \(4, 4\) does not broadcast to .* \(2, 4, 5\)"),
    ("bias heads", lambda: anp.attention(_n(6, 4, 3), _n(2, 5, 3), _n(2, 5, 3), bias=_n(2, 4, 5)), ValueError,
     r"bias of shape \(2, 4, 5\) does not broadcast to .* \(6, 4, 5\)"),
    ("bias dtype", lambda: at.attention(_t(4, 3), _t(4, 3), _t(4, 3), bias=torch.zeros(4, 4)), TypeError,
     r"bias has dtype torch.float32 but q, k and v are torch.float64"),
    ("bias integer", lambda: anp.attention(_n(4, 3), _n(4, 3), _n(4, 3), bias=np.zeros((4, 4), dtype=int)),
     TypeError, r"bias must have a floating-point dtype"),
    ("bias numpy to torch", lambda: at.attention(_t(4, 3), _t(4, 3), _t(4, 3), bias=np.zeros((4, 4))), TypeError,
     r"bias is a NumPy array"),
    ("heads do not divide", lambda: at.attention(_t(2, 6, 4, 3), _t(2, 4, 4, 3), _t(2, 4, 4, 3)), ValueError,
     r"q \(2, 6, 4, 3\), k \(2, 4, 4, 3\).*q has 6 heads and k has 4.*multiple of the number of key/value"),
    ("heads do not divide numpy", lambda: anp.attention(_n(3, 4, 3), _n(2, 4, 3), _n(2, 4, 3)), ValueError,
     r"q \(3, 4, 3\), k \(2, 4, 3\).*q has 3 heads and k has 2.*multiple of the number of key/value"),
    ("k and v heads differ", lambda: at.attention(_t(6, 4, 3), _t(2, 4, 3), _t(3, 4, 3)), ValueError,
     r"k and v must have the same number of heads.*v \(3, 4, 3\)"),
]


@pytest.mark.parametrize("description,call,error,message", BAD, ids=[case[0] for case in BAD])
def test_bad_input_is_refused_by_name(description, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_one_key_head_with_per_head_values_still_broadcasts():
    q, k, v = _qkv((2,), 4, 1, 3, 5, 8, seed=10)
    v = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    output, _ = at.attention(q, k, v)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(q, k.expand(2, 4, 5, 8), v), **DOUBLE)
    np.testing.assert_allclose(anp.attention(q.numpy(), k.numpy(), v.numpy())[0], output.numpy(), **DOUBLE)
