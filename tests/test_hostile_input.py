"""Fair but unusual calls, the way a careful and hostile user makes them: each is refused by name or answered exactly.

Every case runs in both twins (``attnlib.numpy`` and ``attnlib.torch``) and must behave the same: the same
exception type with a message that names the argument, or the same numbers as a float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlib
import attnlib.numpy as anp
import attnlib.torch as at


class Twin:
    """One namespace plus a maker of its own arrays, so each case is written once for both."""

    def __init__(self, name, module):
        self.name, self.lib = name, module

    def arr(self, values, dtype="float64"):
        values = np.asarray(values, dtype=dtype)
        return values if self.name == "numpy" else torch.from_numpy(values.copy())

    def ones(self, *shape, dtype="float64"):
        return self.arr(np.ones(shape), dtype)

    def randn(self, *shape, seed=0, dtype="float64"):
        return self.arr(np.random.default_rng(seed).standard_normal(shape), dtype)

    def ids(self, values, dtype="int64"):
        return self.arr(values, dtype)

    def other(self, values):
        """The same values as the *other* namespace's array type."""
        values = np.asarray(values, dtype=np.float64)
        return torch.from_numpy(values.copy()) if self.name == "numpy" else values

    def module(self, name, *args, **kwargs):
        if self.name == "numpy":
            kwargs.setdefault("seed", 0)
        else:
            torch.manual_seed(0)
            kwargs.setdefault("dtype", torch.float64)
        return getattr(self.lib, name)(*args, **kwargs)

    def __repr__(self):
        return self.name


TWINS = [Twin("numpy", anp), Twin("torch", at)]


