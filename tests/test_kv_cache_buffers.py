"""The contiguous KV cache writes into preallocated buffers: same keys as concatenation, few copies, exact restores."""

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at
from attnlib import _kv_cache

NAMESPACES = {"numpy": (anp, np.asarray), "torch": (at, torch.from_numpy)}


def _chunks(rng, sizes, d=3):
    """Random k, v chunks (2, 1, n, d) (batch 2, one head) of the given numbers of positions."""
    return [(rng.standard_normal((2, 1, n, d)), rng.standard_normal((2, 1, n, d + 1))) for n in sizes]


def _np(x):
    """A copy as a NumPy array, from either namespace."""
    return x.detach().numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def _shares_memory(view, buffer) -> bool:
    if isinstance(view, torch.Tensor):
        return view.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    return np.shares_memory(view, buffer)


@pytest.mark.parametrize("name", NAMESPACES)
def test_appends_equal_concatenation_and_copy_only_when_full(name):
    lib, convert = NAMESPACES[name]
    rng = np.random.default_rng(0)
    cache = lib.LayerCache()
    chunks = _chunks(rng, [5] + [1] * 300 + [7, 2])
    reallocations, buffer = 0, None
    for i, (k, v) in enumerate(chunks):
        keys, values = cache.append(convert(k), convert(v))
        expected_k = np.concatenate([c[0] for c in chunks[:i + 1]], axis=-2)
        expected_v = np.concatenate([c[1] for c in chunks[:i + 1]], axis=-2)
        np.testing.assert_array_equal(_np(keys), expected_k)
        np.testing.assert_array_equal(_np(values), expected_v)
        np.testing.assert_array_equal(_np(cache.keys), expected_k)
        assert cache.length == cache.position == expected_k.shape[-2] <= cache.capacity
        assert _shares_memory(cache.keys, cache._key_buffer)  # a view of the buffer, not a copy
        if cache._key_buffer is not buffer:
            reallocations, buffer = reallocations + 1, cache._key_buffer
    # 314 positions in 303 appends: the buffer doubled from 16 (5 times), it was not copied once per append.
    assert reallocations <= 1 + int(np.ceil(np.log2(314 / _kv_cache.MIN_CAPACITY)))
    assert cache.capacity < 2 * 2 * 314
    held = 2 * 1 * 314 * (3 + 4) * 8  # batch x heads x positions x (d_k + d_v) x float64 bytes
    assert cache.nbytes == held  # the held positions, not the spare room


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("window", [1, 4, 7])
def test_rolling_cache_returns_what_its_queries_need_and_stays_small(name, window):
    lib, convert = NAMESPACES[name]
    rng = np.random.default_rng(window)
    sizes = [1, 3, 1, 40] + [1] * 60 + [2, 5, 1, 1, 9] + [1] * 30
    chunks = _chunks(rng, sizes)
    cache = lib.LayerCache(window=window)
    seen = 0
    for k, v in chunks:
        held_before = cache.length
        keys, values = cache.append(convert(k), convert(v))
        full_k = np.concatenate([c[0] for c in chunks], axis=-2)[..., :seen + k.shape[-2], :]
        full_v = np.concatenate([c[1] for c in chunks], axis=-2)[..., :seen + v.shape[-2], :]
        seen += k.shape[-2]
        # This call's queries may need every held key and the new ones; then only the last `window` stay.
        np.testing.assert_array_equal(_np(keys), full_k[..., seen - held_before - k.shape[-2]:, :])
        np.testing.assert_array_equal(_np(values), full_v[..., seen - held_before - k.shape[-2]:, :])
        assert cache.length == min(window, seen) and cache.position == seen
        np.testing.assert_array_equal(_np(cache.keys), full_k[..., -cache.length:, :])
        np.testing.assert_array_equal(_np(cache.values), full_v[..., -cache.length:, :])
        # Memory stops growing: after the 40-position prompt the buffer shrinks back to about twice the window.
        assert cache.capacity <= 2 * max(window + 1, _kv_cache.MIN_CAPACITY)


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("window", [None, 3])
def test_restore_after_appends_that_reallocated_puts_the_cache_back_exactly(name, window):
    lib, convert = NAMESPACES[name]
    rng = np.random.default_rng(1)
    cache = lib.KVCache(2, window=window)
    first = _chunks(rng, [14])[0]
    for layer in cache.layers:
        layer.append(convert(first[0]), convert(first[1]))
    before = [(_np(layer.keys), _np(layer.values), layer.length, layer.position, layer.capacity)
              for layer in cache.layers]
    snapshot = cache.snapshot()
    for n in (1, 1, 30):  # in place, in place, then past the capacity: a new buffer
        k, v = _chunks(rng, [n])[0]
        cache[0].append(convert(k), convert(v))
    assert cache[0].position == 14 + 32
    cache.restore(snapshot)
    for layer, (keys, values, length, position, capacity) in zip(cache.layers, before, strict=True):
        np.testing.assert_array_equal(_np(layer.keys), keys)
        np.testing.assert_array_equal(_np(layer.values), values)
        assert (layer.length, layer.position, layer.capacity) == (length, position, capacity)
    # The next call sees the cache as if the undone appends never happened.
    k, v = _chunks(rng, [2])[0]
    restored, _ = cache[0].append(convert(k), convert(v))
    fresh = lib.LayerCache(window=window)
    fresh.append(convert(first[0]), convert(first[1]))
    expected, _ = fresh.append(convert(k), convert(v))
    np.testing.assert_array_equal(_np(restored), _np(expected))