def numpy(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def reference_attention(q, k, v, allowed=None, scale=None):
    """Float64 attention written out, as the yardstick for the exact-result cases."""
    q, k, v = (np.asarray(numpy(x), dtype=np.float64) for x in (q, k, v))
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    m = scores.max(-1, keepdims=True)
    e = np.exp(scores - np.where(np.isfinite(m), m, 0))
    total = e.sum(-1, keepdims=True)
    weights = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return weights @ v


# ---------------------------------------------------------------------------------------------------------------
# Refusals: (id, call taking a Twin, exception, regex the message must match)
# ---------------------------------------------------------------------------------------------------------------

REFUSALS = [
    # dtypes and array types
    ("complex q", lambda t: t.lib.attention(t.ones(3, 4, dtype="complex128"), t.ones(3, 4), t.ones(3, 4)),
     TypeError, r"q must have a floating-point dtype, got .*complex128"),
    ("integer v", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4, dtype="int32")),
     TypeError, r"v must have a floating-point dtype"),
    ("bool k", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4, dtype="bool"), t.ones(3, 4)),
     TypeError, r"k must have a floating-point dtype"),
    ("mixed float16/float64", lambda t: t.lib.attention(t.ones(3, 4, dtype="float16"), t.ones(3, 4), t.ones(3, 4)),
     TypeError, r"dtypes must match, got q: .*float16, k: .*float64"),
    ("other namespace's q", lambda t: t.lib.attention(t.other(np.ones((3, 4))), t.ones(3, 4), t.ones(3, 4)),
     TypeError, r"q is a (torch.Tensor|NumPy array) .*attnlib.(numpy|torch) takes"),
    ("other namespace's mask", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4),
                                                         mask=t.other(np.ones((3, 3))) > 0),
     TypeError, r"mask is a (torch.Tensor|NumPy array)"),
    ("other namespace in flash",
     lambda t: t.lib.flash_attention(t.ones(3, 4), t.other(np.ones((3, 4))), t.ones(3, 4)),
     TypeError, r"k is a (torch.Tensor|NumPy array)"),
    ("other namespace in softmax", lambda t: t.lib.softmax(t.other(np.ones(3))), TypeError,
     r"x is a (torch.Tensor|NumPy array)"),
    ("other namespace in a module", lambda t: t.module("LayerNorm", 4)(t.other(np.ones((2, 4)))), TypeError,
     r"x is a (torch.Tensor|NumPy array)"),
    ("float32 input to a float64 module",
     lambda t: t.module("MultiHeadAttention", 8, 2)(t.ones(2, 3, 8, dtype="float32")),
     TypeError, r"x has dtype .*float32 but the module's parameters are .*float64"),
    ("float16 input to a float64 block",
     lambda t: t.module("TransformerBlock", 8, 2, 16)(t.ones(1, 3, 8, dtype="float16")),
     TypeError, r"x has dtype .*float16 but the module's parameters are .*float64"),
    ("uint8 token ids", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8)(t.ids([[1, 2]], "uint8")), TypeError,
     r"ids must hold integer token ids \(int16/int32/int64\), got dtype .*uint8"),
    ("bool token ids", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8)(t.ids([[1, 0]], "bool")), TypeError,
     r"ids must hold integer token ids"),
    ("float prompt", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8).generate(t.ones(1, 2), 1), TypeError,
     r"prompt_ids must hold integer token ids"),
    ("other namespace's prompt", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8).generate(
        t.other(np.ones((1, 2))).long() if t.name == "numpy" else np.ones((1, 2), dtype=np.int64), 1), TypeError,
     r"prompt_ids is a (torch.Tensor|NumPy array)"),
    ("integer mask",
     lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), mask=t.ones(3, 3, dtype="int64")),
     TypeError, r"mask must be boolean \(True = may attend\)"),
    ("float key_mask", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), key_mask=t.ones(3)),
     TypeError, r"key_mask must be boolean \(True = a real token.*PyTorch's key_padding_mask is the opposite"),
    ("dtype argument not floating", lambda t: t.lib.LayerNorm(4, dtype=np.int32 if t.name == "numpy" else torch.int32),
     TypeError, r"dtype must be a (NumPy )?floating-point"),
    # shapes and broadcasting
    ("mask too many dims", lambda t: t.lib.attention(t.ones(3, 4), t.ones(5, 4), t.ones(5, 4),
                                                     mask=t.ones(2, 2, 3, 5, dtype="bool")),
     ValueError, r"mask of shape \(2, 2, 3, 5\) does not broadcast to .*\(3, 5\)"),
    ("mask wrong key count", lambda t: t.lib.attention(t.ones(2, 3, 4), t.ones(2, 5, 4), t.ones(2, 5, 4),
                                                       mask=t.ones(1, 3, 4, dtype="bool")),
     ValueError, r"mask of shape \(1, 3, 4\) does not broadcast to .*\(2, 3, 5\)"),
    ("key_mask wrong length", lambda t: t.lib.attention(t.ones(2, 3, 4), t.ones(2, 5, 4), t.ones(2, 5, 4),
                                                        key_mask=t.ones(2, 4, dtype="bool")),
     ValueError, r"key_mask must have shape \(..., n_k\) with n_k = 5 keys, got shape \(2, 4\)"),
    ("key_mask wrong batch", lambda t: t.lib.attention(t.ones(2, 3, 4), t.ones(2, 5, 4), t.ones(2, 5, 4),
                                                       key_mask=t.ones(3, 5, dtype="bool")),
     ValueError, r"key_mask of shape \(3,\) does not broadcast to the batch dimensions of shape \(2,\)"),
    ("module key_mask wrong length", lambda t: t.module("MultiHeadAttention", 8, 2)(
        t.ones(2, 3, 8), key_mask=t.ones(2, 4, dtype="bool")), ValueError, r"key_mask must have shape .*n_k = 3"),
    ("module mask for the wrong heads", lambda t: t.module("MultiHeadAttention", 8, 2)(
        t.ones(2, 3, 8), mask=t.ones(2, 3, 3, 3, dtype="bool")), ValueError,
     r"mask of shape \(2, 3, 3, 3\) does not broadcast to .*\(2, 2, 3, 3\)"),
    ("batch dims of q and k clash", lambda t: t.lib.flash_attention(t.ones(2, 3, 4), t.ones(3, 3, 4), t.ones(3, 3, 4)),
     ValueError, r"batch dimensions of q, k and v do not broadcast"),
    ("causal with fewer keys", lambda t: t.lib.flash_attention(t.ones(6, 4), t.ones(5, 4), t.ones(5, 4), causal=True),
     ValueError, r"causal attention needs n_k >= n_q"),
    ("empty batch", lambda t: t.lib.attention(t.ones(0, 3, 4), t.ones(0, 3, 4), t.ones(0, 3, 4)), ValueError,
     r"q must not be empty, got shape \(0, 3, 4\)"),
    ("empty keys", lambda t: t.lib.flash_attention(t.ones(3, 4), t.ones(0, 4), t.ones(0, 4)), ValueError,
     r"k must not be empty"),
    ("zero-width features", lambda t: t.lib.attention(t.ones(3, 0), t.ones(3, 0), t.ones(3, 2)), ValueError,
     r"q must not be empty"),
    ("softmax axis out of range", lambda t: t.lib.softmax(t.ones(2, 3), 2), ValueError,
     r"(axis|dim) must be an integer in \[-2, 2\) for x of shape \(2, 3\), got 2"),
    ("module input 1-D", lambda t: t.module("TransformerBlock", 8, 2, 16)(t.ones(8)), ValueError,
     r"x must have at least 2 dimension"),
    ("causal not a flag", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), causal="no"),
     TypeError, r"causal must be True or False, got 'no'"),
    ("return_lse not a flag", lambda t: t.lib.flash_attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), return_lse=2),
     TypeError, r"return_lse must be True or False"),
    ("block size zero", lambda t: t.lib.flash_attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), block_q=0),
     ValueError, r"block_q must be a positive integer, got 0"),
    ("block size bool", lambda t: t.lib.flash_attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), block_k=True),
     TypeError, r"block_k must be a positive integer, got True"),
    # numerics
    ("scale zero", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), scale=0.0), ValueError,
     r"scale must be a finite positive number, got 0.0"),
    ("scale negative (flash)", lambda t: t.lib.flash_attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), scale=-2.0),
     ValueError, r"scale must be a finite positive number, got -2.0"),
    ("scale inf", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), scale=float("inf")), ValueError,
     r"scale must be a finite positive number, got inf"),
    ("scale NaN", lambda t: t.lib.flash_attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), scale=float("nan")),
     ValueError, r"scale must be a finite positive number, got nan"),
    ("scale a string", lambda t: t.lib.attention(t.ones(3, 4), t.ones(3, 4), t.ones(3, 4), scale="1"), TypeError,
     r"scale must be a positive number, got '1'"),
    ("NaN in q (flash)", lambda t: t.lib.flash_attention(t.arr([[np.nan, 0.0]]), t.ones(2, 2), t.ones(2, 2)),
     ValueError, r"q contains NaN or infinity"),
    ("inf in v (module)", lambda t: t.module("LayerNorm", 2)(t.arr([[np.inf, 0.0]])), ValueError,
     r"x contains NaN or infinity"),
    ("scores overflow to +inf", lambda t: t.lib.attention(t.arr([[1e30]], "float32"), t.arr([[1e30]], "float32"),
                                                          t.ones(1, 1, dtype="float32")),
     OverflowError, r"scores q·kᵀ·scale overflowed .*float32 to \+inf"),
    ("scores overflow to +inf (flash)", lambda t: t.lib.flash_attention(
        t.arr([[1e30]], "float32"), t.arr([[1e30], [1.0]], "float32"), t.ones(2, 1, dtype="float32")),
     OverflowError, r"scores q·kᵀ·scale overflowed"),
    ("unmasked row all -inf", lambda t: t.lib.attention(t.arr([[1e30]], "float32"), t.arr([[-1e30]] * 3, "float32"),
                                                        t.ones(3, 1, dtype="float32")),
     OverflowError, r"1 query row\(s\) have every visible score at -inf"),
    ("unmasked row all -inf (flash)", lambda t: t.lib.flash_attention(
        t.arr([[1e30]], "float32"), t.arr([[-1e30]] * 3, "float32"), t.ones(3, 1, dtype="float32"), block_k=2),
     OverflowError, r"1 query row\(s\) have every visible score at -inf"),
    ("float16 products that do overflow", lambda t: t.lib.attention(
        t.arr(np.full((2, 16), 300.0), "float16"), t.arr(np.full((2, 16), 300.0), "float16"),
        t.ones(2, 16, dtype="float16")), OverflowError, r"overflowed .*float16"),
    # constructors and modules
    ("bias not a flag", lambda t: t.module("FeedForward", 4, 8, bias="yes"), TypeError,
     r"bias must be True or False, got 'yes'"),
    ("norm_first not a flag", lambda t: t.module("TransformerBlock", 4, 2, 8, norm_first=None), TypeError,
     r"norm_first must be True or False, got None"),
    ("activation not a string", lambda t: t.module("FeedForward", 4, 8, activation=torch.relu), ValueError,
     r"activation must be one of \('relu', 'gelu', 'gelu_tanh'\)"),
    ("causal model flag", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8, causal="yes"), TypeError,
     r"causal must be True or False"),
    ("use_kv_cache not a flag", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8).generate(
        t.ids([[1]]), 1, use_kv_cache="no"), TypeError, r"use_kv_cache must be True or False"),
    ("n_new a float", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8).generate(t.ids([[1]]), 2.0), TypeError,
     r"n_new must be a non-negative integer, got 2.0"),
    ("negative token id", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8)(t.ids([[-1, 2]])), ValueError,
     r"ids must lie in \[0, 10\), got values from -1 to 2"),
    ("whole KVCache to a layer", lambda t: t.module("TransformerBlock", 8, 2, 16)(
        t.ones(1, 2, 8), kv_cache=t.lib.KVCache(1)), TypeError, r"kv_cache must be one layer's cache: pass cache\[i\]"),
    ("LayerCache to a model", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 1, 8)(
        t.ids([[1]]), kv_cache=t.lib.LayerCache()), TypeError, r"kv_cache must be a .*KVCache \(model.new_cache\(\)\)"),
    ("other namespace's cache", lambda t: t.module("MultiHeadAttention", 8, 2)(
        t.ones(1, 2, 8), kv_cache=(at if t.name == "numpy" else anp).LayerCache()), TypeError,
     r"kv_cache must be a attnlib.(numpy|torch).kv_cache.LayerCache or None"),
    ("a cache with fewer layers", lambda t: t.module("TransformerLM", 10, 8, 2, 16, 2, 8)(
        t.ids([[1, 2]]), kv_cache=t.lib.KVCache(1)), ValueError, r"kv_cache has 1 layers but the model has 2"),
    ("a cache from a wider model", lambda t: _grown_cache(t, heads=4)(t), ValueError,
     r"k of shape \(1, 2, 1, 4\) does not extend the cached keys \(1, 4, 2, 2\)"),
    ("append v shorter than k", lambda t: t.lib.LayerCache().append(t.ones(2, 3, 4), t.ones(2, 2, 4)), ValueError,
     r"k and v must share their batch dimensions and number of positions, got k \(2, 3, 4\) and v \(2, 2, 4\)"),
    ("append v of another dtype",
     lambda t: t.lib.LayerCache().append(t.ones(2, 3, 4), t.ones(2, 3, 4, dtype="float32")),
     TypeError, r"dtypes must match, got k: .*float64, v: .*float32"),
    ("append to a cache of another dtype", lambda t: _cache_holding(t, t.ones(1, 2, 4)).append(
        t.ones(1, 1, 4, dtype="float32"), t.ones(1, 1, 4, dtype="float32")), TypeError,
     r"new keys and values have dtype .*float32, the cache holds .*float64"),
    ("append a wider v", lambda t: _cache_holding(t, t.ones(1, 2, 4)).append(t.ones(1, 1, 4), t.ones(1, 1, 5)),
     ValueError, r"v of shape \(1, 1, 5\) does not extend the cached keys"),
    ("append NaN keys", lambda t: t.lib.LayerCache().append(t.arr([[np.nan]]), t.ones(1, 1)), ValueError,
     r"k contains NaN or infinity"),
    ("from_twin of itself", lambda t: t.lib.FeedForward.from_twin(t.module("FeedForward", 4, 8)), TypeError,
     r"from_twin expects an attnlib.(torch|numpy).FeedForward"),
    ("from_torch of a Linear", lambda t: t.lib.LayerNorm.from_torch(torch.nn.Linear(4, 4)), TypeError,
     r"module must be a torch.nn.LayerNorm, got Linear"),
    ("from_torch of an attnlib module", lambda t: t.lib.TransformerBlock.from_torch(at.TransformerBlock(8, 2, 16)),
     TypeError, r"(module must be a torch.nn.TransformerEncoderLayer|from_torch takes a torch.nn module)"),
]