def test_restore_to_an_empty_cache_forgets_the_buffers():
    cache = anp.KVCache(1)
    snapshot = cache.snapshot()
    cache[0].append(np.ones((1, 2, 3, 4)), np.ones((1, 2, 3, 4)))
    cache.restore(snapshot)
    assert cache[0].keys is None and cache.length == 0 and cache[0].capacity == 0
    cache[0].append(np.ones((3, 1, 1, 2)), np.ones((3, 1, 1, 2)))  # any shape fits an empty cache again
    assert cache[0].keys.shape == (3, 1, 1, 2)


def test_gradients_flow_through_cached_decoding_as_through_one_pass():
    torch.manual_seed(0)
    model = at.TransformerLM(20, 16, 4, 32, 2, 24, dtype=torch.float64)
    ids = torch.randint(0, 20, (2, 9))
    full = model(ids)
    (full_gradient,) = torch.autograd.grad(full.square().sum(), model.blocks[0].attention.w_k)
    cache = model.new_cache()
    steps = [model(ids[:, :4], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(4, 9)]
    cached = torch.cat(steps, dim=1)
    torch.testing.assert_close(cached, full)
    (cached_gradient,) = torch.autograd.grad(cached.square().sum(), model.blocks[0].attention.w_k)
    torch.testing.assert_close(cached_gradient, full_gradient)


@pytest.mark.parametrize("name", NAMESPACES)
def test_generate_checks_its_prompt_once_and_gives_the_uncached_tokens(name):
    lib, _ = NAMESPACES[name]
    torch.manual_seed(3)
    torch_model = at.TransformerLM(30, 16, 4, 32, 2, 48, dtype=torch.float64)
    with torch.no_grad():  # larger weights than the initialisation, so the greedy tokens vary
        for parameter in torch_model.parameters():
            parameter.normal_(0, 0.3)
    model = torch_model if lib is at else anp.TransformerLM.from_twin(torch_model)
    prompt = torch.randint(0, 30, (3, 5))
    prompt = prompt if lib is at else prompt.numpy()
    cached, uncached = model.generate(prompt, 30), model.generate(prompt, 30, use_kv_cache=False)
    np.testing.assert_array_equal(_np(cached), _np(uncached))
    assert cached.shape == (3, 35) and len({tuple(row) for row in _np(cached)[:, 5:].tolist()}) > 1
    np.testing.assert_array_equal(_np(cached)[:, :5], _np(prompt))
    # Token by token through the public door gives the same tokens.
    cache, ids = model.new_cache(), prompt
    logits = model(ids, kv_cache=cache)
    for _ in range(30):
        next_id = _np(logits)[:, -1].argmax(-1)[:, None]
        next_id = torch.from_numpy(next_id) if lib is at else next_id
        ids = torch.cat([ids, next_id], 1) if lib is at else np.concatenate([ids, next_id], 1)
        logits = model(next_id, kv_cache=cache)
    np.testing.assert_array_equal(_np(ids), _np(cached))
    with pytest.raises(ValueError, match="exceeds max_len=48"):
        model.generate(prompt, 44)  # the length check stays at the door