def _cache_holding(twin, keys):
    cache = twin.lib.LayerCache()
    cache.append(keys, keys)
    return cache


def _grown_cache(twin, heads):
    """A cache filled by a 4-head model, then handed to a 2-head model of the same width."""
    wide = twin.module("TransformerLM", 10, 8, heads, 16, 1, 8)
    cache = wide.new_cache()
    wide(twin.ids([[1, 2]]), kv_cache=cache)
    narrow = twin.module("TransformerLM", 10, 8, 2, 16, 1, 8)
    return lambda t: narrow(t.ids([[3]]), kv_cache=cache)


@pytest.mark.parametrize("twin", TWINS, ids=str)
@pytest.mark.parametrize("description,call,exception,message", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refused_by_name_in_both_twins(twin, description, call, exception, message):
    with pytest.raises(exception, match=message):
        call(twin)


def test_meta_tensors_are_refused_by_name():
    meta = torch.ones(3, 4, device="meta")
    with pytest.raises(ValueError, match=r"q is a meta tensor \(shape \(3, 4\)\)"):
        at.attention(meta, torch.ones(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"k is a meta tensor"):
        at.flash_attention(torch.ones(3, 4), meta, torch.ones(3, 4))


def test_the_numpy_twin_names_the_fix_for_a_torch_tensor():
    with pytest.raises(TypeError, match=r"pass q.detach\(\).cpu\(\).numpy\(\), or use attnlib.torch"):
        anp.attention(torch.ones(3, 4), np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(TypeError, match=r"pass torch.from_numpy\(q\), or use attnlib.numpy"):
        at.attention(np.ones((3, 4)), torch.ones(3, 4), torch.ones(3, 4))


# ---------------------------------------------------------------------------------------------------------------
# Unusual but valid: exact answers, the same in both twins
# ---------------------------------------------------------------------------------------------------------------

EXACT = [
    # (id, q shape, k shape, v shape, causal)  -- batch ranks 2 to 5, broadcasting, n_q != n_k, length 1
    ("rank 2", (5, 4), (5, 4), (5, 3), False),
    ("rank 3", (2, 5, 4), (2, 5, 4), (2, 5, 3), True),
    ("rank 4", (2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 3), True),
    ("rank 5", (2, 1, 2, 5, 4), (1, 3, 2, 5, 4), (2, 3, 1, 5, 3), False),
    ("batch dims only on v", (5, 4), (5, 4), (3, 5, 2), True),
    ("batch dims only on k", (5, 4), (2, 6, 4), (6, 3), True),
    ("fewer queries than keys, causal", (3, 4), (9, 4), (9, 2), True),
    ("more queries than keys", (9, 4), (3, 4), (3, 2), False),
    ("one query, one key", (1, 4), (1, 4), (1, 4), True),
    ("one query, causal decoding step", (2, 1, 4), (2, 8, 4), (2, 8, 4), True),
]


@pytest.mark.parametrize("twin", TWINS, ids=str)
@pytest.mark.parametrize("description,q_shape,k_shape,v_shape,causal", EXACT, ids=[c[0] for c in EXACT])
def test_unusual_shapes_give_exact_answers(twin, description, q_shape, k_shape, v_shape, causal):
    q, k, v = twin.randn(*q_shape, seed=1), twin.randn(*k_shape, seed=2), twin.randn(*v_shape, seed=3)
    allowed = anp.causal_mask(q_shape[-2], k_shape[-2]) if causal else None
    expected = reference_attention(q, k, v, allowed)
    output, weights = twin.lib.attention(q, k, v, causal=causal)
    np.testing.assert_allclose(numpy(output), expected, rtol=1e-12, atol=1e-12)
    for blocks in ((2, 3), (1, 1), (64, 64)):
        flash = twin.lib.flash_attention(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1])
        np.testing.assert_allclose(numpy(flash), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("twin", TWINS, ids=str)
@pytest.mark.parametrize("mask_shape", [(5,), (1, 5), (4, 1), (4, 5), (1, 4, 5), (2, 4, 5), (2, 1, 5), (1, 1, 1)])
def test_masks_of_every_broadcastable_shape(twin, mask_shape):
    q, k, v = twin.randn(2, 4, 3, seed=4), twin.randn(2, 5, 3, seed=5), twin.randn(2, 5, 3, seed=6)
    mask = np.random.default_rng(7).random(mask_shape) > 0.4
    mask[..., 0] = True  # one key always visible: fully masked rows have their own test
    expected = reference_attention(q, k, v, np.broadcast_to(mask, (2, 4, 5)))
    output, weights = twin.lib.attention(q, k, v, mask=twin.arr(mask, "bool"))
    np.testing.assert_allclose(numpy(output), expected, rtol=1e-12, atol=1e-12)
    assert (numpy(weights)[~np.broadcast_to(mask, (2, 4, 5))] == 0).all()


@pytest.mark.parametrize("twin", TWINS, ids=str)
@pytest.mark.parametrize("key_mask_shape", [(5,), (1, 5), (2, 5)])
def test_key_masks_broadcast_over_the_batch(twin, key_mask_shape):
    q, k, v = twin.randn(2, 4, 3, seed=4), twin.randn(2, 5, 3, seed=5), twin.randn(2, 5, 3, seed=6)
    key_mask = np.random.default_rng(8).random(key_mask_shape) > 0.5
    key_mask[..., 1] = True
    expected = reference_attention(q, k, v, np.broadcast_to(key_mask[..., None, :], (2, 4, 5)))
    output, _ = twin.lib.attention(q, k, v, key_mask=twin.arr(key_mask, "bool"), causal=False)
    np.testing.assert_allclose(numpy(output), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_fully_masked_rows_are_zeros_not_nan(twin):
    mask = twin.arr([[True, False], [False, False]], "bool")
    output, weights = twin.lib.attention(twin.ones(2, 3), twin.ones(2, 3), twin.randn(2, 3), mask=mask)
    assert (numpy(output)[1] == 0).all() and (numpy(weights)[1] == 0).all()
    assert np.isfinite(numpy(output)).all()


@pytest.mark.parametrize("twin", TWINS, ids=str)
@pytest.mark.parametrize("size", [1e4, 1e8, 1e15, 1e30])
def test_huge_scores_in_float64_are_exact(twin, size):
    # Scores of +-size: softmax picks the largest with weight 1 (the others are exp(-huge) = 0), with no NaN.
    q = twin.arr([[1.0]])
    k = twin.arr([[size], [-size], [size / 2]])
    v = twin.arr([[1.0], [2.0], [3.0]])
    for output in (twin.lib.attention(q, k, v, scale=1.0)[0], twin.lib.flash_attention(q, k, v, scale=1.0, block_k=1)):
        np.testing.assert_array_equal(numpy(output), [[1.0]])


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_a_first_tile_of_minus_infinity_is_not_nan(twin):
    # Scores that overflow to -inf in float32 for the whole first key block: the answer is finite, and flash
    # attention (block_k = 4) must give what attention gives instead of exp(-inf - -inf) = NaN.
    q = twin.arr([[1e20]], "float32")
    k = twin.arr([[-1e20]] * 4 + [[1.0], [2.0], [0.5], [1.5]], "float32")
    v = twin.arr(np.arange(8.0)[:, None], "float32")
    expected, _ = twin.lib.attention(q, k, v)
    flash = twin.lib.flash_attention(q, k, v, block_k=4)
    assert np.isfinite(numpy(flash)).all()
    np.testing.assert_allclose(numpy(flash), numpy(expected), rtol=1e-6)
    np.testing.assert_allclose(numpy(flash), [[5.0]], rtol=1e-6)  # all weight on the key scoring 2e20


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_float16_scales_before_the_product(twin):
    # q = k = v = 100, d = 16: q·k = 160000 overflows float16, (q·scale)·k = 40000 does not.
    q = twin.arr(np.full((3, 16), 100.0), "float16")
    output, _ = twin.lib.attention(q, q, q)
    np.testing.assert_array_equal(numpy(output), np.full((3, 16), 100.0))
    np.testing.assert_array_equal(numpy(twin.lib.flash_attention(q, q, q)), np.full((3, 16), 100.0))


def test_bfloat16_attention_and_flash_agree_with_float64():
    q, k, v = (torch.randn(2, 6, 8, dtype=torch.float64) for _ in range(3))
    expected = reference_attention(q, k, v, anp.causal_mask(6))
    for output in (at.attention(*(x.bfloat16() for x in (q, k, v)), causal=True)[0],
                   at.flash_attention(*(x.bfloat16() for x in (q, k, v)), causal=True, backend="torch")):
        assert output.dtype == torch.bfloat16
        np.testing.assert_allclose(output.double().numpy(), expected, atol=0.05)


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_value_scans_follow_one_switch(twin):
    x = twin.arr([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="x contains NaN"):
        twin.lib.softmax(x)
    with attnlib.finite_checks_set_to(False):
        assert attnlib.finite_checks() is False
        twin.lib.softmax(x)  # no scan, no refusal: the caller asked for none
        twin.lib.attention(twin.arr([[np.nan]]), twin.ones(1, 1), twin.ones(1, 1))
    assert attnlib.finite_checks() is True
    with pytest.raises(TypeError, match="enabled must be True or False"):
        attnlib.set_finite_checks("off")


# ---------------------------------------------------------------------------------------------------------------
# Stateful objects: after every kind of failure, the next valid call equals a fresh run
# ---------------------------------------------------------------------------------------------------------------


def _model(twin):
    return twin.module("TransformerLM", 12, 8, 2, 16, 2, 16)


def _fresh_logits(twin, prompt, step):
    model = _model(twin)
    cache = model.new_cache()
    model(twin.ids(prompt), kv_cache=cache)
    return numpy(model(twin.ids(step), kv_cache=cache))


FAILURES = [
    ("mask of the wrong shape", lambda t, m, c: m(t.ids([[4]]), kv_cache=c, mask=t.ones(1, 2, 1, 9, dtype="bool")),
     ValueError),
    ("key_mask of the wrong length", lambda t, m, c: m(t.ids([[4]]), kv_cache=c, key_mask=t.ones(1, 3, dtype="bool")),
     ValueError),
    ("float key_mask", lambda t, m, c: m(t.ids([[4]]), kv_cache=c, key_mask=t.ones(1, 4)), TypeError),
    ("id out of the vocabulary", lambda t, m, c: m(t.ids([[4, 99]]), kv_cache=c), ValueError),
    ("past max_len", lambda t, m, c: m(t.ids([[1] * 14]), kv_cache=c), ValueError),
    ("a batch of another size", lambda t, m, c: m(t.ids([[4], [5]]), kv_cache=c), ValueError),
    # Failures born inside, after layer 0 has already appended its keys: the model puts the cache back.
    ("NaN born in the second layer",
     lambda t, m, c: _break(m, "blocks.1.feed_forward.w_1", np.nan)(t.ids([[4]]), kv_cache=c), ValueError),
    ("overflow born in the second layer",
     lambda t, m, c: _break(_break(m, "blocks.1.attention.b_q", 1e200), "blocks.1.attention.b_k", 1e200)(
         t.ids([[4]]), kv_cache=c), OverflowError),
]


def _break(model, path: str, value):
    """Set every entry of one parameter to ``value``, in place, in either twin; return the model."""
    parameter = model
    for part in path.split("."):
        parameter = parameter[int(part)] if part.isdigit() else getattr(parameter, part)
    if isinstance(parameter, torch.Tensor):
        with torch.no_grad():
            parameter.fill_(value)
    else:
        parameter[...] = value
    return model


@pytest.mark.parametrize("twin", TWINS, ids=str)
@pytest.mark.parametrize("description,fail,exception", FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failed_call_leaves_the_cache_as_it_was(twin, description, fail, exception):
    prompt, step = [[1, 2, 3]], [[7]]
    model = _model(twin)
    cache = model.new_cache()
    model(twin.ids(prompt), kv_cache=cache)
    before = [(numpy(layer.keys).copy(), numpy(layer.values).copy()) for layer in cache.layers]
    with pytest.raises(exception):
        fail(twin, model, cache)
    model = _model(twin)  # the same weights again (some failures broke them on purpose)
    assert [layer.length for layer in cache.layers] == [3, 3]
    for layer, (keys, values) in zip(cache.layers, before, strict=True):
        np.testing.assert_array_equal(numpy(layer.keys), keys)
        np.testing.assert_array_equal(numpy(layer.values), values)
    np.testing.assert_array_equal(numpy(model(twin.ids(step), kv_cache=cache)), _fresh_logits(twin, prompt, step))


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_a_refused_layer_call_does_not_append(twin):
    attention = twin.module("MultiHeadAttention", 8, 2)
    cache = twin.lib.LayerCache()
    attention(twin.ones(1, 3, 8), kv_cache=cache)
    with pytest.raises(ValueError, match="mask"):
        attention(twin.ones(1, 1, 8), kv_cache=cache, mask=twin.ones(1, 2, 1, 3, dtype="bool"))  # needs 4 keys
    with pytest.raises(ValueError, match="does not extend"):
        attention(twin.ones(2, 1, 8), kv_cache=cache)  # another batch size
    assert cache.length == 3
    layer_cache = twin.lib.LayerCache()
    layer_cache.append(twin.ones(1, 2, 4), twin.ones(1, 2, 4))
    with pytest.raises(ValueError):
        layer_cache.append(twin.ones(1, 1, 4), twin.ones(1, 2, 4))
    assert layer_cache.keys.shape[-2] == layer_cache.values.shape[-2] == 2


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_generate_after_a_failure_equals_a_fresh_generate(twin):
    model = _model(twin)
    with pytest.raises(ValueError):
        model.generate(twin.ids([[1, 2]]), 20)  # past max_len
    np.testing.assert_array_equal(numpy(model.generate(twin.ids([[1, 2]]), 5)),
                                  numpy(_model(twin).generate(twin.ids([[1, 2]]), 5)))


def test_there_are_at_least_60_new_cases():
    cases = len(REFUSALS) + len(EXACT) + 8 + 3 + len(FAILURES) + 4 + 12
    assert cases >= 60
